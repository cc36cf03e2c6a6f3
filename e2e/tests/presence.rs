//! Presence: contacts see each other come online and go offline with a last-seen time;
//! only people who share a conversation may follow someone; a gateway killed by PID
//! leaves its users offline after the presence TTL, and their followers are told.
//!
//! The shared system's sockets live 3 s without a heartbeat (production: 30 s) and
//! gateways sweep for expired users every 250 ms.

use std::time::{Duration, Instant};

use natter_e2e::{
    Client,
    child::{self, TestProcess},
    system::{self, system},
    unique,
};
use serde_json::{Value, json};

const URLS_VAR: &str = "NATTER_E2E_PRESENCE_URLS";
const REDIS_VAR: &str = "NATTER_E2E_PRESENCE_REDIS";

/// A gateway with presence in the shared Redis, until killed, when started by a test.
#[test]
#[ignore = "a child process of the presence tests, not a test"]
fn presence_gateway_process() {
    let Ok(redis) = std::env::var(REDIS_VAR) else {
        return;
    };
    child::gateway_process(URLS_VAR, "presence-gateway", |config| {
        config.redis.url = redis;
        config.presence.ttl_ms = 3_000;
        config.presence.sweep_every_ms = 250;
    });
}

fn is_presence(user: &str, online: bool) -> impl Fn(&Value) -> bool {
    let user = user.to_owned();
    move |f| f["type"] == "presence" && f["user"] == user.as_str() && f["online"] == online
}

/// A refusal of a subscription to `users`.
async fn refused(watcher: &mut Client, users: Value) -> Value {
    let answer = watcher
        .request(json!({"type": "presence_subscribe", "users": users}))
        .await;
    assert_eq!(answer["type"], "error", "{answer}");
    answer
}

#[tokio::test]
async fn a_contact_sees_online_then_offline_with_last_seen() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    a.send_text(&bob, "are you there?").await;

    let first = a.follow(&bob).await;
    assert_eq!(first["online"], false, "{first}");
    assert!(first.get("last_seen").is_none(), "never seen: {first}");

    let connected = Instant::now();
    let b = Client::connect(1, &bob, "phone", 0).await;
    a.wait_for("bob online", is_presence(&bob, true)).await;
    let online_after = connected.elapsed();

    let closed_at = natter_fabric::now_millis();
    let closed = Instant::now();
    b.close().await;
    let offline = a.wait_for("bob offline", is_presence(&bob, false)).await;
    let offline_after = closed.elapsed();
    let seen = offline["last_seen"]
        .as_u64()
        .expect("last_seen on going offline");
    assert!(
        seen + 2_000 >= closed_at && seen <= natter_fabric::now_millis(),
        "last seen {seen} vs closed at {closed_at}"
    );
    // Asking again gives the same state.
    let again = a.follow(&bob).await;
    assert_eq!(
        (again["online"].clone(), again["last_seen"].as_u64()),
        (json!(false), Some(seen))
    );
    println!(
        "presence propagation: connect → follower told online {online_after:?}; \
         close → follower told offline {offline_after:?}"
    );
}

#[tokio::test]
async fn every_device_must_go_before_a_user_is_offline() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    a.send_text(&bob, "hello").await;
    let phone = Client::connect(0, &bob, "phone", 0).await;
    let laptop = Client::connect(1, &bob, "laptop", 0).await;
    assert_eq!(a.follow(&bob).await["online"], true);
    phone.close().await;
    let meanwhile = a.collect_for(Duration::from_millis(800)).await;
    assert!(
        !meanwhile.iter().any(is_presence(&bob, false)),
        "bob's laptop is still connected: {meanwhile:?}"
    );
    laptop.close().await;
    a.wait_for("bob offline", is_presence(&bob, false)).await;
}

#[tokio::test]
async fn only_people_who_share_a_conversation_may_follow() {
    let (alice, carol, dave) = (unique("alice"), unique("carol"), unique("dave"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    // Carol never talked with alice: her presence is private.
    let private = refused(&mut a, json!([carol])).await;
    assert_eq!(private["code"], "forbidden", "{private}");
    let later = a.collect_for(Duration::from_millis(300)).await;
    assert!(
        !later.iter().any(|f| f["type"] == "presence"),
        "no presence of carol: {later:?}"
    );
    // Dave is in a group with alice: allowed.
    let group = a
        .request(json!({"type": "group_create", "name": "pals", "members": [dave]}))
        .await;
    assert_eq!(group["type"], "group", "{group}");
    let state = a.follow(&dave).await;
    assert_eq!(state["user"], dave.as_str());
    // Bad requests are refused and the socket goes on.
    let bad = refused(&mut a, json!(["no.dots"])).await;
    assert_eq!(bad["code"], "bad_id", "{bad}");
    let many: Vec<String> = (0..257).map(|i| format!("u{i}")).collect();
    let too_many = refused(&mut a, json!(many)).await;
    assert_eq!(too_many["code"], "bad_request", "{too_many}");
    let pong = a.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn a_killed_gateway_leaves_its_users_offline_after_the_ttl() {
    let sys = system();
    let (mut doomed, addr) = {
        let env = [
            (URLS_VAR, sys.nats_urls.as_str()),
            (REDIS_VAR, sys.redis_url.as_str()),
        ];
        let (process, addr) =
            TestProcess::start_announcing("presence_gateway_process", &env, "listening ");
        (process, addr.parse::<std::net::SocketAddr>().unwrap())
    };
    system::wait_healthy(addr).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    a.send_text(&bob, "hi").await;
    let _b = Client::connect_to(addr, &bob, "phone", 0).await;
    let mut online = a.follow(&bob).await;
    for _ in 0..20 {
        if online["online"] == true {
            break;
        }
        online = a.wait_for("bob online", is_presence(&bob, true)).await;
    }
    assert_eq!(online["online"], true, "{online}");

    doomed.kill();
    let killed = Instant::now();
    let offline = a.wait_for("bob offline", is_presence(&bob, false)).await;
    let took = killed.elapsed();
    assert!(offline["last_seen"].as_u64().is_some(), "{offline}");
    assert!(
        took >= Duration::from_millis(500),
        "offline before the TTL could pass ({took:?}): nobody could have known"
    );
    let state = a.follow(&bob).await;
    assert_eq!(state["online"], false, "{state}");
    println!("gateway killed: its user shown offline to followers after {took:?} (TTL 3 s)");
}
