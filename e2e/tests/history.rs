//! History end to end on the shared system (each of its two worker sets keeps its own
//! embedded history store): paging back through long one-on-one and group conversations,
//! refusals, and a new device that has nothing locally.

use std::time::Duration;

use natter_e2e::{Client, client::token, system, system::http_get, unique};
use serde_json::json;

async fn page_back(client: &mut Client, conv: &str, limit: u32) -> Vec<String> {
    client.page_back(conv, limit).await.expect("a history page")
}

async fn assert_history(client: &mut Client, conv: &str, sent: &[String]) {
    client
        .wait_for_history(conv, sent, Duration::from_secs(30))
        .await;
}

#[tokio::test]
async fn paging_back_through_520_one_on_one_messages_sees_each_once_in_order() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut sent = Vec::new();
    let mut conv = String::new();
    for i in 0..520 {
        let (from, to) = if i % 3 == 0 {
            (&mut b, &alice)
        } else {
            (&mut a, &bob)
        };
        let answer = from.send_text(to, &format!("line {i}")).await;
        sent.push(answer["id"].as_str().unwrap().to_owned());
        conv = answer["conv"].as_str().unwrap().to_owned();
    }
    assert_history(&mut a, &conv, &sent).await;
    // Both sides see the same history; a page's content is the messages as sent.
    assert_eq!(page_back(&mut b, &conv, 37).await, sent);
    let newest = b
        .request(json!({"type": "history", "conv": conv, "limit": 1}))
        .await;
    let message = &newest["messages"][0];
    assert_eq!(message["id"], sent[519].as_str());
    assert_eq!(message["body"]["text"], "line 519");
    assert_eq!(message["from"], bob.as_str());
    assert_eq!(newest["more"], true);
}

#[tokio::test]
async fn paging_back_through_510_group_messages_sees_each_once_in_order() {
    let (amy, bob, cat) = (unique("amy"), unique("bob"), unique("cat"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &cat, "phone", 0).await;
    let group = a
        .request(json!({"type": "group_create", "name": "Long", "members": [bob, cat]}))
        .await;
    let gid = group["id"].as_str().unwrap().to_owned();
    let conv = format!("group:{gid}");
    let mut sent = Vec::new();
    for i in 0..510 {
        let sender = match i % 3 {
            0 => &mut a,
            1 => &mut b,
            _ => &mut c,
        };
        let answer = sender.send_to_group(&gid, &format!("g{i}")).await;
        sent.push(answer["id"].as_str().unwrap().to_owned());
    }
    assert_history(&mut c, &conv, &sent).await;
}

/// 40 texts of 32 KiB are 1.3 MB, more than one NATS reply may carry (1 MB), and a page of
/// even four of them more than the gateway writes to a socket in one frame: such a page
/// failed (or closed the reader's socket), and that part of the conversation was
/// unavailable for good.
#[tokio::test]
async fn a_page_of_long_texts_is_cut_by_bytes_and_paging_back_still_sees_every_message() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut sent = Vec::new();
    let mut conv = String::new();
    for i in 0..40 {
        let text = format!("{i:02}{}", "x".repeat(32 * 1024 - 2));
        let answer = a.send_text(&bob, &text).await;
        sent.push(answer["id"].as_str().unwrap().to_owned());
        conv = answer["conv"].as_str().unwrap().to_owned();
    }
    assert_history(&mut b, &conv, &sent).await;
    let newest = b
        .request(json!({"type": "history", "conv": conv, "limit": 100}))
        .await;
    let page = newest["messages"].as_array().expect("a page, not an error");
    assert!(
        !page.is_empty() && page.len() < 40,
        "one page cannot hold 1.3 MB: {} messages",
        page.len()
    );
    assert_eq!(newest["more"], true);
    let last = page.last().unwrap();
    assert_eq!(last["id"], sent[39].as_str());
    assert_eq!(last["body"]["text"].as_str().map(str::len), Some(32 * 1024));
    // Bob's chat goes on.
    a.send_text(&bob, "after the long ones").await;
    b.wait_for_text("after the long ones").await;
}

