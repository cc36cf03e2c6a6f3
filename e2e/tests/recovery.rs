//! Live delivery loses nothing when a republish is lost.
//!
//! JetStream's RePublish is lost when the stream leader dies mid-flight (NATS-NOTES.md).
//! These tests make that happen on purpose: they switch `INBOX`'s RePublish off, store an
//! item in a connected user's inbox, and switch it back on, so the item is stored but never
//! published live. The gateway must still deliver it, once and in order: by the sequence
//! chain when a later item arrives, by a reconcile after a stream leader election, and by
//! its first reconcile after connecting, and after the gateway's own NATS connection was cut
//! and came back (everything republished meanwhile went nowhere). The periodic reconcile is set to 10 minutes here,
//! so it cannot be what finds the item.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use natter_e2e::{
    Client,
    proxy::Proxy,
    system,
    system::{ExtraGateway, Options, configure, nats_settings},
    unique,
};
use natter_fabric::{now_millis, streams, subjects};
use natter_gateway::config::Limits;
use natter_schemas::{Body, InboxItem, MessageItem};
use serde_json::Value;
use tokio::sync::Mutex;

/// The tests change the shared `INBOX` stream's settings: one at a time.
static INBOX_SETTINGS: Mutex<()> = Mutex::const_new(());

async fn admin() -> jetstream::Context {
    configure(Options {
        reconcile_every_ms: 600_000,
        ..Options::default()
    });
    jetstream::new(natter_e2e::system::nats_as("workers", "e2e-admin").await)
}

async fn set_republish(js: &jetstream::Context, on: bool) {
    let config = streams::inbox(3);
    let config = if on {
        config
    } else {
        jetstream::stream::Config {
            republish: None,
            ..config
        }
    };
    js.update_stream(config).await.unwrap();
}

/// Stores a message from `from` in `to`'s inbox without publishing it live, and proves it
/// was not: a watcher of every live item subscribed before the store sees a marker user's
/// item, stored after RePublish was back on, and nothing of `to`'s before it (RePublish
/// publishes in stream order, so a republished item would have come first).
async fn store_silently(js: &jetstream::Context, to: &str, from: &str, text: &str) -> u64 {
    let watcher = natter_e2e::system::nats_as("gateway", "e2e-live-watcher").await;
    let mut live = watcher.subscribe(subjects::live_item("*")).await.unwrap();
    watcher.flush().await.unwrap();
    set_republish(js, false).await;
    let seq = store(js, to, from, text).await;
    set_republish(js, true).await;
    let marker_user = unique("marker");
    store(js, &marker_user, from, "after the silent one").await;
    let marker_subject = subjects::live_item(&marker_user);
    loop {
        let item = tokio::time::timeout(Duration::from_secs(20), live.next())
            .await
            .expect("the marker's item is republished")
            .expect("the watcher's subscription is open");
        if item.subject.as_str() == marker_subject {
            return seq;
        }
        assert_ne!(
            item.subject.as_str(),
            subjects::live_item(to),
            "the item stored with RePublish off was published live"
        );
    }
}

