//! Push notifications: a user with no device online gets one notification per burst, by
//! the webhook provider, signed, without message text; a user who is online gets none;
//! the messages wait in the inbox for when they open the app; a webhook that fails is
//! retried; device registrations with bad input are refused.
//!
//! The workers of this test binary notify a webhook receiver the test runs (a plain HTTP
//! server on a loopback port) with a 2 s coalescing window (a deletion made right after
//! its message lands within it, even on a loaded machine) and at most one notification
//! per user a minute.

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use natter_e2e::{
    Client,
    client::token,
    http::{Body, request},
    system::{self, Options, configure, system},
    unique,
};
use natter_redis::push_queue::Coalescing;
use natter_workers::push::{PushSettings, WebhookSettings};
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-for-tests";

/// One POST the receiver got: its signature header and JSON body.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    raw: Vec<u8>,
    body: Value,
}

static RECEIVED: Mutex<Vec<Received>> = Mutex::new(Vec::new());

/// A webhook receiver on its own thread. It answers 503 to the first notification for a
/// user named `flaky-…`, and 204 to everything else.
fn receiver() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut failed_once = std::collections::HashSet::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(received) = read_post(&mut stream) else {
                    continue;
                };
                let user = received.body["user"].as_str().unwrap_or("").to_owned();
                let status = if user.starts_with("flaky-") && failed_once.insert(user) {
                    "503 Service Unavailable"
                } else {
                    RECEIVED.lock().unwrap().push(received);
                    "204 No Content"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        url
    })
    .clone()
}

fn read_post(stream: &mut std::net::TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(str::trim)
                .map(str::to_owned)
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    while data.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    }
    let raw = data[head_end..head_end + length].to_vec();
    Some(Received {
        signature: header("x-natter-signature").unwrap_or_default(),
        body: serde_json::from_slice(&raw).ok()?,
        raw,
    })
}

fn setup() {
    configure(Options {
        push: Some(PushSettings {
            redis: natter_redis::RedisSettings::default(), // the system's URL is put in
            coalescing: Coalescing {
                window: Duration::from_secs(2),
                min_interval: Duration::from_secs(60),
            },
            include_text: false,
            webhook: Some(WebhookSettings {
                url: receiver(),
                secret: SECRET.to_owned(),
            }),
        }),
        ..Options::default()
    });
    system();
}

fn pushes_for(user: &str) -> Vec<Received> {
    RECEIVED
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.body["user"] == user)
        .cloned()
        .collect()
}

/// Waits (at most 20 s) until `user` got a notification.
async fn wait_for_a_push(user: &str) {
    for _ in 0..200 {
        if !pushes_for(user).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no push for {user} within 20 s");
}

/// The positive marker before a check that something was not pushed: a fresh offline
/// user with a phone gets a message from `from`, sent after everything the check is
/// about, and their push arrives. The tail reader notes inbox items in order and every
/// user's window is as long, so a push the check looks for would have come first.
async fn after_a_later_push(from: &mut Client) {
    let marker = unique("marker");
    register_phone(&marker).await;
    from.send_text(&marker, "marker").await;
    wait_for_a_push(&marker).await;
}

/// `POST /v1/devices` as `user`; the status.
async fn register(user: &str, body: Value) -> u16 {
    let bearer = format!("Bearer {}", token(user));
    let bytes = body.to_string().into_bytes();
    let response = request(
        system().gateways[0],
        "POST",
        "/v1/devices",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        Body::Bytes(&bytes),
    )
    .await;
    response.status
}

async fn register_phone(user: &str) {
    let status = register(
        user,
        json!({"device": "phone", "push": {"kind": "webhook", "token": format!("{user}-apns")}}),
    )
    .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn an_offline_user_gets_one_signed_push_per_burst_and_finds_the_messages() {
    setup();
    let (alice, bob) = (unique("alice"), unique("bob"));
    register_phone(&bob).await;
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    for i in 0..20 {
        a.send_text(&bob, &format!("burst {i}")).await;
    }
    wait_for_a_push(&bob).await;
    after_a_later_push(&mut a).await;
    let pushes = pushes_for(&bob);
    assert_eq!(pushes.len(), 1, "one push for the burst: {pushes:?}");
    let push = &pushes[0];
    assert_eq!(push.body["count"], 20, "{:?}", push.body);
    assert_eq!(push.body["from"], alice.as_str());
    assert_eq!(push.body["device"], "phone");
    assert_eq!(push.body["token"], format!("{bob}-apns").as_str());
    assert!(
        push.body.get("text").is_none(),
        "no text unless configured: {:?}",
        push.body
    );
    assert_eq!(
        push.signature,
        natter_workers::push::sign(SECRET.as_bytes(), &push.raw),
        "signed with the shared secret"
    );

    // A message soon after is not another push (one per minute at most).
    a.send_text(&bob, "one more").await;
    after_a_later_push(&mut a).await;
    assert_eq!(pushes_for(&bob).len(), 1);

    // Opening the app, bob finds all 21 waiting.
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let waiting = b.messages_within(Duration::from_secs(2)).await;
    assert_eq!(waiting.len(), 21, "{waiting:?}");
}

#[tokio::test]
async fn a_message_deleted_before_its_push_leaves_it_and_changes_are_never_pushed() {
    setup();
    let (alice, bob, carol, dave) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("dave"),
    );
    for user in [&bob, &carol, &dave] {
        register_phone(user).await;
    }
    // Dave says something, then goes offline.
    let mut d = Client::connect(1, &dave, "phone", 0).await;
    let dave_said = d.send_text(&alice, "lunch?").await;
    d.close().await;
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let delete = |sent: &Value| json!({"type": "delete", "id": sent["id"]});
    // Bob: two messages, the second taken back before the window closes.
    a.send_text(&bob, "hello").await;
    let oops = a.send_text(&bob, "wrong chat").await;
    assert_eq!(a.request(delete(&oops)).await["type"], "changed");
    // Carol: her only message taken back.
    let only = a.send_text(&carol, "never mind").await;
    assert_eq!(a.request(delete(&only)).await["type"], "changed");
    // Dave: a reaction to his message, which is never pushed.
    let react = json!({"type": "react", "id": dave_said["id"], "emoji": "👍"});
    assert_eq!(a.request(react).await["type"], "changed");

    wait_for_a_push(&bob).await;
    after_a_later_push(&mut a).await;
    let pushes = pushes_for(&bob);
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0].body["count"], 1, "the deleted one is not counted");
    assert!(pushes_for(&carol).is_empty(), "nothing left to tell carol");
    assert!(pushes_for(&dave).is_empty(), "reactions are not pushed");
}

