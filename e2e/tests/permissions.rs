//! Least privilege of the NATS users in `nats/accounts.conf`, on the shared 3-node cluster:
//! each user is refused what its process does not need, and the refusal is observed two
//! ways: the server reports a permissions violation naming the subject, and the operation
//! has no effect (nothing arrives, nothing is stored, nothing is deleted). Every test also
//! runs an allowed operation of the same kind, so none can pass because nothing worked.
//!
//! - The gateway user cannot delete or purge streams, delete an inbox item, or create
//!   consumers on `INBOX` or `MSGS` (it could read every inbox or the whole log).
//! - The gateway user may write inboxes (it stores one-on-one messages and receipts there
//!   itself) and publish notices on `live.<uid>.n`, but not items on `live.<uid>.i` (only
//!   JetStream republishes there), an item published as a notice is passed to no socket,
//!   and it cannot write group receipt state.
//! - The gateway user cannot listen to inboxes, the message log, receipt marks, receipt
//!   state, or history requests (it could impersonate a history worker).
//! - The workers user cannot listen to live deliveries or typing notices.
//! - The workers user cannot post messages, ask for history pages, or forge typing
//!   notices, receipt marks or live deliveries.
//!
//! Covered elsewhere: `one_on_one.rs` (`each_nats_user_is_refused_what_its_process_does_not_need`)
//! checks with JetStream publishes that the gateway cannot delete `INBOX` or write
//! `$KV.receipts.>`, and that the workers cannot subscribe to one `live.<uid>` nor write
//! `$KV.groups.>`.

use std::time::Duration;

use async_nats::{
    Event, ServerError,
    jetstream::{self, stream::LastRawMessageErrorKind},
};
use futures_util::{StreamExt, future::join_all};
use natter_e2e::{
    Client,
    client::token,
    system::{http_get, nats_settings, system},
    unique,
};
use natter_fabric::{streams, subjects};
use natter_schemas::Conversation;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// How long a refused JetStream API request is given to (wrongly) succeed.
const API_PATIENCE: Duration = Duration::from_secs(3);
/// How long a refused subscription is watched for (wrongly) delivered messages.
const QUIET: Duration = Duration::from_millis(1_500);

/// A NATS connection as one of `nats/accounts.conf`'s users, with the server's errors.
struct Nats {
    client: async_nats::Client,
    events: broadcast::Receiver<Event>,
}

impl Nats {
    async fn connect(user: &str) -> Self {
        let (tx, events) = broadcast::channel(256);
        let settings = nats_settings(&system().nats_urls, user, &format!("e2e-perm-{user}"));
        let client = natter_fabric::connect(&settings, tx, Duration::from_secs(30))
            .await
            .unwrap_or_else(|err| panic!("NATS as {user}: {err}"));
        Self { client, events }
    }