async fn store(js: &jetstream::Context, to: &str, from: &str, text: &str) -> u64 {
    let item = InboxItem::Msg(MessageItem {
        id: uuid::Uuid::now_v7().to_string(),
        conv: natter_schemas::Conversation::direct(to, from).to_string(),
        from: from.to_owned(),
        ts: now_millis(),
        body: Body::Text {
            text: text.to_owned(),
        },
        reply_to: None,
        forwarded: None,
        mentions: Vec::new(),
    });
    let ack = js
        .publish(subjects::inbox(to), item.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
    ack.sequence
}

#[tokio::test]
async fn a_lost_republish_is_filled_in_when_the_next_item_arrives() {
    let js = admin().await;
    let _one_at_a_time = INBOX_SETTINGS.lock().await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    // Past the socket's first reconcile (a second after it opened), which would find the
    // item: stored earlier, it would arrive before `next` and fail the test.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let lost = store_silently(&js, &bob, &alice, "lost in flight").await;
    let next = store(&js, &bob, &alice, "the next one").await;

    let first = b.wait_for("msg", |f| f["type"] == "msg").await;
    let second = b.wait_for("msg", |f| f["type"] == "msg").await;
    assert_eq!(
        (first["seq"].as_u64(), first["body"]["text"].as_str()),
        (Some(lost), Some("lost in flight"))
    );
    assert_eq!(
        (second["seq"].as_u64(), second["body"]["text"].as_str()),
        (Some(next), Some("the next one"))
    );
}

#[tokio::test]
async fn a_lost_last_item_is_recovered_after_an_inbox_leader_election() {
    let js = admin().await;
    let _one_at_a_time = INBOX_SETTINGS.lock().await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    // Past the first reconcile, as above.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let lost = store_silently(&js, &bob, &alice, "last and lost").await;
    let early: Vec<Value> = b.messages_within(Duration::ZERO).await;
    assert!(early.is_empty(), "delivered before the election: {early:?}");
    let stepdown: Value = js
        .request(format!("STREAM.LEADER.STEPDOWN.{}", streams::INBOX), &())
        .await
        .unwrap();
    assert_eq!(stepdown["success"], true, "{stepdown}");

    let frame = b.wait_for("recovered msg", |f| f["type"] == "msg").await;
    assert_eq!(frame["seq"].as_u64(), Some(lost));
    assert_eq!(frame["body"]["text"], "last and lost");
}

#[tokio::test]
async fn an_item_stored_while_connecting_is_recovered_by_the_first_reconcile() {
    let js = admin().await;
    let _one_at_a_time = INBOX_SETTINGS.lock().await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = Client::connect(0, &bob, "laptop", 0).await;
    // After `hello`: beyond what catch-up reads (the inbox's newest as the socket opened),
    // as if the item had been stored before this socket's interest reached the stream
    // leader's server.
    let lost = store_silently(&js, &bob, &alice, "during connect").await;
    let frame = b.wait_for("recovered msg", |f| f["type"] == "msg").await;
    assert_eq!(frame["seq"].as_u64(), Some(lost));
}

#[tokio::test]
async fn items_stored_while_a_gateway_was_cut_off_from_nats_arrive_after_it_reconnects() {
    let js = admin().await;
    let first_node = system()
        .nats_urls
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("nats://");
    let proxy = Proxy::start(first_node.parse().unwrap()).await;

    // A gateway of this test's own that reaches NATS only through the proxy.
    let nats = natter_fabric::NatsSettings {
        discover_servers: false, // not to the servers it would learn about either
        ..nats_settings(
            &format!("nats://{}", proxy.addr),
            "gateway",
            "cut-off-gateway",
        )
    };
    let gateway = ExtraGateway::start(
        nats,
        Limits {
            reconcile_every_ms: 600_000,
            ..Limits::default()
        },
    )
    .await;
    let addr = gateway.addr;

    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = Client::connect_to(addr, &bob, "phone", 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the first reconcile
    let before = store(&js, &bob, &alice, "before the cut").await;
    assert_eq!(
        b.wait_for_text("before the cut").await["seq"].as_u64(),
        Some(before)
    );

    proxy.cut(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = natter_e2e::system::http_get(addr, "/healthz", None).await;
    assert_eq!(status, 503, "the gateway should be cut off from NATS now");
    let during = store(&js, &bob, &alice, "while cut off").await;

    let frame = b
        .wait_for("msg stored during the cut", |f| f["type"] == "msg")
        .await;
    assert_eq!(frame["seq"].as_u64(), Some(during));
    assert_eq!(frame["body"]["text"], "while cut off");
}

/// Text of one large message: 30 KiB, so a few hundred fill any socket buffer.
fn bulky(i: usize) -> String {
    format!("{i:04} {}", "x".repeat(30 * 1024))
}

/// Waits until the newest item in `user`'s inbox is the message with text `last`.
async fn all_stored_for(user: &str, last: &str) {
    let inbox = admin()
        .await
        .get_stream_no_info(streams::INBOX)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(newest) = inbox
            .get_last_raw_message_by_subject(&subjects::inbox(user))
            .await
        {
            let item: Value = serde_json::from_slice(&newest.payload).unwrap();
            if item["body"]["text"] == last {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}'s inbox did not get the last message within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_resumes_without_loss() {
    configure(Options {
        reconcile_every_ms: 600_000,
        ..Options::default()
    });
    let gateway = ExtraGateway::start(
        nats_settings(&system().nats_urls, "gateway", "slow-client-gateway"),
        Limits {
            write_timeout_ms: 1_000,
            ..Limits::default()
        },
    )
    .await;
    let proxy = Proxy::start(gateway.addr).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect_to(proxy.addr, &bob, "phone", 0).await;

    // Bob's phone stops reading; Alice sends far more than the socket buffers hold.
    proxy.pause_downstream(true);
    const COUNT: usize = 300;
    for i in 0..COUNT {
        a.send_text(&bob, &bulky(i)).await;
    }
    // `sent` comes before fanout: on a loaded machine the last items reach Bob's inbox
    // seconds later, and a pause that ended before then would let them all through.
    all_stored_for(&bob, &bulky(COUNT - 1)).await;
    // The gateway's blocked write gives up after its 1 s write timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.pause_downstream(false);

    // What was already in flight arrives, then the gateway has closed the socket.
    let mut got = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(20), b.receive())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "socket neither delivered nor closed for 20 s; {} of {COUNT} delivered, the last {:?}",
                got.len(),
                got.last()
            )
        })
    {
        if frame["type"] == "msg" {
            got.push(frame["body"]["text"].as_str().unwrap()[..4].to_owned());
        }
    }
    assert!(
        got.len() < COUNT,
        "the gateway kept buffering for a client that did not read"
    );
    let cursor = b.last_seq;

    // Resuming from the last stored item brings exactly the rest, in order.
    let mut b = Client::connect(1, &bob, "phone", cursor).await;
    while got.len() < COUNT {
        let frame = b.wait_for("msg", |f| f["type"] == "msg").await;
        got.push(frame["body"]["text"].as_str().unwrap()[..4].to_owned());
    }
    let want: Vec<String> = (0..COUNT).map(|i| format!("{i:04}")).collect();
    assert_eq!(got, want);
}
