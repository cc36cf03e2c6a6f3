//! The async-nats patch the gateway's live dispatch rests on
//! (vendor/async-nats/NATTER-PATCH.md), against the real cluster: many subscriptions
//! deliver into one channel, each message keeps its own subject, and ending one
//! subscription stops only its messages.

use std::time::Duration;

use natter_e2e::{system, unique};
use tokio::sync::mpsc;

async fn next(shared: &mut mpsc::Receiver<async_nats::Message>) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), shared.recv())
        .await
        .expect("a message within 5 s")
        .expect("the channel is open")
}

#[tokio::test]
async fn subscriptions_share_one_channel_and_end_one_by_one() {
    let client = system::nats_as("gateway", "e2e-live-dispatch").await;
    let (sink, mut shared) = mpsc::channel(64);
    let (amy, bob) = (unique("amy"), unique("bob"));
    let subject = |user: &str| format!("live.{user}.n");
    let amy_sid = client
        .subscribe_with_sender(subject(&amy), sink.clone())
        .await
        .unwrap();
    let bob_sid = client
        .subscribe_with_sender(subject(&bob), sink)
        .await
        .unwrap();
    assert_ne!(amy_sid, bob_sid);
    client.flush().await.unwrap();

    for user in [&amy, &bob] {
        client
            .publish(subject(user), format!("to {user}").into())
            .await
            .unwrap();
    }
    let mut got = [next(&mut shared).await, next(&mut shared).await];
    got.sort_by(|a, b| a.subject.cmp(&b.subject));
    let mut want = [subject(&amy), subject(&bob)];
    want.sort();
    assert_eq!(
        got.iter()
            .map(|m| m.subject.to_string())
            .collect::<Vec<_>>(),
        want
    );
    assert!(got.iter().all(|m| {
        m.payload.ends_with(
            m.subject
                .trim_start_matches("live.")
                .trim_end_matches(".n")
                .as_bytes(),
        )
    }));

    client.unsubscribe_id(amy_sid).await.unwrap();
    client.flush().await.unwrap();
    client
        .publish(subject(&amy), "after unsubscribing".into())
        .await
        .unwrap();
    client
        .publish(subject(&bob), "still subscribed".into())
        .await
        .unwrap();
    let only = next(&mut shared).await;
    assert_eq!(only.subject.as_str(), subject(&bob));
    assert_eq!(&only.payload[..], b"still subscribed");
    let nothing = tokio::time::timeout(Duration::from_millis(500), shared.recv()).await;
    assert!(
        nothing.is_err(),
        "amy's subscription delivered after it ended"
    );
}