    /// Waits for the server's permissions violation for `action` ("Publish" or
    /// "Subscription") to `subject`.
    async fn violation(&mut self, action: &str, subject: &str) {
        let wanted = format!("Permissions Violation for {action} to \"{subject}\"");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(Event::ServerError(ServerError::Other(text)))) if text.contains(&wanted) => {
                    return;
                }
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => panic!("connection gone"),
                Err(_) => panic!("no server error {wanted:?}"),
            }
        }
    }

    /// Publishes to `subject` (core NATS) and waits for the server to refuse it.
    async fn refused_publish(&mut self, subject: &str, payload: Value) {
        self.client
            .publish(subject.to_owned(), payload.to_string().into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.violation("Publish", subject).await;
    }

    /// Subscribes to `subject` and waits for the server to refuse it; the subscriber is
    /// returned so the test can show nothing reaches it.
    async fn refused_subscribe(&mut self, subject: &str) -> async_nats::Subscriber {
        let subscriber = self.client.subscribe(subject.to_owned()).await.unwrap();
        self.client.flush().await.unwrap();
        self.violation("Subscription", subject).await;
        subscriber
    }

    /// A JetStream API request: `Some(answer)` if one came within [`API_PATIENCE`].
    async fn api(&self, subject: &str, payload: Value) -> Option<Value> {
        let request = self
            .client
            .request(subject.to_owned(), payload.to_string().into());
        match tokio::time::timeout(API_PATIENCE, request).await {
            Ok(Ok(message)) => Some(serde_json::from_slice(&message.payload).unwrap()),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

/// Everything `subscriber` got within [`QUIET`].
async fn overheard(subscriber: &mut async_nats::Subscriber) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + QUIET;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscriber.next()).await {
        got.push(format!("{}: {:?}", message.subject, message.payload));
    }
    got
}

/// The next message on `subscriber` (an allowed subscription), within 20 s.
async fn next_on(subscriber: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(20), subscriber.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 20 s"))
        .unwrap_or_else(|| panic!("subscription for {what} ended"))
}

/// A JetStream context as the workers user (who may read every stream), for checks.
async fn admin() -> jetstream::Context {
    jetstream::new(Nats::connect("workers").await.client)
}

fn dm(a: &str, b: &str) -> String {
    Conversation::direct(a, b).to_string()
}

/// An inbox item as the fanout workers write it.
fn inbox_item(from: &str, to: &str, text: &str) -> Value {
    json!({
        "type": "msg", "id": uuid::Uuid::now_v7().to_string(), "conv": dm(from, to),
        "from": from, "ts": natter_fabric::now_millis(),
        "body": {"kind": "text", "text": text},
    })
}

/// A history page request as the gateways send it.
fn page_request(reader: &str) -> Value {
    json!({"conv": dm(reader, reader), "reader": reader, "before": null, "limit": 1})
}

#[tokio::test]
async fn the_gateway_user_cannot_delete_purge_or_read_streams_through_the_jetstream_api() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let sent = a.send_text(&bob, "kept").await;
    // Bob's ack makes a delivered receipt, and his read of a group message a receipt mark,
    // so this test's own traffic is in every stream (RCPT included) before the "before"
    // snapshot, whatever other tests did.
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    let got = b.wait_for_text("kept").await;
    b.ack(got["seq"].as_u64().unwrap()).await;
    a.wait_for("the delivered tick", |f| {
        f["type"] == "receipt" && f["status"] == "delivered"
    })
    .await;
    // A group message Bob reads makes a receipt mark in RCPT.
    let group = a
        .request(json!({"type": "group_create", "name": "Kept", "members": [bob]}))
        .await;
    let gid = group["id"].as_str().expect("a group id").to_owned();
    let in_group = a.send_to_group(&gid, "kept too").await;
    b.wait_for_text("kept too").await;
    b.send_json(json!({"type": "read", "conv": format!("group:{gid}"), "up_to": in_group["id"]}))
        .await;
    a.wait_for("the group's read tick", |f| {
        f["type"] == "receipt" && f["status"] == "read" && f["all"] == true
    })
    .await;
    let admin = admin().await;
    let mut before = Vec::new();
    for name in [streams::MSGS, streams::INBOX, streams::RCPT] {
        let mut stream = admin.get_stream(name).await.unwrap();
        before.push(stream.info().await.unwrap().state.clone());
    }

    let mut gateway = Nats::connect("gateway").await;
    // Allowed: stream info answers.
    let info = gateway
        .api("$JS.API.STREAM.INFO.INBOX", json!({}))
        .await
        .expect("stream info answers the gateway");
    assert_eq!(info["config"]["name"], "INBOX", "{info}");

    let spy = unique("spy");
    let consumer = |stream: &str| {
        json!({"stream_name": stream, "config": {
            "name": spy, "durable_name": spy, "deliver_policy": "all", "ack_policy": "none",
        }})
    };
    let refused: Vec<(String, Value)> = vec![
        ("$JS.API.STREAM.DELETE.MSGS".into(), json!({})),
        ("$JS.API.STREAM.DELETE.RCPT".into(), json!({})),
        ("$JS.API.STREAM.PURGE.INBOX".into(), json!({})),
        ("$JS.API.STREAM.PURGE.MSGS".into(), json!({})),
        (
            "$JS.API.STREAM.MSG.DELETE.INBOX".into(),
            json!({"seq": before[1].last_sequence}),
        ),
        (
            format!("$JS.API.CONSUMER.CREATE.INBOX.{spy}"),
            consumer("INBOX"),
        ),
        (
            format!("$JS.API.CONSUMER.DURABLE.CREATE.INBOX.{spy}"),
            consumer("INBOX"),
        ),
        (
            format!("$JS.API.CONSUMER.CREATE.MSGS.{spy}"),
            consumer("MSGS"),
        ),
    ];
    let answers = join_all(
        refused
            .iter()
            .map(|(subject, payload)| gateway.api(subject, payload.clone())),
    )
    .await;
    for ((subject, _), answer) in refused.iter().zip(answers) {
        assert!(
            answer.is_none(),
            "{subject} answered the gateway: {answer:?}"
        );
        gateway.violation("Publish", subject).await;
    }

    // Every stream is still there, nothing was removed from its start, no consumer exists.
    for (name, before) in [streams::MSGS, streams::INBOX, streams::RCPT]
        .into_iter()
        .zip(&before)
    {
        let mut stream = admin.get_stream(name).await.unwrap();
        let after = stream.info().await.unwrap().state.clone();
        assert_eq!(
            after.first_sequence, before.first_sequence,
            "{name} lost messages"
        );
        assert!(after.messages >= before.messages, "{name} lost messages");
        assert!(after.messages > 0, "{name} is empty");
        assert!(
            stream.consumer_info(&spy).await.is_err(),
            "the gateway created a consumer on {name}"
        );
    }
    // The message is still in Bob's inbox.
    let (status, body) = http_get(system().gateways[1], "/v1/inbox", Some(&token(&bob))).await;
    assert_eq!(status, 200, "{body}");
    let inbox: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(inbox["items"][0]["id"], sent["id"], "{inbox}");
}

