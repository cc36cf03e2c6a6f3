//! Every socket opens with `hello`: where its inbox items resume, the inbox's newest and
//! oldest sequences, and whether the device resumed without a gap. Items that expired
//! (the inbox keeps 30 days) while a device was away are not skipped silently: its
//! `hello` says `resumed: false`.
//!
//! Expiry is stood in for by purging the inbox stream below a sequence, which moves its
//! first sequence exactly as expiry does. This binary holds one test, so the purge
//! touches no other test's items.

use std::time::Duration;

use async_nats::jetstream;
use natter_e2e::{Client, system, unique};
use natter_fabric::streams;

/// The gateway reads the inbox's oldest sequence every 10 s.
const REFRESH_PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn hello_tells_a_device_where_it_resumes_and_whether_items_expired_meanwhile() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    assert_eq!(b.hello["after"], 0);
    assert_eq!(b.hello["resumed"], true, "a new device starts afresh");

    let mut seqs = Vec::new();
    for i in 0..3 {
        a.send_text(&bob, &format!("m{i}")).await;
        seqs.push(
            b.wait_for_text(&format!("m{i}")).await["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    let (first, third) = (seqs[0], seqs[2]);

    // Resuming after the first: the inbox still has everything since.
    let b2 = Client::connect(0, &bob, "tablet", first).await;
    assert_eq!(b2.hello["after"], first);
    assert_eq!(b2.hello["resumed"], true);
    assert!(
        b2.hello["newest"].as_u64().unwrap() >= third,
        "{}",
        b2.hello
    );
    b2.close().await;

    // A cursor beyond the inbox resumes at the inbox's newest item, and new items come.
    let mut far = Client::connect(0, &bob, "laptop", third + 1_000_000).await;
    let newest = far.hello["newest"].as_u64().unwrap();
    assert_eq!(far.hello["after"], newest, "{}", far.hello);
    a.send_text(&bob, "after the far cursor").await;
    far.wait_for_text("after the far cursor").await;
    far.close().await;

    // Everything below the third message "expires".
    let js = jetstream::new(system::nats_as("workers", "resume-test").await);
    let purged = js
        .get_stream(streams::INBOX)
        .await
        .unwrap()
        .purge()
        .sequence(third)
        .await
        .expect("INBOX purged below the third message");
    assert!(purged.purged >= 2, "{purged:?}");

    // A device that had only the first missed the second: not resumed. (Sequences are
    // shared by every user's inbox, so any expired item after a device's cursor counts:
    // `resumed` errs towards `false`.) One that had the third missed nothing.
    let deadline = tokio::time::Instant::now() + REFRESH_PATIENCE;
    let gap = loop {
        let mut late = Client::connect(1, &bob, "old-phone", first).await;
        if late.hello["resumed"] == false {
            break late;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still resumed: {}",
            late.hello
        );
        let _ = late.collect_for(Duration::from_millis(50)).await;
        late.close().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(gap.hello["oldest"], third, "{}", gap.hello);
    assert_eq!(gap.hello["after"], first);
    let whole = Client::connect(0, &bob, "desk", third).await;
    assert_eq!(whole.hello["resumed"], true, "{}", whole.hello);

    // The device with the gap still gets what the inbox holds, and chat goes on.
    let mut gap = gap;
    gap.wait_for_text("m2").await;
    a.send_text(&bob, "still chatting").await;
    b.wait_for_text("still chatting").await;
    gap.wait_for_text("still chatting").await;
}
