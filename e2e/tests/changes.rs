//! Changes to sent messages, end to end on the shared system (two gateways): edit, delete
//! for everyone and reactions reach every device of every member after the message they
//! change, in inbox order, also on resume; history shows the latest body, tombstones and
//! reaction counts; a deleted message's file is gone; and who may change what is enforced.

use std::time::Duration;

use natter_e2e::{
    Client,
    client::token,
    http::{Body, request},
    system::{self, ExtraGateway, nats_settings},
    test_file, unique,
};
use serde_json::{Value, json};

const PNG_HEAD: &[u8] = b"\x89PNG\r\n\x1a\n";
/// History is written milliseconds after `sent`; pages are polled this long.
const HISTORY_PATIENCE: Duration = Duration::from_secs(15);

async fn change(client: &mut Client, frame: Value) -> Value {
    let answer = client.request(frame).await;
    assert_eq!(answer["type"], "changed", "change refused: {answer}");
    answer
}

async fn refused(client: &mut Client, frame: Value) -> String {
    let answer = client.request(frame.clone()).await;
    assert_eq!(answer["type"], "error", "{frame} was not refused: {answer}");
    answer["code"].as_str().unwrap().to_owned()
}

async fn upload_png(user: &str) -> String {
    let auth = format!("Bearer {}", token(user));
    let bytes = test_file(PNG_HEAD, 4_000, 7);
    let uploaded = request(
        system::system().gateways[0],
        "POST",
        "/v1/media",
        &[("Authorization", &auth), ("Content-Type", "image/png")],
        Body::Bytes(&bytes),
    )
    .await;
    assert_eq!(uploaded.status, 201);
    let answer: Value = serde_json::from_slice(&uploaded.body).unwrap();
    answer["id"].as_str().unwrap().to_owned()
}

async fn download_status(user: &str, id: &str) -> u16 {
    let auth = format!("Bearer {}", token(user));
    let path = format!("/v1/media/{id}");
    let addr = system::system().gateways[1];
    request(addr, "GET", &path, &[("Authorization", &auth)], Body::None)
        .await
        .status
}

