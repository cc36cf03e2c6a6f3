//! Redis down and back: chat goes on while Redis is down (sends are stored and
//! delivered; rate limits fall back to the gateway's own bucket for each user, so a
//! flood is still refused, over HTTP too), and when Redis comes back empty, presence rebuilds from the live sockets
//! within a heartbeat and the shared limits apply again.
//!
//! The gateways of this test binary allow 2 sends a second with bursts of 5; sockets
//! heartbeat every second (TTL 3 s).

use std::time::{Duration, Instant};

use natter_e2e::{
    Client,
    system::{Options, configure, with_redis},
    unique,
};
use serde_json::{Value, json};

/// Sends `n` texts to `to` and returns how many got `sent`; every other answer must be
/// `rate_limited`.
async fn send_many(client: &mut Client, to: &str, n: usize, tag: &str) -> usize {
    let mut sent = 0;
    for i in 0..n {
        let answer = client
            .send_text_with_id(to, &uuid::Uuid::new_v4().to_string(), &format!("{tag} {i}"))
            .await;
        match answer["type"].as_str() {
            Some("sent") => sent += 1,
            _ => assert_eq!(answer["code"], "rate_limited", "{answer}"),
        }
    }
    sent
}

/// Sends `n` texts to `to`, each again after the `retry_after_ms` it was refused with,
/// until all are `sent`; returns how many refusals that took.
async fn send_patiently(client: &mut Client, to: &str, n: usize, tag: &str) -> usize {
    let mut refusals = 0;
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        loop {
            let answer = client
                .send_text_with_id(to, &id, &format!("{tag} {i}"))
                .await;
            if answer["type"] == "sent" {
                break;
            }
            assert_eq!(answer["code"], "rate_limited", "{answer}");
            assert!(refusals < 100, "{answer}");
            refusals += 1;
            let wait = answer["retry_after_ms"].as_u64().expect("retry_after_ms");
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
    refusals
}

/// The `presence` answer to following `user` (retried while not allowed yet).
async fn presence_of(watcher: &mut Client, user: &str) -> Value {
    for attempt in 0..50 {
        let reference = format!("p{attempt}-{}", uuid::Uuid::new_v4().simple());
        watcher
            .send_json(json!({"type": "presence_subscribe", "users": [user], "ref": reference}))
            .await;
        let answer = watcher
            .wait_for("presence or error", |f| {
                (f["type"] == "presence" && f["user"] == user) || f["ref"] == reference.as_str()
            })
            .await;
        if answer["type"] == "presence" {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no presence of {user}");
}

/// How long until `watcher` sees `user` online (asking every 100 ms), if within `patience`.
async fn online_within(watcher: &mut Client, user: &str, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < patience {
        if presence_of(watcher, user).await["online"] == true {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn chat_goes_on_while_redis_is_down_and_presence_rebuilds_when_it_returns() {
    configure(Options {
        send_per_sec: 2.0,
        send_burst: 5.0,
        ..Options::default()
    });
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    a.send_text(&bob, "hello").await;
    assert!(
        online_within(&mut a, &bob, Duration::from_secs(5))
            .await
            .is_some(),
        "bob online"
    );
    // Limits hold while Redis is up.
    tokio::time::sleep(Duration::from_secs(3)).await; // refill
    let limited_before = send_many(&mut a, &bob, 12, "before").await;
    assert!(
        limited_before < 12,
        "the limit applies: {limited_before} of 12 sent"
    );

    with_redis(|redis| redis.kill());
    let down = Instant::now();
    // Chat works: every send is stored and delivered, and the gateway's bucket for alice
    // (the same 2 a second, bursts of 5) still refuses a flood.
    let refused = send_patiently(&mut a, &bob, 12, "during").await;
    assert!(refused > 0, "a flood is limited while Redis is down");
    // The same user's bucket over HTTP (2 tokens an inbox page): no fail-open.
    let token = natter_e2e::client::token(&alice);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let gateway = natter_e2e::system::system().gateways[0];
        statuses.push(
            natter_e2e::system::http_get(gateway, "/v1/inbox", Some(&token))
                .await
                .0,
        );
    }
    assert!(
        statuses.contains(&429) && statuses.iter().all(|s| [200, 429].contains(s)),
        "inbox pages while Redis is down: {statuses:?}"
    );
    for i in 0..12 {
        b.wait_for_text(&format!("during {i}")).await;
    }
    // A device connecting meanwhile works too.
    let mut b_laptop = Client::connect(0, &bob, "laptop", 0).await;
    b_laptop.wait_for_text("during 11").await;
    let outage_chat = down.elapsed();

    with_redis(|redis| redis.restart());
    // Redis came back empty: the next heartbeat re-asserts bob's live sockets.
    let rebuilt = online_within(&mut a, &bob, Duration::from_secs(10))
        .await
        .expect("bob online again after Redis returned");
    // And limits apply again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = send_many(&mut a, &bob, 12, "after").await;
    assert!(after < 12, "the limit applies again: {after} of 12 sent");
    println!(
        "redis outage: 12 sends delivered and a device connected in {outage_chat:?} while down; \
         presence rebuilt {rebuilt:?} after Redis returned (heartbeat every 1 s)"
    );
}
