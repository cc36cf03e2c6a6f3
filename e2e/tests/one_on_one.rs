//! One-on-one chat end to end: real 3-node NATS cluster, two gateways, two sets of workers.
//! Every test uses fresh user ids, so tests share the system without seeing each other.

use std::time::Duration;

use natter_e2e::{Client, client::token, system, system::http_get, unique};
use natter_schemas::{Conversation, ids};
use serde_json::{Value, json};

fn is_receipt(status: &'static str, id: Value) -> impl Fn(&Value) -> bool {
    move |f| f["type"] == "receipt" && f["status"] == status && f["id"] == id
}

#[tokio::test]
async fn online_chat_gets_sent_delivered_and_read_ticks() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(0, &bob, "phone", 0).await;

    let sent = a.send_text(&bob, "hello bob").await;
    let id = sent["id"].clone();
    assert_eq!(
        sent["conv"],
        Value::from(if alice < bob {
            format!("dm:{alice}:{bob}")
        } else {
            format!("dm:{bob}:{alice}")
        })
    );
    assert!(sent["ts"].as_u64().unwrap() > 0);

    let msg = b.wait_for_text("hello bob").await;
    assert_eq!(msg["from"], alice.as_str());
    assert_eq!(msg["id"], id);
    assert_eq!(msg["conv"], sent["conv"]);

    b.ack(msg["seq"].as_u64().unwrap()).await;
    let delivered = a
        .wait_for("delivered receipt", is_receipt("delivered", id.clone()))
        .await;
    assert_eq!(delivered["by"], bob.as_str());
    assert_eq!(delivered["conv"], sent["conv"]);

    b.send_json(json!({"type": "read", "conv": sent["conv"], "up_to": id}))
        .await;
    let read = a
        .wait_for("read receipt", is_receipt("read", id.clone()))
        .await;
    assert_eq!(read["by"], bob.as_str());
}

#[tokio::test]
async fn an_offline_user_gets_what_they_missed_when_they_come_back() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    for i in 0..5 {
        a.send_text(&bob, &format!("while you were away {i}")).await;
    }
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    for i in 0..5 {
        b.wait_for_text(&format!("while you were away {i}")).await;
    }
    assert_eq!(b.seqs.len(), 5, "exactly the five messages: {:?}", b.seqs);
}

#[tokio::test]
async fn resuming_with_after_has_no_gap_and_no_duplicate_on_either_gateway() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    for i in 0..3 {
        a.send_text(&bob, &format!("first {i}")).await;
        b.wait_for_text(&format!("first {i}")).await;
    }
    let cursor = b.last_seq;
    b.ack(cursor).await;
    b.close().await;

    for i in 0..4 {
        a.send_text(&bob, &format!("second {i}")).await;
    }
    // Back on the other gateway, with the cursor the device stored; more messages arrive
    // while it catches up.
    let mut b = Client::connect(1, &bob, "phone", cursor).await;
    for i in 0..3 {
        a.send_text(&bob, &format!("third {i}")).await;
    }
    let mut texts = Vec::new();
    while texts.len() < 7 {
        let frame = b.wait_for("message", |f| f["type"] == "msg").await;
        texts.push(frame["body"]["text"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (0..4)
        .map(|i| format!("second {i}"))
        .chain((0..3).map(|i| format!("third {i}")))
        .collect();
    assert_eq!(texts, want, "in order, none missing, none repeated");
    assert!(b.seqs.iter().all(|s| *s > cursor));
    // Nothing else trickles in later (a duplicate would fail the seq check in `receive`).
    let extra: Vec<Value> = b.messages_within(Duration::from_millis(2500)).await;
    assert!(extra.is_empty(), "unexpected extra messages: {extra:?}");
}

#[tokio::test]
async fn every_device_of_the_recipient_and_the_senders_other_device_see_the_message() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut alice_phone = Client::connect(0, &alice, "phone", 0).await;
    let mut alice_laptop = Client::connect(1, &alice, "laptop", 0).await;
    let mut bob_phone = Client::connect(0, &bob, "phone", 0).await;
    let mut bob_laptop = Client::connect(1, &bob, "laptop", 0).await;

    let sent = alice_phone.send_text(&bob, "to all your devices").await;
    for device in [&mut bob_phone, &mut bob_laptop, &mut alice_laptop] {
        let msg = device.wait_for_text("to all your devices").await;
        assert_eq!(msg["id"], sent["id"]);
        assert_eq!(msg["from"], alice.as_str());
    }
    // The sending device gets its own copy too (same inbox); it knows it by id.
    let own = alice_phone.wait_for_text("to all your devices").await;
    assert_eq!(own["id"], sent["id"]);
}

#[tokio::test]
async fn resending_a_client_id_returns_the_first_answer_and_delivers_once() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let client_id = uuid::Uuid::new_v4().to_string();
    let first = a.send_text_with_id(&bob, &client_id, "only once").await;
    let again = a.send_text_with_id(&bob, &client_id, "only once").await;
    assert_eq!(first["type"], "sent");
    assert_eq!(again["type"], "sent");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["ts"], again["ts"]);

    let mut b = Client::connect(1, &bob, "phone", 0).await;
    b.wait_for_text("only once").await;
    let more: Vec<Value> = b.messages_within(Duration::from_secs(2)).await;
    assert!(more.is_empty(), "delivered twice: {more:?}");

    // Another user's identical client id is a different message.
    let carol = unique("carol");
    let mut c = Client::connect(0, &carol, "phone", 0).await;
    let theirs = c
        .send_text_with_id(&bob, &client_id, "same id, other sender")
        .await;
    assert_eq!(theirs["type"], "sent");
    assert_ne!(theirs["id"], first["id"]);
    b.wait_for_text("same id, other sender").await;
}

