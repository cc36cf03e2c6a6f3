//! One suite for every store backend. It always runs on the embedded store; it runs on
//! TiKV when `NATTER_TIKV_PD` names a cluster's PD endpoints (comma-separated). No TiKV can
//! run on the machines this project is developed on, so there the TiKV test says it was
//! not run, and nothing claims it passed.

use natter_history::{Embedded, History, Mark, OrderedStore, Tikv};
use natter_schemas::{Body, MessageItem};

/// Every key this run writes starts with `prefix` (a shared TiKV cluster stays clean).
async fn suite<S: OrderedStore>(store: S, prefix: &str) {
    let key = |k: &str| format!("{prefix}{k}").into_bytes();
    let entries: Vec<(Vec<u8>, Vec<u8>)> = ["a1", "a2", "a3", "b1"]
        .iter()
        .map(|k| (key(k), k.as_bytes().to_vec()))
        .collect();
    store.put_batch(entries).await.unwrap();
    store.put_batch(Vec::new()).await.unwrap();
    assert_eq!(store.get(&key("a2")).await.unwrap(), Some(b"a2".to_vec()));
    assert_eq!(store.get(&key("zz")).await.unwrap(), None);

    let values = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<String> {
        entries
            .into_iter()
            .map(|(_, v)| String::from_utf8(v).unwrap())
            .collect()
    };
    let forward = store.scan(&key("a"), &key("b"), 10, false).await.unwrap();
    assert_eq!(values(forward), ["a1", "a2", "a3"]);
    let backward = store.scan(&key("a"), &key("b"), 2, true).await.unwrap();
    assert_eq!(values(backward), ["a3", "a2"], "newest first, limited");
    let bounded = store.scan(&key("a1"), &key("a3"), 10, false).await.unwrap();
    assert_eq!(values(bounded), ["a1", "a2"], "end excluded");
    assert!(
        store
            .scan(&key("b"), &key("a"), 10, false)
            .await
            .unwrap()
            .is_empty()
    );

    // Overwrite is idempotent, delete_range removes exactly its range.
    store
        .put_batch(vec![(key("a2"), b"a2".to_vec())])
        .await
        .unwrap();
    store.delete_range(&key("a1"), &key("a3")).await.unwrap();
    let left = store.scan(&key(""), &key("~"), 10, false).await.unwrap();
    assert_eq!(values(left), ["a3", "b1"]);
    store.delete_range(&key(""), &key("~")).await.unwrap();
    assert!(
        store
            .scan(&key(""), &key("~"), 10, false)
            .await
            .unwrap()
            .is_empty()
    );
}

fn message(conv: &str, i: usize, ms: u64) -> MessageItem {
    MessageItem {
        id: format!("{:08x}-{:04x}-7000-8000-{:012x}", ms >> 16, ms & 0xFFFF, i),
        conv: conv.to_owned(),
        from: "amy".into(),
        ts: ms,
        body: Body::Text {
            text: format!("m{i}"),
        },
        reply_to: None,
    }
}

/// Paging and retention on top of a store.
async fn history_suite<S: OrderedStore>(store: S, conv_prefix: &str) {
    let history = History::new(store);
    let conv = format!("dm:{conv_prefix}a:{conv_prefix}b");
    let neighbour = format!("dm:{conv_prefix}a:{conv_prefix}bc");
    let messages: Vec<MessageItem> = (0..250)
        .map(|i| message(&conv, i, 1_000 + i as u64))
        .collect();
    for chunk in messages.chunks(64) {
        history.record(chunk).await.unwrap();
    }
    history.record(&messages[..10]).await.unwrap(); // a redelivery changes nothing
    history
        .record(&[message(&neighbour, 0, 5_000)])
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = history.page(&conv, before.as_deref(), 100).await.unwrap();
        assert!(page.messages.len() <= 100);
        before = page.messages.first().map(|m| m.id.clone());
        seen.splice(0..0, page.messages);
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, messages, "every message once, in order, across pages");

    // Retention: everything made before ms 1,100 goes, in every conversation.
    history.forget_before(1_100).await.unwrap();
    let page = history.page(&conv, None, 100).await.unwrap();
    assert_eq!(page.messages.first().map(|m| m.ts), Some(1_150));
    let remaining = history
        .page(&conv, Some(&page.messages[0].id), 100)
        .await
        .unwrap();
    assert_eq!(remaining.messages.len(), 50);
    assert!(!remaining.more);
    assert_eq!(
        history
            .page(&neighbour, None, 10)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    history.forget_before(u64::from(u32::MAX)).await.unwrap();
    assert!(
        history
            .page(&conv, None, 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );

    // Watermarks only move forward, and each member has their own.
    let reader = format!("{conv_prefix}b");
    assert!(
        history
            .advance(Mark::Read, &conv, &reader, "0005")
            .await
            .unwrap()
    );
    assert!(
        !history
            .advance(Mark::Read, &conv, &reader, "0003")
            .await
            .unwrap()
    );
    history
        .advance(Mark::Delivered, &conv, &reader, "0007")
        .await
        .unwrap();
    let marks = history.marks(&conv, &reader).await.unwrap();
    assert_eq!(
        (marks.delivered.as_str(), marks.read.as_str()),
        ("0007", "0005")
    );
    assert_eq!(
        history.marks(&conv, "nobody").await.unwrap(),
        Default::default()
    );
}

#[tokio::test]
async fn the_embedded_store_passes_the_suite() {
    let dir = std::env::temp_dir().join(format!("natter-history-{}", uuid::Uuid::new_v4()));
    let store = Embedded::open(&dir).unwrap();
    suite(store.clone(), "suite/").await;
    history_suite(store, "").await;
    // The file outlives the process: reopening finds what was written.
    drop(std::fs::remove_dir_all(&dir));
    let store = Embedded::open(&dir).unwrap();
    store
        .put_batch(vec![(b"k".to_vec(), b"v".to_vec())])
        .await
        .unwrap();
    drop(store);
    let reopened = Embedded::open(&dir).unwrap();
    assert_eq!(reopened.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_tikv_cluster_passes_the_suite_when_one_is_configured() {
    let Ok(pd) = std::env::var("NATTER_TIKV_PD") else {
        eprintln!("NATTER_TIKV_PD is not set: the TiKV backend was NOT tested in this run");
        return;
    };
    let endpoints = pd.split(',').map(|s| s.trim().to_owned()).collect();
    let store = Tikv::connect(endpoints).await.expect("TiKV reachable");
    let run = uuid::Uuid::new_v4().simple().to_string();
    suite(store.clone(), &format!("natter-test-{run}/")).await;
    history_suite(store, &run[..8]).await;
}