#[tokio::test]
async fn outsiders_are_refused_and_bad_history_requests_get_errors() {
    let (alice, bob, eve) = (unique("alice"), unique("bob"), unique("eve"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut e = Client::connect(1, &eve, "phone", 0).await;
    let sent = a.send_text(&bob, "private").await;
    let dm = sent["conv"].as_str().unwrap().to_owned();
    let group = a
        .request(json!({"type": "group_create", "name": "Closed", "members": [bob]}))
        .await;
    let gconv = format!("group:{}", group["id"].as_str().unwrap());
    let cases = [
        (json!({"type": "history", "conv": dm}), "forbidden"),
        (json!({"type": "history", "conv": gconv}), "forbidden"),
        (json!({"type": "history", "conv": "dm:b:a"}), "bad_id"),
        (json!({"type": "history", "conv": "chan:x"}), "bad_id"),
        (
            json!({"type": "history", "conv": format!("dm:{eve}:{eve}"), "limit": 0}),
            "bad_request",
        ),
        (
            json!({"type": "history", "conv": format!("dm:{eve}:{eve}"), "limit": 101}),
            "bad_request",
        ),
        (
            json!({"type": "history", "conv": format!("dm:{eve}:{eve}"), "before": "x.y"}),
            "bad_id",
        ),
    ];
    for (frame, code) in cases {
        let answer = e.request(frame.clone()).await;
        assert_eq!(answer["code"], code, "{frame} → {answer}");
    }
    // Their own (empty) conversation pages fine.
    let own = e
        .request(json!({"type": "history", "conv": format!("dm:{eve}:{eve}")}))
        .await;
    assert_eq!(own["messages"], json!([]));
    assert_eq!(own["more"], false);
}

#[tokio::test]
async fn a_new_device_with_nothing_stored_pages_the_whole_conversation() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut sent = Vec::new();
    let mut conv = String::new();
    for i in 0..60 {
        let answer = a
            .send_text(&bob, &format!("before the new phone {i}"))
            .await;
        sent.push(answer["id"].as_str().unwrap().to_owned());
        conv = answer["conv"].as_str().unwrap().to_owned();
    }
    // Bob's new tablet skips the inbox (it resumes after everything in it) and has no
    // local state: history gives it the conversation.
    let mut probe = Client::connect(1, &bob, "probe", 0).await;
    let last = probe.wait_for_text("before the new phone 59").await["seq"]
        .as_u64()
        .unwrap();
    let mut tablet = Client::connect(1, &bob, "tablet", last).await;
    assert_history(&mut tablet, &conv, &sent).await;
    let inbox = tablet.messages_within(Duration::from_millis(300)).await;
    assert!(inbox.is_empty(), "the inbox replayed {inbox:?}");
}

/// The `status` of every message on the newest history page, oldest first.
async fn ticks(client: &mut Client, conv: &str) -> Vec<serde_json::Value> {
    let page = client
        .request(json!({"type": "history", "conv": conv, "limit": 100}))
        .await;
    page["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| m["status"].clone()).collect())
        .unwrap_or_default()
}

/// Pages until the ticks are `expected` (receipt events reach history asynchronously).
async fn wait_for_ticks(client: &mut Client, conv: &str, expected: serde_json::Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = serde_json::Value::from(ticks(client, conv).await);
        if found == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ticks of {conv}: {found}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the message info of group message `id` says `member` got to `status`.
async fn wait_for_member_status(sender: &str, id: &serde_json::Value, member: &str, status: &str) {
    let path = format!("/v1/messages/{}/receipts", id.as_str().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(system().gateways[0], &path, Some(&token(sender))).await;
        let info: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let members = info["members"].as_array().cloned().unwrap_or_default();
        if members
            .iter()
            .any(|m| m["user"] == member && m["status"] == status)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{member} never {status} in {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn history_carries_the_ticks_of_the_readers_own_messages() {
    let (alice, bob, cat) = (unique("alice"), unique("bob"), unique("cat"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &cat, "phone", 0).await;

    // One-on-one: Bob has all three, read up to the second.
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for text in ["t1", "t2", "t3"] {
            ids.push(
                a.send_text(&bob, text).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        ids
    };
    let conv = if alice < bob {
        format!("dm:{alice}:{bob}")
    } else {
        format!("dm:{bob}:{alice}")
    };
    wait_for_ticks(&mut a, &conv, json!(["sent", "sent", "sent"])).await;
    let last = b.wait_for_text("t3").await["seq"].as_u64().unwrap();
    b.ack(last).await;
    wait_for_ticks(
        &mut a,
        &conv,
        json!(["delivered", "delivered", "delivered"]),
    )
    .await;
    b.send_json(json!({"type": "read", "conv": conv, "up_to": ids[1]}))
        .await;
    wait_for_ticks(&mut a, &conv, json!(["read", "read", "delivered"])).await;
    // Bob's view of Alice's messages carries no ticks: they are not his.
    wait_for_ticks(&mut b, &conv, json!([null, null, null])).await;

    // A group: double ticks once both members have it, blue once both read it.
    let group = a
        .request(json!({"type": "group_create", "name": "Ticks", "members": [bob, cat]}))
        .await;
    let gid = group["id"].as_str().unwrap().to_owned();
    let gconv = format!("group:{gid}");
    let id = a.send_to_group(&gid, "g1").await["id"].clone();
    let at_bob = b.wait_for_text("g1").await;
    b.ack(at_bob["seq"].as_u64().unwrap()).await;
    b.send_json(json!({"type": "read", "conv": gconv, "up_to": id}))
        .await;
    // Wait until Bob's read is counted (message info shows it), then check the ticks are
    // not blue yet: Cat has not even got the message.
    wait_for_member_status(&alice, &id, &bob, "read").await;
    wait_for_ticks(&mut a, &gconv, json!(["sent"])).await;
    let at_cat = c.wait_for_text("g1").await;
    c.ack(at_cat["seq"].as_u64().unwrap()).await;
    wait_for_ticks(&mut a, &gconv, json!(["delivered"])).await;
    c.send_json(json!({"type": "read", "conv": gconv, "up_to": id}))
        .await;
    wait_for_ticks(&mut a, &gconv, json!(["read"])).await;
}