#[tokio::test]
async fn a_spoofed_from_is_ignored() {
    let (alice, bob, mallory) = (unique("alice"), unique("bob"), unique("mallory"));
    let mut m = Client::connect(0, &mallory, "phone", 0).await;
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    m.send_json(json!({
        "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": format!("user:{bob}"),
        "from": alice, "body": {"kind": "text", "text": "it is me, alice"}, "ref": "x",
    }))
    .await;
    let sent = m.wait_for("sent", |f| f["ref"] == "x").await;
    assert_eq!(sent["type"], "sent");
    let msg = b.wait_for_text("it is me, alice").await;
    assert_eq!(msg["from"], mallory.as_str());
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_socket_keeps_working() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "bad_frame"),
        (r#"{"type":"teleport","ref":"t"}"#, "bad_frame"),
        (r#"{"type":"send","id":"c1","ref":"t"}"#, "bad_frame"),
        (
            r#"{"type":"send","id":"c1","to":"user:bob.>","body":{"kind":"text","text":"x"},"ref":"t"}"#,
            "bad_id",
        ),
        (
            r#"{"type":"send","id":"c 1","to":"user:bob","body":{"kind":"text","text":"x"},"ref":"t"}"#,
            "bad_id",
        ),
        (
            r#"{"type":"send","id":"c1","to":"bob","body":{"kind":"text","text":"x"},"ref":"t"}"#,
            "bad_id",
        ),
        (
            r#"{"type":"send","id":"c1","to":"user:bob","body":{"kind":"text","text":"  "},"ref":"t"}"#,
            "bad_request",
        ),
        (
            r#"{"type":"read","conv":"dm:x:y","up_to":"m","ref":"t"}"#,
            "forbidden",
        ),
        (
            r#"{"type":"read","conv":"dm:y:x","up_to":"m","ref":"t"}"#,
            "bad_id",
        ),
        (r#"{"type":"ack","seq":999999999,"ref":"t"}"#, "bad_request"),
    ];
    for (frame, code) in cases {
        a.send_raw(frame).await;
        let error = a.wait_for("error", |f| f["type"] == "error").await;
        assert_eq!(error["code"], *code, "{frame} → {error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    // A read mark must name a message id no later than now: a watermark is kept for good.
    let conv = Conversation::direct(&alice, &bob).to_string();
    let future = format!(
        "{}-7000-8000-000000000000",
        ids::id_prefix_at(u64::MAX >> 20)
    );
    for up_to in ["m", "zzzz-future-0", future.as_str()] {
        a.send_json(json!({"type": "read", "conv": conv, "up_to": up_to, "ref": "r"}))
            .await;
        let error = a.wait_for("error", |f| f["type"] == "error").await;
        assert_eq!(error["code"], "bad_request", "{up_to} → {error}");
    }
    a.send_json(json!({"type": "ping", "ref": "p"})).await;
    let pong = a.wait_for("pong", |f| f["type"] == "pong").await;
    assert_eq!(pong["ref"], "p");
    // And it still chats.
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    a.send_text(&bob, "still here").await;
    b.wait_for_text("still here").await;
}

#[tokio::test]
async fn sender_and_recipient_on_different_gateways_chat_both_ways() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    for i in 0..10 {
        a.send_text(&bob, &format!("a→b {i}")).await;
        b.send_text(&alice, &format!("b→a {i}")).await;
    }
    for i in 0..10 {
        b.wait_for_text(&format!("a→b {i}")).await;
        a.wait_for_text(&format!("b→a {i}")).await;
    }
}

#[tokio::test]
async fn the_inbox_over_http_matches_the_socket() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    for i in 0..3 {
        a.send_text(&bob, &format!("http {i}")).await;
    }
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut over_socket = Vec::new();
    for i in 0..3 {
        over_socket.push(b.wait_for_text(&format!("http {i}")).await);
    }
    let gateway = system().gateways[0];
    let (status, body) = http_get(gateway, "/v1/inbox?after=0&limit=2", Some(&token(&bob))).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"].as_array().unwrap(), &over_socket[..2]);
    let next = page["next"].as_u64().unwrap();
    let (_, body) = http_get(
        gateway,
        &format!("/v1/inbox?after={next}"),
        Some(&token(&bob)),
    )
    .await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"].as_array().unwrap(), &over_socket[2..]);

    assert_eq!(http_get(gateway, "/v1/inbox", None).await.0, 401);
    assert_eq!(http_get(gateway, "/v1/inbox", Some("garbage")).await.0, 401);
    assert_eq!(
        http_get(gateway, "/v1/inbox?limit=0", Some(&token(&bob)))
            .await
            .0,
        400
    );
    assert_eq!(http_get(gateway, "/healthz", None).await.0, 200);
}

#[tokio::test]
async fn a_socket_without_a_valid_token_is_refused_with_401() {
    let gateway = system().gateways[0];
    let expired = {
        let claims = natter_gateway::auth::Claims {
            sub: "eve".into(),
            exp: 1,
            device: None,
            iss: None,
            aud: None,
        };
        expired_token(&claims)
    };
    for query in [
        String::new(),
        "?token=nope".to_owned(),
        format!("?token={expired}"),
        format!(
            "?token={}",
            natter_gateway::auth::mint_hs256(b"wrong", "eve", None, 60, None, None).unwrap()
        ),
    ] {
        let url = format!("ws://{gateway}/v1/ws{query}");
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401)
            }
            other => panic!("{query}: expected 401, got {:?}", other.map(|_| ())),
        }
    }
    let with_device = natter_gateway::auth::mint_hs256(
        natter_e2e::system::SECRET.as_bytes(),
        "eve",
        Some("phone"),
        60,
        None,
        None,
    )
    .unwrap();
    let url = format!("ws://{gateway}/v1/ws?token={with_device}&device=laptop");
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!(
            "a device other than the token's: expected 400, got {:?}",
            other.map(|_| ())
        ),
    }
    let url = format!(
        "ws://{gateway}/v1/ws?token={}&device=bad.device",
        token("eve")
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
}