/// The newest page of `conv`, polled until `ready` holds for it.
async fn page_until(
    client: &mut Client,
    conv: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + HISTORY_PATIENCE;
    loop {
        let page = client
            .request(json!({"type": "history", "conv": conv, "limit": 50}))
            .await;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        if ready(&messages) {
            return messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never showed it: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn by_id<'a>(messages: &'a [Value], id: &Value) -> &'a Value {
    messages
        .iter()
        .find(|m| m["id"] == *id)
        .expect("the message is in the page")
}

#[tokio::test]
async fn an_edit_and_a_delete_made_while_bob_was_away_reach_him_in_order_and_history_shows_them() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut a_tablet = Client::connect(1, &alice, "tablet", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    a.send_text(&bob, "hello").await;
    let cursor = b.wait_for_text("hello").await["seq"].as_u64().unwrap();
    b.ack(cursor).await;
    b.close().await;

    // While bob is away: a typo, its fix, a photo, and the photo taken back.
    let typo = a.send_text(&bob, "see you at 8").await;
    let media_id = upload_png(&alice).await;
    let photo = a
        .request(json!({
            "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": format!("user:{bob}"),
            "body": {"kind": "image", "media_id": media_id, "mime": "image/png", "caption": "us"},
        }))
        .await;
    assert_eq!(photo["type"], "sent", "{photo}");
    assert_eq!(
        download_status(&bob, &media_id).await,
        200,
        "shared with bob"
    );
    let edited = change(
        &mut a,
        json!({"type": "edit", "id": typo["id"], "body": {"kind": "text", "text": "see you at 9"}}),
    )
    .await;
    assert_eq!(edited["id"], typo["id"]);
    assert_eq!(edited["conv"], typo["conv"]);
    change(&mut a, json!({"type": "delete", "id": photo["id"]})).await;

    // Bob resumes on the other gateway: message, message, edit, delete, in that order.
    let mut b = Client::connect(0, &bob, "phone", cursor).await;
    let frames = b.collect_for(Duration::from_secs(2)).await;
    let kinds: Vec<(&str, &Value)> = frames
        .iter()
        .filter(|f| f["seq"].is_u64() && f["type"] != "receipt")
        .map(|f| (f["type"].as_str().unwrap(), &f["id"]))
        .collect();
    assert_eq!(
        kinds,
        [
            ("msg", &typo["id"]),
            ("msg", &photo["id"]),
            ("edit", &typo["id"]),
            ("delete", &photo["id"]),
        ],
        "{frames:?}"
    );
    let edit = frames.iter().find(|f| f["type"] == "edit").unwrap();
    assert_eq!(edit["body"]["text"], "see you at 9");
    assert_eq!(edit["from"], alice.as_str());
    // Alice's other device sees her own changes too.
    a_tablet
        .wait_for("alice's edit", |f| f["type"] == "edit")
        .await;
    a_tablet
        .wait_for("alice's delete", |f| f["type"] == "delete")
        .await;

    // The photo is gone for everyone, its uploader included.
    assert_eq!(download_status(&bob, &media_id).await, 404);
    assert_eq!(download_status(&alice, &media_id).await, 404);

    // Bob reacts, changes his mind, and alice's devices see each reaction.
    change(
        &mut b,
        json!({"type": "react", "id": typo["id"], "emoji": "👍"}),
    )
    .await;
    change(
        &mut b,
        json!({"type": "react", "id": typo["id"], "emoji": "❤️"}),
    )
    .await;
    let first = a.wait_for("a reaction", |f| f["type"] == "reaction").await;
    assert_eq!(first["emoji"], "👍");
    let second = a
        .wait_for("a second reaction", |f| f["type"] == "reaction")
        .await;
    assert_eq!(second["emoji"], "❤️");
    assert!(
        second["rev"].as_str() > first["rev"].as_str(),
        "the later one wins"
    );

    // History: the latest body with its edit mark, the tombstone, the reactions.
    let conv = typo["conv"].as_str().unwrap().to_owned();
    let messages = page_until(&mut b, &conv, |messages| {
        messages.iter().any(|m| m["deleted"].is_object())
            && messages.iter().any(|m| m["my_reaction"] == "❤️")
    })
    .await;
    let shown = by_id(&messages, &typo["id"]);
    assert_eq!(shown["body"]["text"], "see you at 9");
    assert!(shown["edited"].is_u64(), "{shown}");
    assert_eq!(shown["reactions"], json!({"❤️": 1}));
    let tomb = by_id(&messages, &photo["id"]);
    assert_eq!(
        tomb["body"],
        json!({"kind": "deleted"}),
        "nothing of it is left: {tomb}"
    );
    assert_eq!(tomb["deleted"]["by"], alice.as_str());
    let theirs = page_until(&mut a, &conv, |m| {
        m.iter().any(|m| m["reactions"].is_object())
    })
    .await;
    let for_alice = by_id(&theirs, &typo["id"]);
    assert_eq!(for_alice["reactions"], json!({"❤️": 1}));
    assert!(for_alice.get("my_reaction").is_none(), "{for_alice}");

    // Taken back: no reaction left.
    change(&mut b, json!({"type": "react", "id": typo["id"]})).await;
    page_until(&mut b, &conv, |messages| {
        by_id(messages, &typo["id"]).get("reactions").is_none()
    })
    .await;
}

#[tokio::test]
async fn only_the_author_edits_only_the_author_or_an_admin_deletes_and_nothing_changes_a_deleted_message()
 {
    let (alice, bob, carol, eve) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("eve"),
    );
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &carol, "phone", 0).await;
    let mut e = Client::connect(1, &eve, "phone", 0).await;
    let sent = a.send_text(&bob, "mine").await;
    let id = sent["id"].clone();

    // Not the author, not in the conversation, not a message, not valid.
    assert_eq!(
        refused(
            &mut b,
            json!({"type": "edit", "id": id, "body": {"kind": "text", "text": "x"}})
        )
        .await,
        "forbidden"
    );
    assert_eq!(
        refused(&mut b, json!({"type": "delete", "id": id})).await,
        "forbidden"
    );
    assert_eq!(
        refused(&mut e, json!({"type": "react", "id": id, "emoji": "👍"})).await,
        "forbidden"
    );
    assert_eq!(
        refused(&mut e, json!({"type": "delete", "id": "no-such-message"})).await,
        "forbidden"
    );
    assert_eq!(
        refused(&mut b, json!({"type": "react", "id": id, "emoji": "ok"})).await,
        "bad_request"
    );
    assert_eq!(
        refused(
            &mut a,
            json!({"type": "edit", "id": id, "body": {"kind": "text", "text": " "}})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        refused(
            &mut a,
            json!({"type": "edit", "id": id, "body": {"kind": "deleted"}})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        refused(&mut a, json!({"type": "delete", "id": "a>b"})).await,
        "bad_id"
    );
    let as_media = json!({"kind": "image", "media_id": "0".repeat(48), "mime": "image/png"});
    assert_eq!(
        refused(&mut a, json!({"type": "edit", "id": id, "body": as_media})).await,
        "bad_request"
    );

    // In a group: the author edits, an admin deletes someone else's message, and after
    // that nobody edits or reacts to it.
    let group = a
        .request(json!({"type": "group_create", "name": "changes", "members": [bob, carol]}))
        .await;
    let gid = group["id"].as_str().unwrap().to_owned();
    let said = b.send_to_group(&gid, "bob's words").await;
    let gone = said["id"].clone();
    change(
        &mut b,
        json!({"type": "edit", "id": gone, "body": {"kind": "text", "text": "bob's better words"}}),
    )
    .await;
    change(&mut c, json!({"type": "react", "id": gone, "emoji": "😂"})).await;
    assert_eq!(
        refused(&mut c, json!({"type": "delete", "id": gone})).await,
        "forbidden",
        "carol is no admin"
    );
    change(&mut a, json!({"type": "delete", "id": gone})).await;
    for client in [&mut a, &mut b, &mut c] {
        let mut kinds = Vec::new();
        for kind in ["msg", "edit", "reaction", "delete"] {
            let frame = client
                .wait_for(kind, |f| f["type"] == kind && f["id"] == gone)
                .await;
            kinds.push(frame["seq"].as_u64().unwrap());
        }
        assert!(
            kinds.is_sorted(),
            "each change after the message and the one before it: {kinds:?}"
        );
    }
    assert_eq!(
        refused(
            &mut b,
            json!({"type": "edit", "id": gone, "body": {"kind": "text", "text": "again"}})
        )
        .await,
        "forbidden"
    );
    assert_eq!(
        refused(&mut c, json!({"type": "react", "id": gone, "emoji": "👍"})).await,
        "forbidden"
    );
    let conv = format!("group:{gid}");
    let messages = page_until(&mut c, &conv, |m| {
        m.iter().any(|m| m["deleted"].is_object())
    })
    .await;
    let tomb = by_id(&messages, &gone);
    assert_eq!(tomb["deleted"]["by"], alice.as_str());
    assert!(
        tomb.get("reactions").is_none() && tomb.get("edited").is_none(),
        "{tomb}"
    );

    // Every refusal left the sockets open: the bystander conversation goes on.
    a.send_text(&bob, "still here").await;
    b.wait_for_text("still here").await;
    e.send_text(&carol, "and here").await;
    c.wait_for_text("and here").await;
}

#[tokio::test]
async fn an_edit_after_the_window_is_refused() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let quick = ExtraGateway::start_with(
        nats_settings(
            &system::system().nats_urls,
            "gateway",
            "edit-window-gateway",
        ),
        |config| {
            config.limits.edit_window_secs = 1;
            config.limits.delete_window_secs = 1;
        },
    )
    .await;
    let mut a = Client::connect_to(quick.addr, &alice, "phone", 0).await;
    let sent = a.send_text(&bob, "quick").await;
    let fixed =
        json!({"type": "edit", "id": sent["id"], "body": {"kind": "text", "text": "fixed"}});
    change(&mut a, fixed.clone()).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(refused(&mut a, fixed).await, "forbidden");
    assert_eq!(
        refused(&mut a, json!({"type": "delete", "id": sent["id"]})).await,
        "forbidden"
    );
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    change(
        &mut b,
        json!({"type": "react", "id": sent["id"], "emoji": "👍"}),
    )
    .await;
}
