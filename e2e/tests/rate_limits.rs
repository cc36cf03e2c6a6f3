//! Per-user limits: a user flooding sends (or any other frame that writes or fans out)
//! gets `rate_limited` errors with a `retry_after_ms` once their burst is spent, keeps
//! their connection, and can go on after waiting; nobody else is slowed, and nothing
//! refused is delivered. Creating groups also has a daily cap.
//!
//! The gateways of this test binary allow 5 tokens a second with bursts of 10 (a
//! one-on-one send or a `typing` costs 1), and 2 new groups a day.

use std::time::Duration;

use natter_e2e::{
    Client,
    system::{Options, configure},
    unique,
};
use serde_json::json;

fn setup() {
    configure(Options {
        send_per_sec: 5.0,
        send_burst: 10.0,
        groups_per_day: 2,
        ..Options::default()
    });
}

#[tokio::test]
async fn a_flood_is_refused_after_the_burst_and_recovers_without_slowing_others() {
    setup();
    let (spammer, bob, carol) = (unique("spammer"), unique("bob"), unique("carol"));
    let mut s = Client::connect(0, &spammer, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &carol, "phone", 0).await;

    for i in 0..40 {
        s.send_json(json!({
            "type": "send", "id": format!("flood-{i}"), "to": format!("user:{bob}"),
            "body": {"kind": "text", "text": format!("flood {i}")}, "ref": format!("f{i}"),
        }))
        .await;
    }
    // Meanwhile carol, another user, sends normally.
    c.send_text(&bob, "from carol").await;

    let mut sent = Vec::new();
    let mut limited = Vec::new();
    let mut retry_after = 0;
    for i in 0..40 {
        let reference = format!("f{i}");
        let answer = s
            .wait_for("flood answer", |f| f["ref"] == reference.as_str())
            .await;
        match answer["type"].as_str() {
            Some("sent") => sent.push(i),
            _ => {
                assert_eq!(answer["code"], "rate_limited", "{answer}");
                let wait = answer["retry_after_ms"].as_u64().expect("retry_after_ms");
                assert!((1..=1_000).contains(&wait), "{answer}");
                retry_after = wait;
                limited.push(i);
            }
        }
    }
    // The burst of 10 and what refilled meanwhile, less up to 3 tokens the socket may
    // have leased and not spent yet (the gateway takes 4 at a time).
    assert!(
        (7..=16).contains(&sent.len()),
        "the burst of 10 (and what refilled meanwhile) got through: {sent:?}"
    );
    assert_eq!(sent.len() + limited.len(), 40);

    // Bob gets carol's message and exactly the flood messages that were accepted.
    b.wait_for_text("from carol").await;
    let mut texts: Vec<String> = Vec::new();
    for _ in 0..20 {
        for m in b.messages_within(Duration::from_millis(250)).await {
            texts.push(m["body"]["text"].as_str().unwrap().to_owned());
        }
        if texts.len() >= sent.len() {
            break;
        }
    }
    let expected: Vec<String> = sent.iter().map(|i| format!("flood {i}")).collect();
    assert_eq!(texts, expected, "only accepted sends are delivered");

    // The socket stays open, and after the wait it was given a send goes through again.
    assert_eq!(s.request(json!({"type": "ping"})).await["type"], "pong");
    tokio::time::sleep(Duration::from_millis(retry_after)).await;
    s.send_text(&bob, "patient again").await;
}

/// `typing` used to be free: a flood of it reached the other side in full. Now it spends
/// the same bucket as sends, so a send right after the flood is refused too.
#[tokio::test]
async fn every_costly_frame_spends_the_same_bucket_and_groups_have_a_daily_cap() {
    setup();
    let (spammer, bob, carol) = (unique("spammer"), unique("bob"), unique("carol"));
    let mut s = Client::connect(0, &spammer, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &carol, "phone", 0).await;
    let conv = if spammer < bob {
        format!("dm:{spammer}:{bob}")
    } else {
        format!("dm:{bob}:{spammer}")
    };
    for i in 0..30 {
        s.send_json(json!({
            "type": "typing", "conv": conv, "state": "start", "ref": format!("t{i}"),
        }))
        .await;
    }
    s.send_json(json!({
        "type": "send", "id": "after-typing", "to": format!("user:{bob}"),
        "body": {"kind": "text", "text": "one more"}, "ref": "after",
    }))
    .await;
    let answer = s
        .wait_for("the send's answer", |f| f["ref"] == "after")
        .await;
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    let refused = s
        .collect_for(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|f| f["code"] == "rate_limited")
        .count();
    assert!(refused >= 12, "only {refused} of 30 typing frames refused");
    // Carol is not slowed; bob got at most the burst of typing notices.
    c.send_text(&bob, "from carol").await;
    b.wait_for_text("from carol").await;
    let notices = b
        .collect_for(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|f| f["type"] == "typing")
        .count();
    assert!(notices <= 18, "{notices} typing notices got through");

    // Two groups a day: the third is refused until tomorrow, with its wait.
    let mut created = 0;
    for _ in 0..20 {
        let answer = s
            .request(json!({"type": "group_create", "name": "g", "members": [bob]}))
            .await;
        if answer["type"] == "group" {
            created += 1;
            continue;
        }
        assert_eq!(answer["code"], "rate_limited", "{answer}");
        let wait = answer["retry_after_ms"].as_u64().expect("retry_after_ms");
        if wait > 3_600_000 {
            break; // the daily cap, not the token bucket
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    assert_eq!(created, 2, "groups created before the daily cap");
}

/// A group message costs by the group's size (1 + 1 per 64 members): in a 640-member
/// group one message takes more than a full bucket (11 of 10 tokens), so the next one is
/// refused until the bucket has refilled, where ten one-on-one sends would have passed.
#[tokio::test]
async fn a_group_message_costs_by_the_group_s_size() {
    setup();
    let owner = unique("owner");
    let members: Vec<String> = (1..640).map(|i| unique(&format!("m{i}"))).collect();
    let mut o = Client::connect(0, &owner, "phone", 0).await;
    let created = o
        .request(json!({"type": "group_create", "name": "big", "members": members}))
        .await;
    assert_eq!(created["type"], "group", "{created}");
    let to = format!("group:{}", created["id"].as_str().unwrap());
    // A full bucket again (creating it took one): 10 tokens at 5 a second.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let send = |n: u32| {
        json!({
            "type": "send", "id": format!("big-{n}"), "to": to,
            "body": {"kind": "text", "text": "to everyone"}, "ref": format!("big-{n}"),
        })
    };
    let first = o.request(send(1)).await;
    assert_eq!(first["type"], "sent", "{first}");
    let second = o.request(send(2)).await;
    assert_eq!(second["code"], "rate_limited", "{second}");
    let wait = second["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(wait >= 1_000, "a bucket's worth to wait for, not {wait} ms");

    // A reaction there is fanned out like a message and costs the same, charged once
    // the message's group is known: more than a full bucket again. (Once history has the
    // message: a change to one it has not stored yet waits for it, while the bucket fills.)
    let conv = to.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = o.request(json!({"type": "history", "conv": conv})).await;
        if page["messages"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in history: {page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let react = json!({"type": "react", "id": first["id"], "emoji": "👍"});
    let refused = o.request(react).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let wait = refused["retry_after_ms"].as_u64().unwrap();
    assert!(
        wait >= 500,
        "a one-token frame would wait at most 200 ms, not {wait}"
    );
}
