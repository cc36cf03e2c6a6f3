//! The NATS node holding an inbox tail reader dies under one-on-one traffic (senders
//! sending, receivers acking, as in the `dm` benchmark). The reader is an R1 consumer with
//! no acks (workers/src/tail.rs): it dies with its node, and the worker makes it again
//! from its checkpoint on a node that is up. Every device still gets every message once;
//! history on both workers' stores gets every message once, in order, with the ticks the
//! receivers' acks earned.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use natter_e2e::{
    Client,
    system::{nats_as, with_cluster},
    unique,
};
use serde_json::{Value, json};

const PAIRS: usize = 6;
const MESSAGES: usize = 150;

/// Sends `MESSAGES` texts one after another, each retried until `sent`; their ids.
async fn sender(mut client: Client, to: String) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let client_id = uuid::Uuid::new_v4().to_string();
        let answer = loop {
            let answer = client
                .send_text_with_id(&to, &client_id, &format!("{i:04}"))
                .await;
            if answer["type"] == "sent" {
                break answer;
            }
            assert_eq!(answer["code"], "unavailable", "{answer}");
        };
        sent.push(answer["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    sent
}

/// Receives until `count` messages came, acking each; their ids in arrival order.
async fn receiver(mut client: Client, count: usize) -> (Client, Vec<String>) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while got.len() < count {
        let frame = tokio::time::timeout_at(deadline, client.receive())
            .await
            .unwrap_or_else(|_| panic!("{}: {} of {count} within 90 s", client.user, got.len()))
            .expect("socket open");
        if frame["type"] == "msg" {
            got.push(frame["id"].as_str().unwrap().to_owned());
            client.ack(frame["seq"].as_u64().unwrap()).await;
        }
    }
    (client, got)
}

/// The tail readers' consumers on `INBOX`: name → the node it runs on.
async fn tails(js: &jetstream::Context) -> Vec<(String, String)> {
    let stream = js.get_stream(natter_fabric::streams::INBOX).await.unwrap();
    let mut consumers = stream.consumers();
    let mut tails = Vec::new();
    while let Some(Ok(info)) = consumers.next().await {
        let node = info.cluster.and_then(|c| c.leader).unwrap_or_default();
        if info.name.starts_with("tail-") {
            tails.push((info.name, node));
        }
    }
    tails
}

/// The ticks of `from`'s own messages in a page of `conv`, oldest first.
async fn own_ticks(client: &mut Client, conv: &str) -> Vec<Value> {
    let page = client
        .request(json!({"type": "history", "conv": conv, "limit": 100}))
        .await;
    page["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m["status"].clone())
        .collect()
}

#[tokio::test]
async fn history_is_complete_when_the_node_of_the_inbox_tail_reader_dies() {
    let js = jetstream::new(nats_as("workers", "chaos-tail").await);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..PAIRS {
        let (alice, bob) = (unique("alice"), unique("bob"));
        let b = Client::connect(i % 2, &bob, "phone", 0).await;
        receivers.push(tokio::spawn(receiver(b, MESSAGES)));
        let a = Client::connect((i + 1) % 2, &alice, "phone", 0).await;
        senders.push((alice, bob.clone(), tokio::spawn(sender(a, bob))));
    }

    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = tails(&js).await;
    let (killed, node) = before
        .iter()
        .find(|(name, _)| name.starts_with("tail-history-0-"))
        .cloned()
        .expect("worker set 0 has a tail reader");
    let victim = with_cluster(|c| (0..c.len()).find(|i| c.name(*i) == node))
        .expect("the tail reader runs on a test node");
    with_cluster(|c| c.kill(victim));
    tokio::time::sleep(Duration::from_secs(3)).await;
    with_cluster(|c| c.restart(victim));

    let mut conversations = Vec::new();
    for (alice, bob, sending) in senders {
        conversations.push((alice, bob, sending.await.unwrap()));
    }
    for ((_, bob, sent), receiving) in conversations.iter().zip(receivers) {
        let (_, mut got) = receiving.await.unwrap();
        got.sort();
        let mut want = sent.clone();
        want.sort();
        assert_eq!(got, want, "{bob}: every sent message exactly once");
    }

    // The reader was made again: worker set 0 has a tail consumer other than the killed one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = tails(&js).await;
        if now
            .iter()
            .any(|(name, _)| name.starts_with("tail-history-0-") && *name != killed)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new tail reader for worker set 0: {now:?} (killed {killed} on {node})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // History on both stores: every message once, in id order, and the receivers' acks as
    // ticks on the sender's newest message.
    for (alice, bob, sent) in &conversations {
        let conv = natter_schemas::Conversation::direct(alice, bob).to_string();
        let mut expected = sent.clone();
        expected.sort();
        // Only history is wanted here, not the inbox: the gateway moves a resume point
        // beyond the inbox back to its newest item, and receipts still arrive after it.
        let mut a = Client::connect(0, alice, "audit", u64::MAX).await;
        a.last_seq = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut in_a_row = 0;
        while in_a_row < 4 {
            let found = a.page_back(&conv, 100).await;
            let ticks = own_ticks(&mut a, &conv).await;
            let delivered = ticks
                .last()
                .is_some_and(|t| t == "delivered" || t == "read");
            if found.as_deref() == Ok(&expected[..]) && delivered {
                in_a_row += 1;
                continue;
            }
            in_a_row = 0;
            assert!(
                tokio::time::Instant::now() < deadline,
                "history of {conv} incomplete after 60 s: {:?} of {} ids, last tick {:?}",
                found.map(|ids| ids.len()),
                expected.len(),
                ticks.last()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}
