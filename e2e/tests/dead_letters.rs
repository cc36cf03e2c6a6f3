//! An inbox item the stream keeps refusing does not stall a partition for ever: fanout
//! retries it for its patience (1 s in this test binary), parks it in the `DEAD` stream
//! with the stream's refusal, and moves on; the other members get that message and the
//! ones after it. Replaying the parked item (its payload to its subject, with its message
//! id) once the inbox takes items again delivers it.
//!
//! The refusal is real: the test gives `INBOX` a per-user limit (messages per subject,
//! discarding new ones) that one member's inbox is already at, then lifts it.

use std::time::Duration;

use async_nats::jetstream::{self, stream::Config};
use futures_util::StreamExt;
use natter_e2e::{
    Client,
    system::{self, Options, configure},
    unique,
};
use natter_fabric::{dead, streams, subjects};
use serde_json::json;

async fn set_inbox_limit(js: &jetstream::Context, per_user: i64) {
    let mut config: Config = js
        .get_stream(streams::INBOX)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.max_messages_per_subject = per_user;
    config.discard_new_per_subject = per_user > 0;
    js.update_stream(config).await.expect("INBOX limit updated");
}

async fn inbox_len(js: &jetstream::Context, user: &str) -> u64 {
    let stream = js.get_stream(streams::INBOX).await.unwrap();
    let info = stream
        .info_with_subjects(subjects::inbox(user))
        .await
        .unwrap()
        .next()
        .await;
    info.map_or(0, |entry| entry.unwrap().1 as u64)
}

#[tokio::test]
async fn an_item_the_inbox_keeps_refusing_is_parked_and_the_partition_goes_on() {
    configure(Options {
        refused_patience: Duration::from_secs(1),
        ..Options::default()
    });
    let (amy, bob, cat, dan) = (unique("amy"), unique("bob"), unique("cat"), unique("dan"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &cat, "phone", 0).await;
    let mut d = Client::connect(1, &dan, "phone", 0).await;
    let created = a
        .request(json!({"type": "group_create", "name": "full", "members": [bob, cat]}))
        .await;
    let gid = created["id"].as_str().expect("a group").to_owned();
    c.wait_for("the group event", |f| f["type"] == "group_event")
        .await;
    // Bob's inbox gets more items than anyone else's: a few one-on-one messages.
    for i in 0..3 {
        d.send_text(&bob, &format!("dm {i}")).await;
        b.wait_for_text(&format!("dm {i}")).await;
    }
    let js = jetstream::new(system::nats_as("workers", "dead-letter-test").await);
    let full = inbox_len(&js, &bob).await;
    assert!(
        full > inbox_len(&js, &cat).await,
        "bob's inbox holds the most"
    );
    set_inbox_limit(&js, i64::try_from(full).unwrap()).await;

    a.send_to_group(&gid, "over bob's limit").await;
    a.send_to_group(&gid, "and the next").await;
    let started = std::time::Instant::now();
    c.wait_for_text("over bob's limit").await;
    c.wait_for_text("and the next").await;
    eprintln!(
        "both messages reached cat {:?} after they were sent",
        started.elapsed()
    );
    assert!(
        b.messages_within(Duration::from_millis(500))
            .await
            .iter()
            .all(|m| m["body"]["text"] != "over bob's limit"),
        "bob's inbox refused it"
    );

    // Both parked, with where they were going and why.
    let bob_inbox = subjects::inbox(&bob);
    let mut parked = Vec::new();
    for _ in 0..100 {
        parked = parked_for(&js, &bob_inbox).await;
        if parked.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(parked.len(), 2, "bob's two items parked in DEAD");
    for record in &parked {
        let reason = record.headers.get(dead::REASON).unwrap().as_str();
        assert!(reason.contains("maximum messages per subject"), "{reason}");
    }

    // Replayed once the inbox takes items again: bob gets them, like any other items.
    set_inbox_limit(&js, -1).await;
    for record in parked {
        let msg_id = record
            .headers
            .get(dead::MSG_ID)
            .unwrap()
            .as_str()
            .to_owned();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        js.publish_with_headers(bob_inbox.clone(), headers, record.payload)
            .await
            .unwrap()
            .await
            .expect("replayed into bob's inbox");
    }
    b.wait_for_text("over bob's limit").await;
    b.wait_for_text("and the next").await;
}

/// The records parked in `DEAD` for `subject`, oldest first.
async fn parked_for(
    js: &jetstream::Context,
    subject: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let Ok(mut dead) = js.get_stream(streams::DEAD).await else {
        return Vec::new();
    };
    let state = dead.info().await.unwrap().state.clone();
    let mut parked = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(record) = dead.get_raw_message(seq).await
            && record.headers.get(dead::SUBJECT).map(|v| v.as_str()) == Some(subject)
        {
            parked.push(record);
        }
    }
    parked
}
