//! Gateways no longer cache every group: each user's groups are listed under
//! `member_of.<uid>` in the groups bucket, and a gateway caches only the groups it used
//! lately, up to `limits.cached_group_members` members (8 in this test binary, so every
//! group here is evicted and read again all the time). Membership checks, presence
//! privacy and removal still hold.

use std::{collections::BTreeSet, time::Duration};

use async_nats::jetstream;
use natter_e2e::{
    Client,
    system::{self, Options, configure},
    unique,
};
use serde_json::{Value, json};

fn start() {
    configure(Options {
        cached_group_members: 8,
        ..Options::default()
    });
}

async fn create(client: &mut Client, name: &str, members: &[&String]) -> String {
    let answer = client
        .request(json!({"type": "group_create", "name": name, "members": members}))
        .await;
    assert_eq!(answer["type"], "group", "group_create refused: {answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// The groups `user`'s index lists, read from the bucket as the workers would.
async fn index_of(user: &str) -> BTreeSet<String> {
    let js = jetstream::new(system::nats_as("workers", "group-index-test").await);
    let kv = js.get_key_value("groups").await.unwrap();
    match kv.get(format!("member_of.{user}")).await.unwrap() {
        Some(value) => {
            let entry: Value = serde_json::from_slice(&value).unwrap();
            serde_json::from_value(entry["groups"].clone()).unwrap()
        }
        None => BTreeSet::new(),
    }
}

/// Waits for `user`'s index to list exactly `groups`.
async fn index_becomes(user: &str, groups: &[&String]) {
    let wanted: BTreeSet<String> = groups.iter().map(|g| g.to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = index_of(user).await;
        if listed == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}: index {listed:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The answer to a subscription to `user`'s presence: their `presence` (it carries no
/// `ref`) or an error.
async fn follow(client: &mut Client, user: &str) -> Value {
    client
        .send_json(json!({"type": "presence_subscribe", "users": [user], "ref": "follow"}))
        .await;
    client
        .wait_for("presence or refusal", |f| {
            (f["type"] == "presence" && f["user"] == user) || f["ref"] == "follow"
        })
        .await
}

#[tokio::test]
async fn each_user_s_groups_are_indexed_and_a_small_cache_changes_no_answer() {
    start();
    let (amy, bob, cat, dan) = (unique("amy"), unique("bob"), unique("cat"), unique("dan"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &cat, "phone", 0).await;

    // Two groups of 3 and 2: together over the gateway's 8 cached members with the
    // groups the other tests of this binary use.
    let flat = create(&mut a, "Flat", &[&bob, &cat]).await;
    let pair = create(&mut a, "Pair", &[&bob]).await;
    index_becomes(&amy, &[&flat, &pair]).await;
    index_becomes(&bob, &[&flat, &pair]).await;
    index_becomes(&cat, &[&flat]).await;
    index_becomes(&dan, &[]).await;

    // Presence: members of a shared group may follow each other; dan may not.
    let seen = follow(&mut c, &bob).await;
    assert_eq!(seen["type"], "presence", "{seen}");
    let mut d = Client::connect(1, &dan, "phone", 0).await;
    let refused = follow(&mut d, &amy).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // Many groups through one gateway: each message still reaches its members.
    let mut more = Vec::new();
    for i in 0..6 {
        more.push(create(&mut b, &format!("g{i}"), &[&cat]).await);
    }
    for (i, gid) in more.iter().enumerate() {
        b.send_to_group(gid, &format!("to g{i}")).await;
    }
    for i in 0..6 {
        c.wait_for_text(&format!("to g{i}")).await;
    }

    // Removal: cat leaves the index, loses the group and (sharing no other group with
    // amy) amy's presence.
    let removed = a
        .request(json!({"type": "group_remove", "group": flat, "members": [cat]}))
        .await;
    assert_eq!(removed["members"], json!([amy, bob]), "{removed}");
    index_becomes(&cat, &more.iter().collect::<Vec<_>>()).await;
    let refused = c
        .send_to_with_id(&format!("group:{flat}"), "late", "hi")
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = follow(&mut c, &amy).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // An add by someone who may not: nothing is listed for the would-be member.
    let refused = c
        .request(json!({"type": "group_add", "group": pair, "members": [dan]}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    index_becomes(&dan, &[]).await;

    // Leaving: bob's index drops the group, amy's keeps hers.
    let left = b
        .request(json!({"type": "group_leave", "group": pair}))
        .await;
    assert_eq!(left["type"], "group", "{left}");
    index_becomes(&bob, &more.iter().chain([&flat]).collect::<Vec<_>>()).await;
    index_becomes(&amy, &[&flat, &pair]).await;
    a.send_to_group(&pair, "just amy").await;
    let at_bob = b.messages_within(Duration::from_millis(500)).await;
    assert!(
        !at_bob.iter().any(|m| m["body"]["text"] == "just amy"),
        "{at_bob:?}"
    );
}