#[tokio::test]
async fn the_gateway_user_may_write_inboxes_but_not_forge_a_live_delivery_or_receipt_state() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    let mut gateway = Nats::connect("gateway").await;

    // Items come on `live.<uid>.i` from JetStream only; the gateway user publishes notices
    // on `live.<uid>.n`, and an inbox item published there is passed to no socket.
    gateway
        .refused_publish(
            &subjects::live_item(&bob),
            inbox_item(&alice, &bob, "forged live item"),
        )
        .await;
    gateway
        .client
        .publish(
            subjects::notice(&bob),
            inbox_item(&alice, &bob, "forged notice").to_string().into(),
        )
        .await
        .unwrap();
    gateway
        .refused_publish(
            &format!("$KV.receipts.g.{bob}"),
            json!({"delivered": {bob.clone(): "ffffffff-ffff"}}),
        )
        .await;

    // Allowed: the gateway's inbox write (how it stores one-on-one messages) is stored,
    // published live, and is the first and only item Bob gets.
    let js = jetstream::new(gateway.client.clone());
    let item = inbox_item(&alice, &bob, "written by a gateway");
    js.publish(subjects::inbox(&bob), item.to_string().into())
        .await
        .unwrap()
        .await
        .expect("the gateway's inbox write is stored");
    let msg = b.wait_for("a message", |f| f["type"] == "msg").await;
    assert_eq!(msg["body"]["text"], "written by a gateway", "{msg}");
    let more = b.messages_within(QUIET).await;
    assert!(more.is_empty(), "Bob got forged items: {more:?}");
    let admin = admin().await;
    let state = admin
        .get_stream("KV_receipts")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!("$KV.receipts.g.{bob}"))
        .await;
    assert!(
        matches!(state, Err(ref err) if err.kind() == LastRawMessageErrorKind::NoMessageFound),
        "forged receipt state stored: {state:?}"
    );
}

#[tokio::test]
async fn the_gateway_user_cannot_listen_to_inboxes_the_log_receipts_or_history_requests() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut gateway = Nats::connect("gateway").await;
    let mut live = gateway
        .client
        .subscribe(subjects::live(&bob))
        .await
        .unwrap();
    let mut eavesdroppers = Vec::new();
    for subject in [
        "inbox.>",
        "msg.>",
        "rcpt.>",
        "$KV.receipts.>",
        subjects::HISTORY_PAGE,
        subjects::HISTORY_INFO,
    ] {
        eavesdroppers.push((subject, gateway.refused_subscribe(subject).await));
    }

    // Traffic on every one of those subjects: a group message (the log, both inboxes),
    // Bob reading it (a receipt mark, then receipt state), history and info requests.
    let group = a
        .request(json!({"type": "group_create", "name": "Overheard", "members": [bob]}))
        .await;
    let gid = group["id"].as_str().expect("a group id").to_owned();
    let sent = a.send_to_group(&gid, "for members only").await;
    let msg = b.wait_for_text("for members only").await;
    b.send_json(json!({"type": "read", "conv": format!("group:{gid}"), "up_to": sent["id"]}))
        .await;
    let page = gateway
        .client
        .request(
            subjects::HISTORY_PAGE,
            page_request(&alice).to_string().into(),
        )
        .await
        .expect("a history worker answers the gateway");
    assert!(page.payload.starts_with(b"{"), "{:?}", page.payload);
    // Message info says Bob read it: his mark went through `rcpt.<p>` to a receipts
    // worker, which wrote `$KV.receipts.…`, which a history worker read.
    let path = format!("/v1/messages/{}/receipts", sent["id"].as_str().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(system().gateways[0], &path, Some(&token(&alice))).await;
        if status == 200 && body.contains("\"read\"") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message info never said read: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Allowed: the live delivery reached the gateway's subscription.
    loop {
        let delivered = next_on(&mut live, "Bob's live item").await;
        let delivered: Value = serde_json::from_slice(&delivered.payload).unwrap();
        if delivered["id"] == msg["id"] {
            break;
        }
    }
    for (subject, subscriber) in &mut eavesdroppers {
        let got = overheard(subscriber).await;
        assert!(
            got.is_empty(),
            "the gateway user overheard {subject}: {got:?}"
        );
    }
}

