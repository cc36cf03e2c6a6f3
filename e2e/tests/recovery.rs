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
use natter_e2e::{
    Client,
    proxy::Proxy,
    system,
    system::{Options, SECRET, configure, nats_settings, wait_healthy},
    unique,
};
use natter_fabric::{now_millis, streams, subjects};
use natter_schemas::{Body, InboxItem, MessageItem};
use serde_json::Value;
use tokio::sync::Mutex;

/// The tests change the shared `INBOX` stream's settings: one at a time.
static INBOX_SETTINGS: Mutex<()> = Mutex::const_new(());

async fn admin() -> jetstream::Context {
    configure(Options {
        reconcile_every_ms: 600_000,
    });
    let urls = system().nats_urls.clone();
    let (events, _) = tokio::sync::broadcast::channel(4);
    let settings = nats_settings(&urls, "workers", "e2e-admin");
    let client = natter_fabric::connect(&settings, events, Duration::from_secs(10))
        .await
        .unwrap();
    jetstream::new(client)
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

/// Stores a message from `from` in `to`'s inbox without publishing it live.
async fn store_silently(js: &jetstream::Context, to: &str, from: &str, text: &str) -> u64 {
    set_republish(js, false).await;
    let seq = store(js, to, from, text).await;
    set_republish(js, true).await;
    seq
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
    });
    let ack = js
        .publish(subjects::inbox(to), item.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
    ack.sequence
}

async fn nothing_for(client: &mut Client, window: Duration) {
    let frames: Vec<Value> = client
        .collect_for(window)
        .await
        .into_iter()
        .filter(|f| f["type"] == "msg")
        .collect();
    assert!(
        frames.is_empty(),
        "expected nothing live yet, got {frames:?}"
    );
}

#[tokio::test]
async fn a_lost_republish_is_filled_in_when_the_next_item_arrives() {
    let js = admin().await;
    let _one_at_a_time = INBOX_SETTINGS.lock().await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the first reconcile

    let lost = store_silently(&js, &bob, &alice, "lost in flight").await;
    nothing_for(&mut b, Duration::from_millis(1000)).await;
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
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let lost = store_silently(&js, &bob, &alice, "last and lost").await;
    nothing_for(&mut b, Duration::from_millis(1500)).await;
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
    // Once catch-up is over, as if the item had been stored before this socket's
    // interest reached the stream leader's server.
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = natter_gateway::config::Config {
        listen: addr,
        nats: natter_fabric::NatsSettings {
            // Through the proxy only: not to the servers it would learn about.
            discover_servers: false,
            ..nats_settings(
                &format!("nats://{}", proxy.addr),
                "gateway",
                "cut-off-gateway",
            )
        },
        ..Default::default()
    };
    config.jwt.secret = Some(SECRET.to_owned());
    config.limits.reconcile_every_ms = 600_000;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(natter_gateway::run(listener, config, async move {
        let _ = stopped.await;
    }));
    wait_healthy(addr).await;

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

    let _ = stop.send(());
    let _ = gateway.await;
}
