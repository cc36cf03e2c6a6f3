//! One suite for every store backend. It always runs on the embedded store; the TiKV test
//! is ignored unless asked for (`-- --ignored`) with `NATTER_TIKV_PD` naming a cluster's
//! PD endpoints (comma-separated). No TiKV can run on the machines this project is
//! developed on, so there the summary lists it as ignored, and nothing claims it passed.

use natter_history::{
    Batch, Durability, Embedded, History, OrderedStore, SenderMarks, log::MAX_PAGE_BYTES,
};
use natter_schemas::{
    Body, EditItem, InboxItem, MessageItem, ReactionItem, ReceiptStatus, body::MAX_TEXT_BYTES,
};

/// Every key this run writes starts with `prefix` (a shared TiKV cluster stays clean).
async fn suite<S: OrderedStore>(store: S, prefix: &str) {
    let key = |k: &str| format!("{prefix}{k}").into_bytes();
    let entries: Vec<(Vec<u8>, Vec<u8>)> = ["a1", "a2", "a3", "b1"]
        .iter()
        .map(|k| (key(k), k.as_bytes().to_vec()))
        .collect();
    store.put_batch(entries, Durability::Soon).await.unwrap();
    store.put_batch(Vec::new(), Durability::Now).await.unwrap();
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
        .put_batch(vec![(key("a2"), b"a2".to_vec())], Durability::Now)
        .await
        .unwrap();
    store.delete_range(&key("a1"), &key("a3")).await.unwrap();
    let left = store.scan(&key(""), &key("~"), 10, false).await.unwrap();
    assert_eq!(values(left), ["a3", "b1"]);
    // get_many answers each key in order, absent ones as None.
    assert_eq!(
        store
            .get_many(vec![key("b1"), key("zz"), key("a3")])
            .await
            .unwrap(),
        [Some(b"b1".to_vec()), None, Some(b"a3".to_vec())]
    );
    // delete_keys removes exactly the keys named; one never written is no error.
    store
        .delete_keys(vec![key("a3"), key("zz")], Durability::Soon)
        .await
        .unwrap();
    let left = store.scan(&key(""), &key("~"), 10, false).await.unwrap();
    assert_eq!(values(left), ["b1"]);
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
        forwarded: None,
        mentions: Vec::new(),
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
    let write = |messages: &[MessageItem]| {
        history.write(
            Batch {
                messages: messages.to_vec(),
                ..Batch::default()
            },
            Durability::Soon,
        )
    };
    for chunk in messages.chunks(64) {
        write(chunk).await.unwrap();
    }
    write(&messages[..10]).await.unwrap(); // a replay changes nothing
    write(&[message(&neighbour, 0, 5_000)]).await.unwrap();

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

    // Changes are kept beside their messages, read per page, and retained like them.
    let (edited, reacted) = (&messages[120], &messages[130]);
    let change = |item| Batch {
        changes: vec![item],
        ..Batch::default()
    };
    let edit = |rev: &str, text: &str| {
        InboxItem::Edit(EditItem {
            id: edited.id.clone(),
            conv: conv.clone(),
            from: "amy".into(),
            rev: rev.into(),
            ts: 7,
            body: Body::Text { text: text.into() },
        })
    };
    for item in [edit("r2", "second"), edit("r1", "first")] {
        history.write(change(item), Durability::Soon).await.unwrap();
    }
    let reaction = InboxItem::Reaction(ReactionItem {
        id: reacted.id.clone(),
        conv: conv.clone(),
        from: "bob".into(),
        rev: "r3".into(),
        ts: 8,
        emoji: Some("👍".into()),
    });
    history
        .write(change(reaction), Durability::Soon)
        .await
        .unwrap();
    let found = history
        .changes(&conv, &messages[100].id, &messages[199].id)
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    let shown = found[&edited.id].show(edited.clone(), "bob");
    assert_eq!(
        shown.message.body,
        Body::Text {
            text: "second".into()
        }
    );
    assert_eq!(
        found[&reacted.id]
            .show(reacted.clone(), "bob")
            .my_reaction
            .as_deref(),
        Some("👍")
    );
    let outside = history
        .changes(&conv, &messages[121].id, &messages[129].id)
        .await
        .unwrap();
    assert!(
        outside.is_empty(),
        "a range holds only its messages' changes"
    );

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
    let gone = history.changes(&conv, &messages[0].id, &messages[249].id);
    assert!(
        gone.await.unwrap().is_empty(),
        "changes go with their messages"
    );
    assert!(
        history
            .page(&conv, None, 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );

    // A sender's watermarks only move forward; the checkpoint goes with them.
    let sender = format!("{conv_prefix}a");
    let mark = |status, id: &str| (conv.clone(), sender.clone(), status, id.to_owned());
    let marks = |marks, checkpoint| Batch {
        marks,
        checkpoint: Some((format!("{conv_prefix}tail"), checkpoint)),
        ..Batch::default()
    };
    history
        .write(
            marks(
                vec![
                    mark(ReceiptStatus::Read, "0005"),
                    mark(ReceiptStatus::Delivered, "0007"),
                ],
                10,
            ),
            Durability::Now,
        )
        .await
        .unwrap();
    history
        .write(
            marks(vec![mark(ReceiptStatus::Read, "0003")], 11),
            Durability::Soon,
        )
        .await
        .unwrap();
    assert_eq!(
        history.marks(&conv, &sender).await.unwrap(),
        SenderMarks {
            delivered: "0007".into(),
            read: "0005".into()
        }
    );
    assert_eq!(
        history.marks(&conv, "nobody").await.unwrap(),
        SenderMarks::default()
    );
    assert_eq!(
        history
            .checkpoint(&format!("{conv_prefix}tail"))
            .await
            .unwrap(),
        11
    );
    assert_eq!(history.checkpoint("never").await.unwrap(), 0);

    // A read kept from the peer moves the reader's own position only, and only forward.
    let reader = format!("{conv_prefix}b");
    for id in ["0006", "0004"] {
        let own = Batch {
            own_reads: vec![(conv.clone(), reader.clone(), id.to_owned())],
            ..Batch::default()
        };
        history.write(own, Durability::Now).await.unwrap();
    }
    assert_eq!(history.own_read(&conv, &reader).await.unwrap(), "0006");
    assert_eq!(history.own_read(&conv, &sender).await.unwrap(), "");
    assert_eq!(
        history.marks(&conv, &sender).await.unwrap().read,
        "0005",
        "the sender's ticks did not move"
    );

    // Pages are bounded in bytes: 40 texts of 32 KiB (1.3 MB, over NATS' 1 MB payload)
    // come in pages of at most MAX_PAGE_BYTES (two each), each saying `more` but the last.
    let big = format!("dm:{conv_prefix}big:{conv_prefix}c");
    let texts: Vec<MessageItem> = (0..40)
        .map(|i| MessageItem {
            body: Body::Text {
                text: "x".repeat(MAX_TEXT_BYTES),
            },
            ..message(&big, i, 20_000 + i as u64)
        })
        .collect();
    write(&texts).await.unwrap();
    let (mut seen, mut pages, mut before) = (Vec::new(), 0, None::<String>);
    loop {
        let page = history.page(&big, before.as_deref(), 100).await.unwrap();
        let bytes: usize = page
            .messages
            .iter()
            .map(|m| serde_json::to_vec(m).unwrap().len())
            .sum();
        assert!(bytes <= MAX_PAGE_BYTES, "a page of {bytes} bytes");
        pages += 1;
        before = page.messages.first().map(|m| m.id.clone());
        seen.splice(0..0, page.messages);
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, texts, "every big message once, in order");
    assert_eq!(pages, 20, "40 × 32 KiB in pages of at most 96 KiB");

    // Messages can be found by id alone.
    let group = format!("group:{conv_prefix}g");
    let in_group = message(&group, 1, 9_000);
    write(std::slice::from_ref(&in_group)).await.unwrap();
    assert_eq!(history.message(&in_group.id).await.unwrap(), Some(in_group));
    let direct = message(&conv, 2, 9_001);
    write(std::slice::from_ref(&direct)).await.unwrap();
    assert_eq!(history.message(&direct.id).await.unwrap(), Some(direct));
}

/// Two tail readers writing one store, as every TiKV worker does (each reads the whole
/// inbox under its own checkpoint): the one behind never moves a watermark back, and
/// neither loses the other's changes to a message.
async fn two_writers_suite<S: OrderedStore + Clone>(store: S, conv_prefix: &str) {
    let conv = format!("dm:{conv_prefix}two:writers");
    let carol = format!("carol{conv_prefix}");
    let target = message(&conv, 0, 1);
    let writers = [History::new(store.clone()), History::new(store.clone())];
    let rounds = 200;
    // The two readers are one item apart: one writes even positions, the other odd.
    let mark = |writer: usize, i: usize| Batch {
        marks: vec![(
            conv.clone(),
            "alice".to_owned(),
            ReceiptStatus::Delivered,
            format!("{:04}", 2 * i + writer),
        )],
        latest: vec![(
            carol.clone(),
            conv.clone(),
            format!("{:04}", 2 * i + writer),
        )],
        ..Batch::default()
    };
    let reaction = |writer: usize, i: usize| Batch {
        changes: vec![InboxItem::Reaction(ReactionItem {
            id: target.id.clone(),
            conv: conv.clone(),
            from: format!("member-{writer}-{i}"),
            rev: format!("r{i}"),
            ts: 9,
            emoji: Some("👍".into()),
        })],
        ..Batch::default()
    };
    let observer = History::new(store.clone());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let write = |writer: usize| {
        let (history, done) = (&writers[writer], &done);
        async move {
            for i in 1..=rounds {
                history
                    .write(mark(writer, i), Durability::Soon)
                    .await
                    .unwrap();
                let reaction = reaction(writer, i);
                history.write(reaction, Durability::Soon).await.unwrap();
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let listed = || async {
        let (list, _) = observer.conversations(&carol, None, 10).await.unwrap();
        list.into_iter().map(|listed| listed.at).collect::<Vec<_>>()
    };
    let watch = async {
        let (mut seen, mut seen_listed) = (String::new(), String::new());
        while done.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            let now = observer.marks(&conv, "alice").await.unwrap().delivered;
            assert!(now >= seen, "the watermark moved back from {seen} to {now}");
            seen = now;
            let listed = listed().await;
            assert!(listed.len() <= 1, "one conversation listed as {listed:?}");
            let now = listed.into_iter().next().unwrap_or_default();
            assert!(now >= seen_listed, "the chat list moved back to {now}");
            seen_listed = now;
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(write(0), write(1), watch);
    let marks = observer.marks(&conv, "alice").await.unwrap();
    assert_eq!(marks.delivered, format!("{:04}", 2 * rounds + 1));
    assert_eq!(listed().await, [format!("{:04}", 2 * rounds + 1)]);
    // What either writer left behind in the chat list's index went as it was read.
    let (from, to) = (format!("cr/{carol}/"), format!("cr/{carol}0"));
    let index = store
        .scan(from.as_bytes(), to.as_bytes(), 1_000, false)
        .await;
    assert_eq!(index.unwrap().len(), 1, "stale chat-list entries stay");
    let changes = observer.changes(&conv, &target.id, &target.id).await;
    let reactions = changes.unwrap()[&target.id].reactions.len();
    assert_eq!(reactions, 2 * rounds, "a writer's reactions were lost");
}

#[tokio::test]
async fn the_embedded_store_passes_the_suite() {
    let dir = std::env::temp_dir().join(format!("natter-history-{}", uuid::Uuid::new_v4()));
    let store = Embedded::open(&dir).unwrap();
    suite(store.clone(), "suite/").await;
    history_suite(store.clone(), "").await;
    two_writers_suite(store, "").await;
    // The file outlives the process: reopening finds what was written.
    drop(std::fs::remove_dir_all(&dir));
    let store = Embedded::open(&dir).unwrap();
    store
        .put_batch(vec![(b"k".to_vec(), b"v".to_vec())], Durability::Now)
        .await
        .unwrap();
    drop(store);
    let reopened = Embedded::open(&dir).unwrap();
    assert_eq!(reopened.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "tikv")]
#[tokio::test]
#[ignore = "needs a TiKV cluster: NATTER_TIKV_PD=<pd endpoints> cargo test -p natter-history -- --ignored"]
async fn a_tikv_cluster_passes_the_suite() {
    let pd = std::env::var("NATTER_TIKV_PD").expect("NATTER_TIKV_PD names the PD endpoints");
    let endpoints = pd.split(',').map(|s| s.trim().to_owned()).collect();
    let store = natter_history::Tikv::connect(endpoints)
        .await
        .expect("TiKV reachable");
    let run = uuid::Uuid::new_v4().simple().to_string();
    suite(store.clone(), &format!("natter-test-{run}/")).await;
    history_suite(store.clone(), &run[..8]).await;
    two_writers_suite(store, &run[..8]).await;
}
