//! Privacy settings: who sees my online state and last seen, and whether read receipts
//! go out. A change reaches the people following my presence at once; `settings` reads
//! and changes them, and refuses what is not a setting.

use std::time::Duration;

use natter_e2e::{Client, unique};
use serde_json::{Value, json};

fn presence_of(user: &str) -> impl Fn(&Value) -> bool + '_ {
    move |f| f["type"] == "presence" && f["user"] == user
}

#[tokio::test]
async fn hiding_online_and_last_seen_reaches_followers_at_once() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    a.send_text(&bob, "hi").await;
    b.wait_for_text("hi").await;
    // Bob follows alice (they have a conversation, once history has the message): online.
    let shown = b.follow(&alice).await;
    assert_eq!(shown["online"], true, "{shown}");

    // Alice hides her online state: bob is told she is offline, at once.
    let settings = a
        .request(json!({"type": "settings", "online": "nobody"}))
        .await;
    assert_eq!(settings["type"], "settings", "{settings}");
    assert_eq!(
        (&settings["online"], &settings["last_seen"]),
        (&json!("nobody"), &json!("everyone"))
    );
    let hidden = b.wait_for("alice hidden", presence_of(&alice)).await;
    assert_eq!(hidden["online"], false, "{hidden}");

    // And her last seen: when she leaves, bob learns nothing of when.
    a.request(json!({"type": "settings", "last_seen": "nobody"}))
        .await;
    b.wait_for("restated", presence_of(&alice)).await;
    a.close().await;
    let gone = b.wait_for("alice gone", presence_of(&alice)).await;
    assert_eq!(gone["online"], false);
    assert!(gone.get("last_seen").is_none(), "{gone}");

    // A new subscription sees the same; showing them again is told at once too.
    let mut a2 = Client::connect(1, &alice, "laptop", 0).await;
    b.send_json(json!({"type": "presence_subscribe", "users": [alice], "ref": "again"}))
        .await;
    let again = b.wait_for("alice again", presence_of(&alice)).await;
    assert_eq!(again["online"], false, "hidden while online: {again}");
    let shown = a2
        .request(json!({"type": "settings", "online": "everyone", "last_seen": "contacts"}))
        .await;
    assert_eq!(shown["online"], "everyone");
    let visible = b
        .wait_for("alice visible", |f| {
            presence_of(&alice)(f) && f["online"] == true
        })
        .await;
    assert_eq!(visible["online"], true);
    // Reading changes nothing.
    let read = a2.request(json!({"type": "settings"})).await;
    assert_eq!(
        (&read["online"], &read["last_seen"]),
        (&json!("everyone"), &json!("contacts"))
    );
}

#[tokio::test]
async fn settings_frames_are_checked() {
    let alice = unique("alice");
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let bad = a
        .request(json!({"type": "settings", "online": "friends"}))
        .await;
    assert_eq!(bad["code"], "bad_frame", "{bad}");
    let conv = json!({"type": "mute", "conv": "nonsense"});
    assert_eq!(a.request(conv).await["code"], "bad_id");
    let past = json!({"type": "mute", "conv": format!("dm:{alice}:x"), "until": 1});
    assert_eq!(a.request(past).await["code"], "bad_request");
    let muted = a
        .request(json!({"type": "mute", "conv": format!("dm:{alice}:x")}))
        .await;
    assert_eq!(muted["muted"][format!("dm:{alice}:x")], u64::MAX, "{muted}");
    let unmuted = a
        .request(json!({"type": "unmute", "conv": format!("dm:{alice}:x")}))
        .await;
    assert_eq!(unmuted["muted"], json!({}), "{unmuted}");
}

fn read_receipt<'a>(by: &'a str, id: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |f| f["type"] == "receipt" && f["status"] == "read" && f["by"] == by && f["id"] == id
}

/// Sends `text` from `from` to `to`, waits for it on `to`'s device, acks and reads it
/// there; returns the message.
async fn read_one(from: &mut Client, to: &mut Client, to_user: &str, text: &str) -> Value {
    let sent = from.send_text(to_user, text).await;
    let msg = to.wait_for_text(text).await;
    assert_eq!(msg["id"], sent["id"]);
    to.ack(msg["seq"].as_u64().unwrap()).await;
    to.send_json(json!({"type": "read", "conv": msg["conv"], "up_to": msg["id"]}))
        .await;
    msg
}

/// Whether any read receipt by `by` arrives within a second.
async fn any_read_by(client: &mut Client, by: &str) -> bool {
    let frames = client.collect_for(Duration::from_secs(1)).await;
    frames
        .iter()
        .any(|f| f["type"] == "receipt" && f["status"] == "read" && f["by"] == by)
}

#[tokio::test]
async fn read_receipts_off_keeps_reads_from_the_peer_either_way_but_not_from_the_reader() {
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut b2 = Client::connect(0, &bob, "laptop", 0).await;
    let mut c = Client::connect(1, &carol, "phone", 0).await;

    // Bob turns his read receipts off: alice's message gets delivered, never read, ticks;
    // bob's laptop still learns he read it, and his chat list counts nothing unread.
    let off = b
        .request(json!({"type": "settings", "read_receipts": false}))
        .await;
    assert_eq!(off["read_receipts"], false, "{off}");
    let first = read_one(&mut a, &mut b, &bob, "read quietly").await;
    let id = first["id"].as_str().unwrap();
    b2.wait_for("bob's own read", read_receipt(&bob, id)).await;
    a.wait_for("delivered", |f| {
        f["type"] == "receipt" && f["status"] == "delivered" && f["id"] == id
    })
    .await;
    assert!(!any_read_by(&mut a, &bob).await, "alice saw bob's read");
    let conv = first["conv"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let list = b2.request(json!({"type": "conversations"})).await;
        let row = list["conversations"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["conv"] == conv.as_str()).cloned());
        if row.as_ref().is_some_and(|r| r["unread"] == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still unread: {list}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The bystander: carol has them on, and alice sees carol's read.
    let to_carol = read_one(&mut a, &mut c, &carol, "carol reads").await;
    let carol_read = read_receipt(&carol, to_carol["id"].as_str().unwrap());
    a.wait_for("carol's read", carol_read).await;

    // Off on the sender's side hides others' reads from her, even with bob's back on.
    let back_on = b
        .request(json!({"type": "settings", "read_receipts": true}))
        .await;
    assert_eq!(back_on["read_receipts"], true);
    a.request(json!({"type": "settings", "read_receipts": false}))
        .await;
    let second = read_one(&mut a, &mut b, &bob, "still quiet").await;
    b2.wait_for(
        "bob's own read",
        read_receipt(&bob, second["id"].as_str().unwrap()),
    )
    .await;
    assert!(
        !any_read_by(&mut a, &bob).await,
        "alice (off) saw bob's read"
    );

    // Both on: reads reach alice again.
    a.request(json!({"type": "settings", "read_receipts": true}))
        .await;
    let third = read_one(&mut a, &mut b, &bob, "now seen").await;
    a.wait_for(
        "bob's read",
        read_receipt(&bob, third["id"].as_str().unwrap()),
    )
    .await;
}
