//! A NATS node dies under traffic: kill -9 the `INBOX` stream leader's node while ten
//! one-on-one conversations are sending, restart it, and check what every recipient saw.
//!
//! The checker is independent of the server: each sender records which messages got
//! `sent` (retrying `unavailable` answers with the same client id, as a client would), each
//! recipient records what arrived. Every `sent` message must arrive exactly once, in the
//! order it was sent by message id, with increasing inbox sequences (checked on every frame
//! by `Client`).

use std::time::Duration;

use async_nats::jetstream;
use natter_e2e::{
    Client,
    system::{nats_as, with_cluster},
    unique,
};
use serde_json::Value;

const PAIRS: usize = 10;
const MESSAGES: usize = 120;

/// Sends `MESSAGES` texts, one after another, retrying each until it is `sent`.
async fn sender(mut client: Client, to: String) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let text = format!("{i:04}");
        let client_id = uuid::Uuid::new_v4().to_string();
        let mut attempts = 0;
        loop {
            let answer = client.send_text_with_id(&to, &client_id, &text).await;
            if answer["type"] == "sent" {
                sent.push(text);
                break;
            }
            attempts += 1;
            assert!(attempts < 10, "send {text} never stored: {answer}");
            assert_eq!(answer["code"], "unavailable", "{answer}");
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    sent
}

async fn inbox_leader(js: &jetstream::Context) -> String {
    let mut stream = js.get_stream(natter_fabric::streams::INBOX).await.unwrap();
    let info = stream.info().await.unwrap();
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("INBOX has a leader")
}

#[tokio::test]
async fn every_sent_message_arrives_once_and_in_order_when_the_inbox_leader_node_dies() {
    let admin = nats_as("workers", "chaos-admin").await;
    let js = jetstream::new(admin);

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..PAIRS {
        let (alice, bob) = (unique("alice"), unique("bob"));
        receivers.push(Client::connect(i % 2, &bob, "phone", 0).await);
        let a = Client::connect((i + 1) % 2, &alice, "phone", 0).await;
        senders.push(tokio::spawn(sender(a, bob)));
    }

    tokio::time::sleep(Duration::from_millis(600)).await;
    let leader = inbox_leader(&js).await;
    let victim = with_cluster(|c| (0..c.len()).find(|i| c.name(*i) == leader))
        .expect("leader is a test node");
    with_cluster(|c| c.kill(victim));
    tokio::time::sleep(Duration::from_secs(3)).await;
    with_cluster(|c| c.restart(victim));

    let mut sent = Vec::new();
    for s in senders {
        sent.push(s.await.unwrap());
    }
    // Fanout of a partition whose consumer lost its leader resumes after the pin and ack
    // timeouts (10 s each): allow for that, and report how long delivery took.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let sending_done = tokio::time::Instant::now();
    for (mut bob, sent) in receivers.into_iter().zip(sent) {
        // (message id, text) in inbox order
        let mut got: Vec<(String, String)> = Vec::new();
        while got.len() < sent.len() {
            let Ok(frame) = tokio::time::timeout_at(deadline, bob.receive()).await else {
                panic!(
                    "{}: {} of {} sent messages arrived within 60 s",
                    bob.user,
                    got.len(),
                    sent.len()
                );
            };
            let frame: Value = frame.expect("socket open");
            if frame["type"] == "msg" {
                let id = frame["id"].as_str().unwrap().to_owned();
                got.push((id, frame["body"]["text"].as_str().unwrap().to_owned()));
            }
        }
        // Exactly once, and in send order by message id (time-ordered, assigned when each
        // send was accepted). Inbox order can differ when a partition's fanout moves to
        // the other worker while its first worker still retries a write (docs/ARCHITECTURE.md):
        // counted and reported, not hidden.
        let in_inbox_order: Vec<&str> = got.iter().map(|(_, text)| text.as_str()).collect();
        let mut by_id = got.clone();
        by_id.sort();
        let in_id_order: Vec<&str> = by_id.iter().map(|(_, text)| text.as_str()).collect();
        assert_eq!(
            in_id_order, sent,
            "{}: every sent message once, ordered by id",
            bob.user
        );
        let displaced = in_inbox_order
            .iter()
            .zip(&sent)
            .filter(|(a, b)| *a != b)
            .count();
        if displaced > 0 {
            eprintln!(
                "{}: {displaced} messages out of send order in the inbox",
                bob.user
            );
        }
        let late: Vec<Value> = bob.messages_within(Duration::from_millis(500)).await;
        assert!(
            late.is_empty(),
            "{}: unexpected extra messages {late:?}",
            bob.user
        );
    }
    assert_ne!(inbox_leader(&js).await, "", "the stream has a leader again");
    eprintln!(
        "all delivered {:?} after the last send",
        sending_done.elapsed()
    );
}
