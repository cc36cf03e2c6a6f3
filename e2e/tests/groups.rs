//! Group chat end to end on the shared system (3-node cluster, two gateways, two sets of
//! workers): membership and its rules, fanout to every member's every device, receipts
//! that say "all delivered" / "all read", and per-member state as message info.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use natter_e2e::{Client, client::token, system, system::http_get, unique};
use serde_json::{Value, json};

async fn create(client: &mut Client, name: &str, members: &[&String]) -> Value {
    let answer = client
        .request(json!({"type": "group_create", "name": name, "members": members}))
        .await;
    assert_eq!(answer["type"], "group", "group_create refused: {answer}");
    answer
}

fn gid_of(group: &Value) -> String {
    group["id"].as_str().unwrap().to_owned()
}

fn is_event(event: &'static str, gid: &str) -> impl Fn(&Value) -> bool {
    let gid = gid.to_owned();
    move |f| f["type"] == "group_event" && f["event"] == event && f["group"] == gid.as_str()
}

/// A receipt saying every other member reached `status` for `id` (and what came before).
fn is_all_receipt(status: &'static str, id: &Value) -> impl Fn(&Value) -> bool {
    let id = id.clone();
    move |f| f["type"] == "receipt" && f["status"] == status && f["id"] == id && f["all"] == true
}

/// Message info once `done` holds for it (receipt state is checkpointed within a second).
async fn message_info_until(as_user: &str, id: &Value, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, info) = message_info(as_user, id).await;
        if status == 200 && done(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "message info stuck at {status} {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_of<'a>(info: &'a Value, user: &str) -> &'a Value {
    let members = info["members"].as_array().expect("members");
    let member = members
        .iter()
        .find(|m| m["user"] == user)
        .expect("member listed");
    &member["status"]
}

/// The next `count` group messages of `gid` this client gets, as texts.
async fn texts(client: &mut Client, gid: &str, count: usize) -> Vec<String> {
    let conv = format!("group:{gid}");
    let mut texts = Vec::new();
    for _ in 0..count {
        let msg = client
            .wait_for("group message", |f| {
                f["type"] == "msg" && f["conv"] == conv.as_str()
            })
            .await;
        texts.push(msg["body"]["text"].as_str().unwrap().to_owned());
    }
    texts
}

/// Every item in `user`'s inbox, over HTTP.
async fn inbox_of(user: &str) -> Vec<Value> {
    let gateway = system().gateways[0];
    let mut items = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/inbox?after={after}&limit=500");
        let (status, body) = http_get(gateway, &path, Some(&token(user))).await;
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        let page_items = page["items"].as_array().unwrap().clone();
        if page_items.is_empty() {
            return items;
        }
        after = page["next"].as_u64().unwrap();
        items.extend(page_items);
    }
}