#[tokio::test]
async fn a_muted_conversation_is_not_pushed_and_the_chat_list_says_so() {
    setup();
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    register_phone(&bob).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let conv = format!("dm:{}", {
        let mut pair = [alice.as_str(), bob.as_str()];
        pair.sort();
        pair.join(":")
    });
    let muted = b.request(json!({"type": "mute", "conv": conv})).await;
    assert_eq!(muted["type"], "settings", "{muted}");
    b.close().await;
    // Alice's messages are muted; carol's are not.
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    a.send_text(&bob, "muted one").await;
    a.send_text(&bob, "muted two").await;
    let mut c = Client::connect(0, &carol, "phone", 0).await;
    c.send_text(&bob, "not muted").await;
    wait_for_a_push(&bob).await;
    after_a_later_push(&mut c).await;
    let pushes = pushes_for(&bob);
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(
        (&pushes[0].body["count"], &pushes[0].body["from"]),
        (&json!(1), &json!(carol)),
        "only carol's message counts"
    );
    // The chat list shows the mute, and both conversations.
    let mut b = Client::connect(1, &bob, "tablet", 0).await;
    let list = b.request(json!({"type": "conversations"})).await;
    let rows = list["conversations"].as_array().expect("a chat list");
    let row = rows
        .iter()
        .find(|r| r["conv"] == conv.as_str())
        .expect("listed");
    assert_eq!(row["muted_until"], u64::MAX, "{row}");
    assert_eq!(row["unread"], 2, "{row}");
}

#[tokio::test]
async fn a_mention_is_pushed_even_in_a_muted_group() {
    setup();
    let (alice, bob) = (unique("alice"), unique("bob"));
    register_phone(&bob).await;
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let group = a
        .request(json!({"type": "group_create", "name": "loud", "members": [bob]}))
        .await;
    let gid = group["id"].as_str().unwrap().to_owned();
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let muted = b
        .request(json!({"type": "mute", "conv": format!("group:{gid}")}))
        .await;
    assert_eq!(muted["type"], "settings", "{muted}");
    b.close().await;
    a.send_to_group(&gid, "chatter").await;
    after_a_later_push(&mut a).await;
    assert!(pushes_for(&bob).is_empty(), "the group is muted");
    let mention = json!({
        "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": format!("group:{gid}"),
        "body": {"kind": "text", "text": "@bob look"}, "mentions": [bob],
    });
    assert_eq!(a.request(mention).await["type"], "sent");
    wait_for_a_push(&bob).await;
    assert_eq!(pushes_for(&bob)[0].body["count"], 1, "the mention alone");
}

#[tokio::test]
async fn a_user_with_a_device_online_gets_no_push() {
    setup();
    let (alice, carol) = (unique("alice"), unique("carol"));
    register_phone(&carol).await;
    let mut c = Client::connect(1, &carol, "laptop", 0).await;
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    // Presence is written just after the socket opens: wait for it as a follower would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        a.send_text(&carol, &format!("live {i}")).await;
    }
    c.wait_for_text("live 2").await;
    after_a_later_push(&mut a).await;
    assert!(pushes_for(&carol).is_empty(), "carol was online");
}

#[tokio::test]
async fn a_failing_webhook_is_retried() {
    setup();
    let (alice, dora) = (unique("alice"), unique("flaky-dora"));
    register_phone(&dora).await;
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    a.send_text(&dora, "are you up?").await;
    wait_for_a_push(&dora).await;
    let pushes = pushes_for(&dora);
    assert_eq!(
        pushes.len(),
        1,
        "delivered on the retry after a 503: {pushes:?}"
    );
    assert_eq!(pushes[0].body["count"], 1);
}

#[tokio::test]
async fn bad_device_registrations_are_refused() {
    setup();
    let user = unique("erin");
    let kind = json!({"device": "phone", "push": {"kind": "carrier-pigeon", "token": "x"}});
    assert_eq!(register(&user, kind).await, 400);
    let device = json!({"device": "no.dots", "push": {"kind": "webhook", "token": "x"}});
    assert_eq!(register(&user, device).await, 400);
    let empty = json!({"device": "phone", "push": {"kind": "webhook", "token": ""}});
    assert_eq!(register(&user, empty).await, 400);
    assert_eq!(register(&user, json!({"device": "phone"})).await, 400);
    let unsigned = request(
        system::system().gateways[0],
        "POST",
        "/v1/devices",
        &[("Content-Type", "application/json")],
        Body::Bytes(b"{}"),
    )
    .await;
    assert_eq!(unsigned.status, 401);
}