/// An HS256 token with the test secret that expired long ago.
fn expired_token(claims: &natter_gateway::auth::Claims) -> String {
    natter_gateway::auth::sign_hs256(natter_e2e::system::SECRET.as_bytes(), claims).unwrap()
}

#[tokio::test]
async fn a_resume_point_beyond_the_inbox_still_gets_new_messages() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    a.send_text(&bob, "before").await;
    // A device whose stored cursor is from an older, larger inbox (or is garbage).
    for after in [u64::MAX, 1 << 40] {
        let mut b = Client::connect(1, &bob, "phone", after).await;
        b.last_seq = 0; // the gateway moves the cursor back to the inbox's newest item
        a.send_text(&bob, &format!("after {after}")).await;
        let msg = b.wait_for_text(&format!("after {after}")).await;
        assert_eq!(msg["from"], alice.as_str());
        b.close().await;
    }
    let (status, _) = http_get(
        system().gateways[0],
        &format!("/v1/inbox?after={}", u64::MAX),
        Some(&token(&bob)),
    )
    .await;
    assert_eq!(status, 200);
}

/// The sum of every sample of `name` (all label sets when `name` has none) in an
/// exposition `text`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
                || name.contains('{') && line.starts_with(name)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every process counts this test's own traffic. The test system's delivery probe sends