async fn message_info(as_user: &str, id: &Value) -> (u16, Value) {
    let path = format!("/v1/messages/{}/receipts", id.as_str().unwrap());
    let (status, body) = http_get(system().gateways[1], &path, Some(&token(as_user))).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_device_of_every_member_gets_each_group_message_once_and_in_order() {
    let (amy, bob, cat) = (unique("amy"), unique("bob"), unique("cat"));
    let mut amy_phone = Client::connect(0, &amy, "phone", 0).await;
    let mut amy_laptop = Client::connect(1, &amy, "laptop", 0).await;
    let mut bob_phone = Client::connect(0, &bob, "phone", 0).await;
    let mut bob_tablet = Client::connect(1, &bob, "tablet", 0).await;
    let mut cat_phone = Client::connect(1, &cat, "phone", 0).await;

    let group = create(&mut amy_phone, "Climbing", &[&bob, &cat]).await;
    let gid = gid_of(&group);
    assert_eq!(group["name"], "Climbing");
    assert_eq!(group["members"], json!([amy, bob, cat]));
    assert_eq!(group["admins"], json!([amy]));

    let sent: Vec<String> = (0..10).map(|i| format!("route {i}")).collect();
    for text in &sent {
        let answer = amy_phone.send_to_group(&gid, text).await;
        assert_eq!(answer["conv"], format!("group:{gid}"));
    }
    for device in [
        &mut amy_laptop,
        &mut bob_phone,
        &mut bob_tablet,
        &mut cat_phone,
    ] {
        let created = device
            .wait_for("created event", is_event("created", &gid))
            .await;
        assert_eq!(created["members"], json!([amy, bob, cat]));
        assert_eq!(created["by"], amy.as_str());
        assert_eq!(created["name"], "Climbing");
        assert_eq!(texts(device, &gid, sent.len()).await, sent);
        let more = device.messages_within(Duration::from_millis(500)).await;
        assert!(more.is_empty(), "{}: duplicates {more:?}", device.user);
    }
}

#[tokio::test]
async fn group_ticks_turn_double_when_every_member_has_it_and_blue_when_every_member_read_it() {
    let (amy, bob, cat) = (unique("amy"), unique("bob"), unique("cat"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &cat, "phone", 0).await;
    let gid = gid_of(&create(&mut a, "Book club", &[&bob, &cat]).await);

    let sent = a.send_to_group(&gid, "chapter one?").await;
    let id = sent["id"].clone();
    let at_bob = b.wait_for_text("chapter one?").await;
    let info = message_info_until(&amy, &id, |_| true).await;
    let mut expected = vec![
        json!({"user": bob, "status": "sent"}),
        json!({"user": cat, "status": "sent"}),
    ];
    expected.sort_by_key(|v| v["user"].as_str().unwrap().to_owned());
    let mut members = info["members"].as_array().unwrap().clone();
    members.sort_by_key(|v| v["user"].as_str().unwrap().to_owned());
    assert_eq!(members, expected, "{info}");

    // One member having it is not a tick yet: message info shows it, no receipt comes.
    b.ack(at_bob["seq"].as_u64().unwrap()).await;
    let info = message_info_until(&amy, &id, |i| status_of(i, &bob) == "delivered").await;
    assert_eq!(status_of(&info, &cat), "sent", "{info}");
    assert_eq!(info["delivered_all"], false, "{info}");
    let early = a.collect_for(Duration::from_millis(500)).await;
    assert!(
        early.iter().all(|f| f["type"] != "receipt"),
        "a receipt before everyone had it: {early:?}"
    );

    let at_cat = c.wait_for_text("chapter one?").await;
    c.ack(at_cat["seq"].as_u64().unwrap()).await;
    let delivered = a
        .wait_for("delivered to all", is_all_receipt("delivered", &id))
        .await;
    assert_eq!(delivered["conv"], format!("group:{gid}"));
    assert_eq!(
        delivered["by"],
        cat.as_str(),
        "cat's ack completed it: {delivered}"
    );
    let info = message_info_until(&amy, &id, |i| i["delivered_all"] == true).await;
    assert_eq!(info["read_all"], false, "{info}");

    let read = json!({"type": "read", "conv": format!("group:{gid}"), "up_to": id});
    b.send_json(read.clone()).await;
    message_info_until(&amy, &id, |i| status_of(i, &bob) == "read").await;
    c.send_json(read).await;
    a.wait_for("read by all", is_all_receipt("read", &id)).await;
    let info = message_info_until(&amy, &id, |i| i["read_all"] == true).await;
    for member in info["members"].as_array().unwrap() {
        assert_eq!(member["status"], "read", "{info}");
    }

    // Only the sender may ask.
    assert_eq!(message_info(&bob, &id).await.0, 404);

    // Receipts are watermarks: one receipt for the newest message covers the earlier one.
    let one = a.send_to_group(&gid, "one").await["id"].clone();
    let two = a.send_to_group(&gid, "two").await["id"].clone();
    for device in [&mut b, &mut c] {
        device.wait_for_text("one").await;
        let at = device.wait_for_text("two").await;
        device.ack(at["seq"].as_u64().unwrap()).await;
        device
            .send_json(json!({"type": "read", "conv": format!("group:{gid}"), "up_to": two}))
            .await;
    }
    let read = a
        .wait_for("read by all", is_all_receipt("read", &two))
        .await;
    assert!(one.as_str() < read["id"].as_str(), "{read} covers {one}");
    let info = message_info_until(&amy, &one, |i| i["read_all"] == true).await;
    assert_eq!(info["delivered_all"], true, "{info}");
}

#[tokio::test]
async fn admins_add_and_remove_and_a_removed_member_gets_nothing_after_removal() {
    let (amy, bob, cat) = (unique("amy"), unique("bob"), unique("cat"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &cat, "phone", 0).await;
    let gid = gid_of(&create(&mut a, "Flat", &[&bob]).await);

    let refused = b
        .request(json!({"type": "group_add", "group": gid, "members": [cat]}))
        .await;
    assert_eq!(refused["code"], "forbidden", "only admins add: {refused}");

    let added = a
        .request(json!({"type": "group_add", "group": gid, "members": [cat]}))
        .await;
    assert_eq!(added["members"], json!([amy, bob, cat]), "{added}");
    let event = c.wait_for("added event", is_event("added", &gid)).await;
    assert_eq!(event["members"], json!([cat]));
    assert_eq!(event["by"], amy.as_str());
    b.wait_for("added event", is_event("added", &gid)).await;

    a.send_to_group(&gid, "before").await;
    b.wait_for_text("before").await;
    c.wait_for_text("before").await;

    let refused = c
        .request(json!({"type": "group_remove", "group": gid, "members": [amy]}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let removed = a
        .request(json!({"type": "group_remove", "group": gid, "members": [bob]}))
        .await;
    assert_eq!(removed["members"], json!([amy, cat]), "{removed}");
    let event = b.wait_for("removed event", is_event("removed", &gid)).await;
    assert_eq!(event["members"], json!([bob]));

    let refused = b
        .send_to_with_id(&format!("group:{gid}"), "late", "hi")
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    a.send_to_group(&gid, "after removal").await;
    c.wait_for_text("after removal").await;
    let at_bob = b.messages_within(Duration::from_secs(1)).await;
    assert!(at_bob.is_empty(), "removed member got {at_bob:?}");
    let texts: Vec<Value> = inbox_of(&bob)
        .await
        .into_iter()
        .filter(|i| i["type"] == "msg")
        .map(|i| i["body"]["text"].clone())
        .collect();
    assert_eq!(texts, [json!("before")], "bob's inbox");
}

#[tokio::test]
async fn the_last_admin_leaving_promotes_the_longest_standing_member() {
    let (amy, bob, cat, dan) = (unique("amy"), unique("bob"), unique("cat"), unique("dan"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let gid = gid_of(&create(&mut a, "Trip", &[&bob, &cat]).await);

    let left = a
        .request(json!({"type": "group_leave", "group": gid}))
        .await;
    assert_eq!(left["members"], json!([bob, cat]), "{left}");
    assert_eq!(left["admins"], json!([bob]));
    let event = b.wait_for("left event", is_event("left", &gid)).await;
    assert_eq!(event["members"], json!([amy]));
    assert_eq!(event["admins"], json!([bob]));

    let added = b
        .request(json!({"type": "group_add", "group": gid, "members": [dan]}))
        .await;
    assert_eq!(added["type"], "group", "the promoted admin adds: {added}");
    let refused = a.send_to_with_id(&format!("group:{gid}"), "x", "hi").await;
    assert_eq!(refused["code"], "forbidden");
}

#[tokio::test]
async fn outsiders_cannot_post_read_or_manage_and_bad_group_frames_get_errors() {
    let (amy, eve) = (unique("amy"), unique("eve"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut e = Client::connect(1, &eve, "phone", 0).await;
    let gid = gid_of(&create(&mut a, "Private", &[]).await);
    let sent = a.send_to_group(&gid, "secret").await;

    let cases = [
        (
            json!({"type": "send", "id": "c1", "to": format!("group:{gid}"), "body": {"kind": "text", "text": "let me in"}}),
            "forbidden",
        ),
        (
            json!({"type": "read", "conv": format!("group:{gid}"), "up_to": sent["id"]}),
            "forbidden",
        ),
        (
            json!({"type": "group_add", "group": gid, "members": [eve]}),
            "forbidden",
        ),
        (
            json!({"type": "group_remove", "group": gid, "members": [amy]}),
            "forbidden",
        ),
        (json!({"type": "group_leave", "group": gid}), "forbidden"),
        (
            json!({"type": "group_leave", "group": "no-such-group"}),
            "forbidden",
        ),
        (
            json!({"type": "group_add", "group": "bad.id", "members": []}),
            "bad_id",
        ),
        (
            json!({"type": "group_create", "name": "  ", "members": []}),
            "bad_request",
        ),
        (
            json!({"type": "group_create", "name": "x", "members": ["a>b"]}),
            "bad_id",
        ),
    ];
    for (frame, code) in cases {
        let answer = e.request(frame.clone()).await;
        assert_eq!(answer["code"], code, "{frame} → {answer}");
    }
    assert_eq!(message_info(&eve, &sent["id"]).await.0, 404);
    let texts = e.messages_within(Duration::from_millis(500)).await;
    assert!(texts.is_empty(), "an outsider got {texts:?}");
    let pong = e.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "the socket goes on");
}

/// The member limit (1,024 by default, WhatsApp's) and a group at that size: every
/// member's inbox holds the message exactly once. Prints the time from `sent` to the last
/// member's inbox (measured on the inboxes' live republish).
#[tokio::test]
async fn a_group_of_1024_members_puts_each_message_into_every_inbox_exactly_once() {
    let owner = unique("owner");
    let others: Vec<String> = (0..1023).map(|i| unique(&format!("m{i}"))).collect();
    let mut o = Client::connect(0, &owner, "phone", 0).await;

    let too_many: Vec<String> = (0..1024).map(|i| format!("x{i}")).collect();
    let refused = o
        .request(json!({"type": "group_create", "name": "Too big", "members": too_many}))
        .await;
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");

    let group = o
        .request(json!({"type": "group_create", "name": "Everyone", "members": others}))
        .await;
    assert_eq!(group["members"].as_array().unwrap().len(), 1024, "{group}");
    let gid = gid_of(&group);
    let refused = o
        .request(json!({"type": "group_add", "group": gid, "members": ["one-more"]}))
        .await;
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");

    // Every inbox store is republished on live.<uid>.i: watch them all to time the fanout.
    let mut settings =
        natter_e2e::system::nats_settings(&system().nats_urls, "gateway", "e2e-watch-live");
    settings.subscription_capacity = 64 * 1024;
    let (events, _) = tokio::sync::broadcast::channel(4);
    let watcher = natter_fabric::connect(&settings, events, Duration::from_secs(10))
        .await
        .unwrap();
    let mut live = watcher.subscribe("live.*.i").await.unwrap();
    watcher.flush().await.unwrap();

    let started = Instant::now();
    let sent = o.send_to_group(&gid, "hello all 1024").await;
    let sent_after = started.elapsed();
    let id = sent["id"].as_str().unwrap().to_owned();
    let mut reached = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while reached.len() < 1024 {
        let item = tokio::time::timeout_at(deadline, live.next())
            .await
            .expect("every inbox within 60 s")
            .unwrap();
        if std::str::from_utf8(&item.payload).is_ok_and(|p| p.contains(&id)) {
            reached.insert(item.subject.to_string());
        }
    }
    let last_inbox = started.elapsed();
    eprintln!(
        "1024-member group: sent after {sent_after:?}, in the last of 1024 inboxes after {last_inbox:?} ({} build)",
        natter_e2e::build_profile()
    );

    for member in std::iter::once(&owner).chain(&others) {
        let copies = inbox_of(member)
            .await
            .iter()
            .filter(|i| i["type"] == "msg" && i["id"] == id.as_str())
            .count();
        assert_eq!(copies, 1, "{member}'s inbox");
    }
}

/// What fanout must not deliver, put straight into `MSGS` as a gateway could: a record
/// from someone who is not a member (as when the sender was removed between the
/// gateway's check and fanout) and bytes that are not a record at all. Neither reaches a
/// member or history, and the partition goes on: the next message is delivered.
#[tokio::test]
async fn records_from_non_members_and_unreadable_records_reach_nobody_and_the_partition_goes_on() {
    use async_nats::jetstream;
    use natter_fabric::{records::MsgRecord, subjects};
    use natter_schemas::{Body, Conversation};
    let (amy, bob, mallory) = (unique("amy"), unique("bob"), unique("mallory"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let gid = gid_of(&create(&mut a, "Poison", &[&bob]).await);
    let conv = format!("group:{gid}");
    let js = jetstream::new(system::nats_as("gateway", "forger").await);
    let subject = subjects::msg(&Conversation::Group(gid.clone()));
    let forged = MsgRecord {
        id: uuid::Uuid::now_v7().to_string(),
        conv: conv.clone(),
        from: mallory.clone(),
        device: "phone".into(),
        ts: natter_fabric::now_millis(),
        body: Body::Text {
            text: "forged".into(),
        },
        reply_to: None,
        forwarded: None,
        mentions: Vec::new(),
    };
    for payload in [
        b"not a record".to_vec(),
        serde_json::to_vec(&forged).unwrap(),
    ] {
        js.publish(subject.clone(), payload.into())
            .await
            .unwrap()
            .await
            .expect("stored in MSGS");
    }
    let after = a.send_to_group(&gid, "after the poison").await;
    // Fanout keeps a partition in order: by the time this arrives, the two were handled.
    b.wait_for_text("after the poison").await;
    let forged_seen = b
        .messages_within(Duration::from_millis(300))
        .await
        .into_iter()
        .any(|m| m["body"]["text"] == "forged");
    assert!(!forged_seen, "a non-member's record reached a member");
    let mut history = Vec::new();
    for _ in 0..50 {
        history = b.page_back(&conv, 100).await.expect("a history page");
        if history
            .iter()
            .any(|id| *id == after["id"].as_str().unwrap())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        history,
        [after["id"].as_str().unwrap()],
        "history holds only the real message"
    );
}