#[tokio::test]
async fn the_workers_user_cannot_listen_to_live_deliveries_or_typing() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut workers = Nats::connect("workers").await;
    let mut live_all = workers.refused_subscribe("live.>").await;
    // Allowed for the gateway user: the same traffic reaches its subscription (inbox items
    // and typing notices share the one live subject).
    let gateway = Nats::connect("gateway").await;
    let mut live = gateway
        .client
        .subscribe(subjects::live(&bob))
        .await
        .unwrap();
    gateway.client.flush().await.unwrap();

    a.send_text(&bob, "not for workers").await;
    a.send_json(json!({"type": "typing", "conv": dm(&alice, &bob), "state": "start"}))
        .await;
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let got = next_on(&mut live, "Bob's live traffic").await;
        let got: Value = serde_json::from_slice(&got.payload).unwrap();
        kinds.push(got["type"].as_str().unwrap_or_default().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["msg", "typing"]);
    let got = overheard(&mut live_all).await;
    assert!(got.is_empty(), "the workers user overheard live.>: {got:?}");
}

#[tokio::test]
async fn the_workers_user_cannot_post_messages_ask_for_pages_or_forge_typing_receipts_or_deliveries()
 {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    let mut workers = Nats::connect("workers").await;
    let gateway = Nats::connect("gateway").await;
    // Allowed: the workers answer page requests, the gateway listens to Bob's traffic.
    let mut pages = workers
        .client
        .subscribe(subjects::HISTORY_PAGE)
        .await
        .unwrap();
    let mut live = gateway
        .client
        .subscribe(subjects::live(&bob))
        .await
        .unwrap();
    workers.client.flush().await.unwrap();
    gateway.client.flush().await.unwrap();

    let conv = Conversation::direct(&alice, &bob);
    let forged_msg = json!({
        "id": uuid::Uuid::now_v7().to_string(), "conv": conv.to_string(), "from": alice,
        "device": "phone", "ts": natter_fabric::now_millis(),
        "body": {"kind": "text", "text": "forged by workers"},
    });
    workers
        .refused_publish(&subjects::msg(&conv), forged_msg)
        .await;
    workers
        .refused_publish(subjects::HISTORY_PAGE, page_request(&bob))
        .await;
    workers
        .refused_publish(
            &subjects::notice(&bob),
            json!({"type": "typing", "conv": conv.to_string(), "from": alice, "state": "start"}),
        )
        .await;
    let forged_mark = format!("forged-{}", uuid::Uuid::new_v4().simple());
    let partition = subjects::partition_of(&Conversation::Group(forged_mark.clone()));
    workers
        .refused_publish(
            &subjects::rcpt(partition),
            json!({"marks": [{"group": forged_mark, "by": bob, "status": "read", "up_to": "x"}]}),
        )
        .await;
    workers
        .refused_publish(
            &subjects::live_item(&bob),
            inbox_item(&alice, &bob, "forged live item"),
        )
        .await;

    // Nothing was stored in the log; the receipt marks of that partition (other tests'
    // groups share it) do not hold the forged one.
    let admin = admin().await;
    let stored = admin
        .get_stream(streams::MSGS)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&subjects::msg(&conv))
        .await;
    match stored {
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {}
        other => panic!("the workers' message was stored: {other:?}"),
    }
    let marks = admin
        .get_stream(streams::RCPT)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&subjects::rcpt(partition))
        .await;
    if let Ok(marks) = marks {
        let text = String::from_utf8_lossy(&marks.payload);
        assert!(!text.contains(&forged_mark), "forged marks stored: {text}");
    }
    // The gateway's request reaches the workers' subscription; their own did not.
    gateway
        .client
        .publish(
            subjects::HISTORY_PAGE,
            page_request(&alice).to_string().into(),
        )
        .await
        .unwrap();
    loop {
        let request = next_on(&mut pages, "the gateway's page request").await;
        let request: Value = serde_json::from_slice(&request.payload).unwrap();
        assert_ne!(
            request["reader"],
            bob.as_str(),
            "the workers asked for a page"
        );
        if request["reader"] == alice.as_str() {
            break;
        }
    }
    // Allowed: the workers write Bob's inbox; that is the only thing Bob and the
    // gateway's subscriptions get.
    let item = inbox_item(&alice, &bob, "written by workers");
    jetstream::new(workers.client.clone())
        .publish(subjects::inbox(&bob), item.to_string().into())
        .await
        .unwrap()
        .await
        .expect("the workers' inbox write is stored");
    let first = next_on(&mut live, "live item").await;
    let first: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(first["body"]["text"], "written by workers", "{first}");
    let msg = b.wait_for("a message", |f| f["type"] == "msg").await;
    assert_eq!(msg["body"]["text"], "written by workers", "{msg}");
    let more = b.collect_for(QUIET).await;
    assert!(
        more.is_empty(),
        "Bob got forged frames (typing notice, message): {more:?}"
    );
}
