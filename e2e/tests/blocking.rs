//! Blocking, end to end on the shared system (two gateways): a blocked sender's messages
//! get `sent` and never reach the blocker, live, on resume or in history; no typing,
//! presence, read receipts or group adds cross between them; groups they share still
//! work; unblocking lets new messages through but never the withheld ones.

use std::time::Duration;

use natter_e2e::{Client, unique};
use serde_json::{Value, json};

/// Long enough for anything sent to have arrived.
const QUIET: Duration = Duration::from_secs(2);

async fn blocked_list(client: &mut Client, frame: Value) -> Value {
    let answer = client.request(frame).await;
    assert_eq!(answer["type"], "blocked", "{answer}");
    answer["users"].clone()
}

fn texts(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "msg")
        .filter_map(|f| f["body"]["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_blocked_sender_gets_sent_and_reaches_nothing_of_the_blocker() {
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    // Alice sends through the gateway bob blocks her on: it applies the block before
    // answering. (Another gateway sees it when its watch of the lists delivers it,
    // milliseconds later; docs/PROTOCOL.md.)
    let mut a = Client::connect(1, &alice, "phone", 0).await;
    let mut a_tablet = Client::connect(0, &alice, "tablet", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(1, &carol, "phone", 0).await;
    let before = a.send_text(&bob, "before").await;
    b.wait_for_text("before").await;

    assert_eq!(
        blocked_list(&mut b, json!({"type": "block", "user": alice})).await,
        json!([alice])
    );
    assert_eq!(
        blocked_list(&mut b, json!({"type": "blocks"})).await,
        json!([alice])
    );

    // Five sends: each `sent`, none reaching any of bob's devices, live or on resume.
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(a.send_text(&bob, &format!("blocked {i}")).await);
    }
    for i in 0..5 {
        a_tablet.wait_for_text(&format!("blocked {i}")).await; // alice's own copies
    }
    // Typing and read receipts do not cross either, in either direction.
    let conv = before["conv"].as_str().unwrap().to_owned();
    a.send_json(json!({"type": "typing", "conv": conv, "state": "start"}))
        .await;
    b.send_json(json!({"type": "typing", "conv": conv, "state": "start"}))
        .await;
    b.send_json(json!({"type": "read", "conv": conv, "up_to": before["id"]}))
        .await;
    let seen_by_bob = b.collect_for(QUIET).await;
    assert!(texts(&seen_by_bob).is_empty(), "{seen_by_bob:?}");
    assert!(
        !seen_by_bob.iter().any(|f| f["type"] == "typing"),
        "{seen_by_bob:?}"
    );
    let mut b_tablet = Client::connect(0, &bob, "tablet", 0).await;
    let resumed = b_tablet.collect_for(QUIET).await;
    assert_eq!(
        texts(&resumed),
        ["before"],
        "a new device finds only what came before"
    );
    let seen_by_alice = a.collect_for(QUIET).await;
    assert!(
        !seen_by_alice
            .iter()
            .any(|f| f["type"] == "typing" || (f["type"] == "receipt" && f["status"] == "read")),
        "{seen_by_alice:?}"
    );

    // History: bob's pages never show them; alice's do, one tick each.
    let ids = |r: &[Value]| {
        r.iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let withheld = ids(&sent);
    let mut all = vec![before["id"].as_str().unwrap().to_owned()];
    all.extend(withheld.clone());
    a.wait_for_history(&conv, &all, Duration::from_secs(15))
        .await;
    assert_eq!(
        b.page_back(&conv, 50).await.unwrap(),
        [before["id"].as_str().unwrap()]
    );

    // The blocker cannot send; presence and group adds are refused between them.
    let refused = b.send_text_with_id(&alice, "b-1", "hi?").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let follow = a
        .request(json!({"type": "presence_subscribe", "users": [bob]}))
        .await;
    assert_eq!(follow["code"], "forbidden", "{follow}");
    let add = a
        .request(json!({"type": "group_create", "name": "no", "members": [bob]}))
        .await;
    assert_eq!(add["code"], "forbidden", "{add}");

    // A group carol made with both still works for both.
    let group = c
        .request(json!({"type": "group_create", "name": "shared", "members": [alice, bob]}))
        .await;
    assert_eq!(group["type"], "group", "{group}");
    let gid = group["id"].as_str().unwrap().to_owned();
    a.send_to_group(&gid, "in the group").await;
    b.wait_for_text("in the group").await;
    // A bystander's chat with bob goes on.
    c.send_text(&bob, "carol here").await;
    b.wait_for_text("carol here").await;

    // Unblocked: new messages come; the withheld ones never do.
    assert_eq!(
        blocked_list(&mut b, json!({"type": "unblock", "user": alice})).await,
        json!([])
    );
    a.send_text(&bob, "after").await;
    b.wait_for_text("after").await;
    let later = Client::connect(1, &bob, "laptop", 0)
        .await
        .collect_for(QUIET)
        .await;
    let found = texts(&later);
    assert!(found.contains(&"after".to_owned()), "{found:?}");
    assert!(!found.iter().any(|t| t.starts_with("blocked")), "{found:?}");
}

#[tokio::test]
async fn block_frames_are_checked() {
    let alice = unique("alice");
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let own = a.request(json!({"type": "block", "user": alice})).await;
    assert_eq!(own["code"], "bad_request", "{own}");
    let bad = a.request(json!({"type": "block", "user": "a>b"})).await;
    assert_eq!(bad["code"], "bad_id", "{bad}");
    let missing = a.request(json!({"type": "block"})).await;
    assert_eq!(missing["code"], "bad_frame", "{missing}");
    // Unblocking someone never blocked changes nothing.
    assert_eq!(
        blocked_list(&mut a, json!({"type": "unblock", "user": unique("zed")})).await,
        json!([])
    );
}

/// A user blocking many people at once (several devices, several gateways): each block
/// is a compare-and-set on the user's one list, and the writers that lose a round to
/// another (nats-server answers with error 10164) wait a moment and try again. None
/// fails and none is lost.
#[tokio::test]
async fn many_blocks_made_at_once_are_all_kept() {
    let client = natter_e2e::system::nats_as("gateway", "e2e-blocks-at-once").await;
    let js = async_nats::jetstream::new(client);
    let blocks = natter_fabric::blocks::Blocks::open(&js, 3).await.unwrap();
    let user = unique("popular");
    let others: Vec<String> = (0..16).map(|i| unique(&format!("pest{i}"))).collect();
    let made = others.iter().map(|other| blocks.set(&user, other, true));
    for made in futures_util::future::join_all(made).await {
        made.expect("every block is kept");
    }
    let kept = blocks.of(&user).await.unwrap();
    assert_eq!(kept.len(), others.len(), "{kept:?}");
}
