//! The chat list: a new device connecting with `after=latest` gets no replay of the inbox,
//! and one `conversations` request (or `GET /v1/conversations`) gives it every
//! conversation by recency with its latest message as it is now, the unread count after
//! the user's read marker, and group names.

use std::time::Duration;

use natter_e2e::{
    Client,
    client::token,
    http::{Body, request},
    system, unique,
};
use serde_json::{Value, json};

/// The chat list is written by the tail reader a few milliseconds after each item, read
/// marks by the receipt workers within a second: the test polls this long.
const PATIENCE: Duration = Duration::from_secs(20);

fn summary<'a>(list: &'a Value, conv: &str) -> &'a Value {
    list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conv"] == conv)
        .unwrap_or(&Value::Null)
}

/// Asks for the chat list until `ready` holds for it.
async fn list_until(client: &mut Client, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let list = client.request(json!({"type": "conversations"})).await;
        assert_eq!(list["type"], "conversations", "{list}");
        if ready(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {list}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_new_device_gets_its_chat_list_in_one_request() {
    let (alice, bob, carol, dave, eve) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("dave"),
        unique("eve"),
    );
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut d = Client::connect(1, &dave, "phone", 0).await;
    let mut e = Client::connect(0, &eve, "phone", 0).await;

    // Bob: three messages, alice read the first; then bob fixes the last.
    let b1 = b.send_text(&alice, "b1").await;
    b.send_text(&alice, "b2").await;
    let b3 = b.send_text(&alice, "b3 tpyo").await;
    a.wait_for_text("b3 tpyo").await;
    let dm_bob = b1["conv"].as_str().unwrap().to_owned();
    a.send_json(json!({"type": "read", "conv": dm_bob, "up_to": b1["id"]}))
        .await;
    let edit = json!({"type": "edit", "id": b3["id"], "body": {"kind": "text", "text": "b3 typo"}});
    assert_eq!(b.request(edit).await["type"], "changed");
    // Carol: alice wrote last.
    let hi = a.send_text(&carol, "hi carol").await;
    let dm_carol = hi["conv"].as_str().unwrap().to_owned();
    // A group with two messages, alice read the first.
    let team = d
        .request(json!({"type": "group_create", "name": "team", "members": [alice]}))
        .await;
    let team_conv = format!("group:{}", team["id"].as_str().unwrap());
    let g1 = d.send_to_group(team["id"].as_str().unwrap(), "g1").await;
    d.send_to_group(team["id"].as_str().unwrap(), "g2").await;
    a.wait_for_text("g2").await;
    a.send_json(json!({"type": "read", "conv": team_conv, "up_to": g1["id"]}))
        .await;
    // A group with no message yet, made last.
    let quiet = e
        .request(json!({"type": "group_create", "name": "quiet", "members": [alice]}))
        .await;
    let quiet_conv = format!("group:{}", quiet["id"].as_str().unwrap());
    // The group's `created` event reaches alice's inbox through fanout, a moment after the
    // answer: a device that connects before it is stored gets it live, as new.
    a.wait_for("the quiet group's created event", |f| {
        f["type"] == "group_event" && f["group"] == quiet["id"]
    })
    .await;

    // A new device: nothing replayed, then the whole list in one request.
    let mut tablet = Client::connect_latest(0, &alice, "tablet").await;
    assert_eq!(
        tablet.hello["after"], tablet.hello["newest"],
        "{}",
        tablet.hello
    );
    let replayed = tablet.collect_for(Duration::from_millis(500)).await;
    assert!(
        !replayed.iter().any(|f| f["seq"].is_u64()),
        "after=latest replays nothing: {replayed:?}"
    );
    // Everything listed: the quiet group's creation goes through fanout and the tail
    // reader like the rest, so it may be listed a moment after the others.
    let list = list_until(&mut tablet, |list| {
        summary(list, &team_conv)["unread"] == 1
            && summary(list, &dm_bob)["unread"] == 2
            && !summary(list, &quiet_conv).is_null()
    })
    .await;
    let order: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conv"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [&quiet_conv, &team_conv, &dm_carol, &dm_bob],
        "{list}"
    );
    assert_eq!(list["more"], false);
    let bob_row = summary(&list, &dm_bob);
    assert_eq!(
        bob_row["last"]["body"]["text"], "b3 typo",
        "the latest edit: {bob_row}"
    );
    assert!(bob_row["last"]["edited"].is_u64());
    let carol_row = summary(&list, &dm_carol);
    assert_eq!(
        (carol_row["unread"].as_u64(), &carol_row["last"]["from"]),
        (Some(0), &json!(alice))
    );
    let team_row = summary(&list, &team_conv);
    assert_eq!(
        (team_row["name"].as_str(), &team_row["last"]["body"]["text"]),
        (Some("team"), &json!("g2"))
    );
    let quiet_row = summary(&list, &quiet_conv);
    assert_eq!(quiet_row["name"], "quiet");
    assert!(quiet_row.get("last").is_none(), "{quiet_row}");

    // Pages: two by two, on from the last `at`.
    let first = tablet
        .request(json!({"type": "conversations", "limit": 2}))
        .await;
    assert_eq!(first["conversations"].as_array().unwrap().len(), 2);
    assert_eq!(first["more"], true);
    let at = first["conversations"][1]["at"].clone();
    let second = tablet
        .request(json!({"type": "conversations", "limit": 2, "before": at}))
        .await;
    let rest: Vec<&Value> = second["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["conv"])
        .collect();
    assert_eq!(rest, [&json!(dm_carol), &json!(dm_bob)]);
    assert_eq!(second["more"], false);

    // Over HTTP, the same list.
    let auth = format!("Bearer {}", token(&alice));
    let addr = system::system().gateways[1];
    let got = request(
        addr,
        "GET",
        "/v1/conversations",
        &[("Authorization", &auth)],
        Body::None,
    )
    .await;
    assert_eq!(got.status, 200);
    let over_http: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        over_http["conversations"].as_array().unwrap().len(),
        4,
        "{over_http}"
    );
    let bad = request(
        addr,
        "GET",
        "/v1/conversations?limit=0",
        &[("Authorization", &auth)],
        Body::None,
    )
    .await;
    assert_eq!(bad.status, 400);
    let anonymous = request(addr, "GET", "/v1/conversations", &[], Body::None).await;
    assert_eq!(anonymous.status, 401);

    // Bad frames are refused and the socket goes on.
    let zero = tablet
        .request(json!({"type": "conversations", "limit": 0}))
        .await;
    assert_eq!(zero["code"], "bad_request");
    let cursor = tablet
        .request(json!({"type": "conversations", "before": "a>b"}))
        .await;
    assert_eq!(cursor["code"], "bad_id");
    b.send_text(&alice, "still here").await;
    tablet.wait_for_text("still here").await;
    a.close().await;
    e.close().await;
}

/// A user with 200 conversations and 20,000 inbox items signs in on a new device: one
/// `conversations` request gives the whole list, correct (each conversation once, most
/// recent first, last message, unread count after the reads), checked by the load tool's
/// `chatlist` scenario (which docs/BENCHMARKS.md times on a release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_conversations_and_twenty_thousand_items_list_in_one_request() {
    let report = natter_bench::chatlist::run(&natter_bench::chatlist::Options {
        gateway: system::system().gateways[1].to_string(),
        conversations: 200,
        messages: 100,
        requests: 3,
        secret: Some(system::SECRET.into()),
    })
    .await
    .expect("a complete, correct chat list");
    assert_eq!(report["inbox_items"], 20_000);
    assert_eq!(report["requests"], 3);
}
