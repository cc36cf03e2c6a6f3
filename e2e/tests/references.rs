//! What a message refers to: replies (`reply_to`, checked to be in the same conversation,
//! quoted in history), forwards (`forward_of`, counted hop by hop) and mentions (members
//! only).

use std::time::Duration;

use natter_e2e::{Client, unique};
use serde_json::{Value, json};

async fn send(client: &mut Client, to: &str, text: &str, extra: Value) -> Value {
    let mut frame = json!({
        "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": to,
        "body": {"kind": "text", "text": text},
    });
    for (key, value) in extra.as_object().unwrap() {
        frame[key] = value.clone();
    }
    client.request(frame).await
}

#[tokio::test]
async fn a_reply_is_checked_and_quoted_in_history() {
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let question = a.send_text(&bob, "lunch at noon?").await;
    let elsewhere = a.send_text(&carol, "not for bob").await;
    b.wait_for_text("lunch at noon?").await;

    let reply = send(
        &mut b,
        &format!("user:{alice}"),
        "yes!",
        json!({"reply_to": question["id"]}),
    )
    .await;
    assert_eq!(reply["type"], "sent", "{reply}");
    let got = a.wait_for_text("yes!").await;
    assert_eq!(got["reply_to"], question["id"]);
    for (to, reply_to) in [
        (&alice, &elsewhere["id"]),
        (&alice, &json!("no-such-message")),
    ] {
        let refused = send(
            &mut b,
            &format!("user:{to}"),
            "?",
            json!({"reply_to": reply_to}),
        )
        .await;
        assert_eq!(refused["code"], "bad_request", "{refused}");
    }

    // History quotes it, as it is now.
    let edit = json!({"type": "edit", "id": question["id"], "body": {"kind": "text", "text": "lunch at one?"}});
    assert_eq!(a.request(edit).await["type"], "changed");
    let conv = question["conv"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page = b.request(json!({"type": "history", "conv": conv})).await;
        let quoted = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == reply["id"])
            .map(|m| m["quote"].clone());
        if quoted
            .as_ref()
            .is_some_and(|q| q["body"]["text"] == "lunch at one?")
        {
            let quote = quoted.unwrap();
            assert_eq!(
                (&quote["id"], &quote["from"]),
                (&question["id"], &json!(alice))
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no quote: {page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn forwards_are_counted_hop_by_hop_and_only_what_one_sees_can_be_forwarded() {
    let users: Vec<String> = (0..7).map(|i| unique(&format!("u{i}"))).collect();
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        clients.push(Client::connect(i % 2, user, "phone", 0).await);
    }
    // u0 writes to u1; each then forwards what they got to the next.
    let mut last = clients[0].send_text(&users[1], "chain letter").await;
    for hop in 1..6 {
        let got = clients[hop].wait_for_text("chain letter").await;
        assert_eq!(got["id"], last["id"]);
        if hop > 1 {
            assert_eq!(got["forwarded"], hop - 1, "{got}");
        }
        last = send(
            &mut clients[hop],
            &format!("user:{}", users[hop + 1]),
            "chain letter",
            json!({"forward_of": got["id"]}),
        )
        .await;
        assert_eq!(last["type"], "sent", "{last}");
    }
    let fifth = clients[6].wait_for_text("chain letter").await;
    assert_eq!(fifth["forwarded"], 5, "forwarded many times: {fifth}");
    // Someone who never saw it cannot forward it.
    let mut eve = Client::connect(0, &unique("eve"), "phone", 0).await;
    let u6 = users[6].clone();
    let denied = send(
        &mut eve,
        &format!("user:{u6}"),
        "x",
        json!({"forward_of": last["id"]}),
    )
    .await;
    assert_eq!(denied["code"], "forbidden", "{denied}");
}

#[tokio::test]
async fn mentions_must_be_members() {
    let (alice, bob, carol, eve) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("eve"),
    );
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let group = a
        .request(json!({"type": "group_create", "name": "m", "members": [bob, carol]}))
        .await;
    let to = format!("group:{}", group["id"].as_str().unwrap());
    let ok = send(&mut a, &to, "hey @bob", json!({"mentions": [bob, bob]})).await;
    assert_eq!(ok["type"], "sent", "{ok}");
    let got = b.wait_for_text("hey @bob").await;
    assert_eq!(got["mentions"], json!([bob]), "duplicates dropped: {got}");
    let outsider = send(&mut a, &to, "hey @eve", json!({"mentions": [eve]})).await;
    assert_eq!(outsider["code"], "bad_request", "{outsider}");
    let direct = send(
        &mut a,
        &format!("user:{bob}"),
        "hey @carol",
        json!({"mentions": [carol]}),
    )
    .await;
    assert_eq!(direct["code"], "bad_request", "{direct}");
    let many: Vec<String> = (0..51).map(|i| format!("u{i}")).collect();
    let too_many = send(&mut a, &to, "everyone", json!({"mentions": many})).await;
    assert_eq!(too_many["code"], "bad_request", "{too_many}");
    let bad = send(&mut a, &to, "bad", json!({"mentions": ["a>b"]})).await;
    assert_eq!(bad["code"], "bad_id", "{bad}");
}