/// two messages a second through the same processes, so each counter must grow by at
/// least what this test alone did (60 messages), looked at within seconds, in which the
/// probe adds far less. (Other tests of this binary may add more; they cannot make a
/// counter that misses this test's traffic grow less.)
#[tokio::test]
async fn every_process_exports_prometheus_metrics() {
    const MESSAGES: usize = 60;
    let scrape = || async {
        let (status, text) = http_get(system().metrics, "/metrics", None).await;
        assert_eq!(status, 200);
        text
    };
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    let before = scrape().await;
    let mut last = Value::Null;
    for i in 0..MESSAGES {
        last = a.send_text(&bob, &format!("measured {i}")).await;
    }
    for i in 0..MESSAGES {
        let msg = b.wait_for_text(&format!("measured {i}")).await;
        b.ack(msg["seq"].as_u64().unwrap()).await;
    }
    a.wait_for(
        "delivered receipt",
        is_receipt("delivered", last["id"].clone()),
    )
    .await;

    let short = |after: &str, wanted: &[(&str, usize)]| -> Vec<String> {
        wanted
            .iter()
            .map(|(name, at_least)| (name, metric(after, name) - metric(&before, name), at_least))
            .filter(|(_, grew, at_least)| *grew < **at_least as f64)
            .map(|(name, grew, at_least)| format!("{name} grew by {grew}, not {at_least}"))
            .collect()
    };
    // Counted before the last delivered receipt reached alice: looked at once, at once.
    let after = scrape().await;
    let counted_in_line = [
        ("natter_gateway_frames_total{type=\"send\"}", MESSAGES),
        ("natter_gateway_send_to_sent_seconds_count", MESSAGES),
        ("natter_gateway_send_to_deliver_seconds_count", MESSAGES),
    ];
    let missing = short(&after, &counted_in_line);
    assert!(missing.is_empty(), "{missing:?}");
    // Counted a moment later: waited for, but only for seconds, in which the probe adds
    // far less than this test did.
    let counted_after = [
        // Bob's phone gets each message; Alice's phone its own copy of each.
        ("natter_gateway_items_delivered_total", 2 * MESSAGES),
        // Two inbox items per message (bob's and alice's) read by the tail reader.
        ("natter_tail_items_total", 2 * MESSAGES),
        ("natter_history_messages_total", MESSAGES),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (after, short) = loop {
        let after = scrape().await;
        let missing = short(&after, &counted_after);
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break (after, missing);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(short.is_empty(), "{short:?}");
    assert!(
        metric(
            &after,
            "natter_gateway_receipts_total{status=\"delivered\"}"
        ) >= 1.0
    );
    assert!(metric(&after, "natter_gateway_sockets") >= 2.0, "{after}");
    assert!(after.contains("natter_gateway_send_to_sent_seconds_bucket{le=\"0.005\"}"));
    assert!(!after.contains(&alice), "no user ids in labels");
}

/// Connects to the test cluster as one of `nats/accounts.conf`'s users.
async fn nats_as(user: &str) -> async_nats::Client {
    natter_e2e::system::nats_as(user, "e2e-permissions").await
}

#[tokio::test]
async fn each_nats_user_is_refused_what_its_process_does_not_need() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;

    // The gateway user cannot delete a stream nor write receipt state.
    let mut gateway = async_nats::jetstream::new(nats_as("gateway").await);
    gateway.set_timeout(Duration::from_secs(2));
    assert!(
        gateway.delete_stream("INBOX").await.is_err(),
        "gateway deleted INBOX"
    );
    let forged = gateway.publish("$KV.receipts.g.x", "{}".into()).await;
    let stored = match forged {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!stored, "gateway wrote receipt state");

    // The workers user cannot listen to live deliveries.
    let workers = nats_as("workers").await;
    let mut eavesdrop = workers.subscribe(format!("live.{bob}.*")).await.unwrap();
    a.send_text(&bob, "not for workers' ears").await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    b.wait_for_text("not for workers' ears").await; // stored and delivered
    let overheard = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::StreamExt::next(&mut eavesdrop),
    )
    .await;
    assert!(
        !matches!(overheard, Ok(Some(_))),
        "the workers user received a live item"
    );

    // Nor change a group.
    let mut js = async_nats::jetstream::new(workers.clone());
    js.set_timeout(Duration::from_secs(2));
    let forged = js.publish("$KV.groups.g", "{}".into()).await;
    let stored = match forged {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!stored, "workers wrote a group");

    // INBOX is still there and still delivers.
    a.send_text(&bob, "still delivered").await;
    b.wait_for_text("still delivered").await;
}
