//! Bad input end to end: what a hostile or broken client sends is refused with a stable
//! answer, the offender's socket stays usable where the protocol says it does, and other
//! users never notice.
//!
//! Cases and their refusals (shared gateways: HS256, no `iss`/`aud` configured):
//! - tokens: `alg: none`, an RS256 or EdDSA header over an HS256 signature, expired past
//!   the 30 s leeway, `nbf` in the future, no `exp`, no `sub`, a `sub` that is not a
//!   string, not a JWT at all, and (on a gateway with `iss`/`aud` configured) a wrong or
//!   missing `iss` or `aud`: HTTP 401 on `GET /v1/ws`, no socket;
//! - ids with `.`, `*`, `>`, a space, non-ASCII, empty, 65 characters: as the token's
//!   `sub` or `device` claim 401; as `?device=` 400; as `to: user:<id>`, `to: group:<id>`
//!   or the client message id `error{bad_id}` with the socket open; as a `media_id`
//!   `error{forbidden}` (the answer for an unknown file). 64 characters are accepted;
//! - JSON of the wrong shape, not an object, not JSON, nested too deep: `error{bad_frame}`
//!   (with the `ref` when the frame is an object with one), socket open;
//! - a binary frame: `error{bad_frame}`, socket open;
//! - a frame over 64 KiB (one frame, or fragments adding up to it) and invalid UTF-8 in a
//!   text frame: that socket ends; everyone else chats on, and the offender can reconnect;
//! - a client that never reads its socket: dropped by the write timeout, while another
//!   user on the same gateway is served, and the gateway's memory stays bounded.
//!
//! Covered elsewhere, not repeated here:
//! - `one_on_one.rs` `a_socket_without_a_valid_token_is_refused_with_401`: no token, the
//!   garbage token `nope`, `exp: 1`, an HS256 token signed with another secret (401), a
//!   `?device=` other than the token's `device` claim and `?device=bad.device` (400);
//! - `one_on_one.rs` `a_spoofed_from_is_ignored`: a `from` in `send` is ignored;
//! - `one_on_one.rs` `bad_frames_get_an_error_and_the_socket_keeps_working`: malformed
//!   JSON, unknown `type`, `send` without `body` (`bad_frame`); `to: user:bob.>`,
//!   client id `c 1`, `to: bob` (`bad_id`); empty text, an `ack` beyond the inbox
//!   (`bad_request`); `read` of a one-on-one one is not in (`forbidden`);
//! - `groups.rs` `outsiders_cannot_post_read_or_manage_and_bad_group_frames_get_errors`:
//!   `send` to and `read` of a group one is not in, managing it (`forbidden`);
//! - `history.rs` `outsiders_are_refused_and_bad_history_requests_get_errors`: history of
//!   a one-on-one or group one is not in (`forbidden`);
//! - `media.rs`: `GET /v1/media/<id>` of someone else's file (404), and sending a message
//!   with a file one may not see (`forbidden`);
//! - `typing.rs`, `presence.rs`: typing in and following outside one's conversations;
//! - `recovery.rs` `a_client_that_stops_reading_is_disconnected_and_resumes_without_loss`;
//! - `rate_limits.rs`: flooding sends.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use natter_e2e::{
    Client,
    child::{self, TestProcess},
    client::{PATIENCE, Socket, token},
    memory_mib,
    raw::{CONTINUATION, Ending, RawSocket, TEXT},
    system::{ExtraGateway, SECRET, nats_settings, system, wait_healthy},
    unique,
};
use natter_gateway::auth::{Audience, Claims};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::{self, Message};

/// Ids that are not ids, each with what is wrong with it.
const BAD_IDS: &[(&str, &str)] = &[
    ("a dot", "bob.smith"),
    ("a star", "bob*"),
    ("a greater-than", "bob>"),
    ("a space", "bob smith"),
    ("non-ASCII", "bøb"),
    ("empty", ""),
];

/// 65 characters: one over the limit.
fn too_long() -> String {
    "x".repeat(65)
}

/// Every bad id, the over-long one included.
fn bad_ids() -> Vec<(&'static str, String)> {
    BAD_IDS
        .iter()
        .map(|(what, id)| (*what, (*id).to_owned()))
        .chain([("65 characters", too_long())])
        .collect()
}

fn now_secs() -> u64 {
    natter_fabric::now_millis() / 1000
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// A JWT with `header` and `claims` as given, signed with HMAC-SHA256 under `secret`
/// whatever the header says (or unsigned when `secret` is `None`).
fn jwt(header: Value, claims: Value, secret: Option<&[u8]>) -> String {
    jwt_of_bytes(&header, claims.to_string().as_bytes(), secret)
}

/// Like [`jwt`], with claims that need not be JSON.
fn jwt_of_bytes(header: &Value, claims: &[u8], secret: Option<&[u8]>) -> String {
    let signed = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims)
    );
    let signature = secret.map_or_else(String::new, |secret| {
        base64url(&hmac_sha256(secret, signed.as_bytes()))
    });
    format!("{signed}.{signature}")
}

fn hs256() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

/// Claims of a token valid for ten minutes for `user`.
fn valid_claims(user: &str) -> Value {
    json!({"sub": user, "exp": now_secs() + 600})
}

fn signed(claims: &Claims) -> String {
    natter_gateway::auth::sign_hs256(SECRET.as_bytes(), claims).unwrap()
}

/// Percent-encodes everything but unreserved characters, for a query parameter.
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The HTTP status of a WebSocket upgrade of `/v1/ws?<query>` (101 when a socket opened).
async fn upgrade_status(addr: SocketAddr, query: &str) -> u16 {
    let url = format!("ws://{addr}/v1/ws?{query}");
    let attempt = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|_| panic!("no answer to the upgrade ?{query}"));
    match attempt {
        Ok((mut socket, response)) => {
            let _ = socket.close(None).await;
            response.status().as_u16()
        }
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("upgrade ?{query}: {other}"),
    }
}

/// Asserts every token in `tokens` (what it is, the token) is refused 401 at `addr`.
async fn assert_refused(addr: SocketAddr, tokens: &[(&str, String)]) {
    for (what, token) in tokens {
        let status = upgrade_status(addr, &format!("token={token}")).await;
        assert_eq!(status, 401, "{what}: expected 401, got {status}");
    }
}

/// After a refusal: the socket still answers a ping and carries a message to `to`.
async fn still_chats(client: &mut Client, to: &mut Client) {
    let pong = client.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    let text = format!("still chatting {}", unique("t"));
    let to_user = to.user.clone();
    client.send_text(&to_user, &text).await;
    let msg = to.wait_for_text(&text).await;
    assert_eq!(msg["from"], client.user.as_str());
}

#[tokio::test]
async fn unsigned_and_algorithm_confused_tokens_get_401_and_no_socket() {
    let addr = system().gateways[0];
    let eve = unique("eve");
    let claims = valid_claims(&eve);
    let none = |alg: &str| jwt(json!({"alg": alg, "typ": "JWT"}), claims.clone(), None);
    let stripped = none("none");
    let secret = Some(SECRET.as_bytes());
    assert_refused(
        addr,
        &[
            ("alg none", stripped.clone()),
            (
                "alg none, no trailing dot",
                stripped.trim_end_matches('.').into(),
            ),
            ("alg None", none("None")),
            ("alg NONE", none("NONE")),
            (
                "alg HS256 without its signature",
                jwt(hs256(), claims.clone(), None),
            ),
            (
                "RS256 header, HMAC signature with the gateway's secret",
                jwt(
                    json!({"alg": "RS256", "typ": "JWT"}),
                    claims.clone(),
                    secret,
                ),
            ),
            (
                "EdDSA header, HMAC signature with the gateway's secret",
                jwt(
                    json!({"alg": "EdDSA", "typ": "JWT"}),
                    claims.clone(),
                    secret,
                ),
            ),
            (
                "HS512 header, HMAC-SHA256 signature with the gateway's secret",
                jwt(
                    json!({"alg": "HS512", "typ": "JWT"}),
                    claims.clone(),
                    secret,
                ),
            ),
        ],
    )
    .await;
    // The same hand-made token, signed as the gateway expects, opens a socket: the
    // refusals above are about the algorithm, not the way the tokens were made.
    let good = jwt(hs256(), claims, secret);
    assert_eq!(upgrade_status(addr, &format!("token={good}")).await, 101);
}

#[tokio::test]
async fn tokens_outside_their_validity_window_get_401() {
    let addr = system().gateways[0];
    let eve = unique("eve");
    let secret = Some(SECRET.as_bytes());
    let now = now_secs();
    assert_refused(
        addr,
        &[
            (
                "expired a minute ago (beyond the 30 s leeway)",
                jwt(hs256(), json!({"sub": eve, "exp": now - 60}), secret),
            ),
            (
                "not valid for another minute (nbf)",
                jwt(
                    hs256(),
                    json!({"sub": eve, "exp": now + 600, "nbf": now + 60}),
                    secret,
                ),
            ),
            (
                "no exp",
                jwt(hs256(), json!({"sub": eve, "iat": now}), secret),
            ),
        ],
    )
    .await;
    let valid_since = jwt(
        hs256(),
        json!({"sub": eve, "exp": now + 600, "nbf": now - 60}),
        secret,
    );
    assert_eq!(
        upgrade_status(addr, &format!("token={valid_since}")).await,
        101,
        "a token whose nbf has passed is accepted"
    );
}

#[tokio::test]
async fn tokens_without_a_subject_and_strings_that_are_not_tokens_get_401() {
    let addr = system().gateways[0];
    let secret = Some(SECRET.as_bytes());
    let exp = now_secs() + 600;
    let good = token(&unique("eve"));
    let parts: Vec<&str> = good.split('.').collect();
    assert_refused(
        addr,
        &[
            ("no sub", jwt(hs256(), json!({"exp": exp}), secret)),
            (
                "a numeric sub",
                jwt(hs256(), json!({"sub": 42, "exp": exp}), secret),
            ),
            (
                "a null sub",
                jwt(hs256(), json!({"sub": null, "exp": exp}), secret),
            ),
            ("empty", String::new()),
            ("three dots", "a.b.c".into()),
            (
                "claims that are not JSON",
                jwt_of_bytes(&hs256(), b"not json", secret),
            ),
            (
                "claims that are a JSON list",
                jwt_of_bytes(&hs256(), br#"["sub","exp"]"#, secret),
            ),
            (
                "a valid token with a fourth part",
                format!("{good}.{}", parts[2]),
            ),
            (
                "a valid token's claims with another token's signature",
                format!(
                    "{}.{}.{}",
                    parts[0],
                    base64url(valid_claims("mallory").to_string().as_bytes()),
                    parts[2]
                ),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_the_gateway_is_configured_with_them() {
    const ISSUER: &str = "https://auth.natter.test";
    const AUDIENCE: &str = "natter-e2e";
    let redis = system().redis_url.clone();
    let gateway = ExtraGateway::start_with(
        nats_settings(&system().nats_urls, "gateway", "e2e-iss-aud-gateway"),
        |config| {
            config.jwt.issuer = Some(ISSUER.to_owned());
            config.jwt.audience = Some(AUDIENCE.to_owned());
            config.redis.url = redis;
        },
    )
    .await;
    let eve = unique("eve");
    let claims = |iss: Option<&str>, aud: Option<Audience>| Claims {
        sub: eve.clone(),
        exp: now_secs() + 600,
        device: None,
        iss: iss.map(str::to_owned),
        aud,
    };
    let one = |aud: &str| Some(Audience::One(aud.to_owned()));
    assert_refused(
        gateway.addr,
        &[
            (
                "wrong iss",
                signed(&claims(Some("https://evil.test"), one(AUDIENCE))),
            ),
            ("no iss", signed(&claims(None, one(AUDIENCE)))),
            ("wrong aud", signed(&claims(Some(ISSUER), one("other-app")))),
            ("no aud", signed(&claims(Some(ISSUER), None))),
            (
                "an aud list without ours",
                signed(&claims(
                    Some(ISSUER),
                    Some(Audience::Many(vec!["a".into(), "b".into()])),
                )),
            ),
            ("neither", token(&eve)),
        ],
    )
    .await;
    for (what, token) in [
        ("iss and aud", signed(&claims(Some(ISSUER), one(AUDIENCE)))),
        (
            "iss and an aud list with ours",
            signed(&claims(
                Some(ISSUER),
                Some(Audience::Many(vec!["other".into(), AUDIENCE.into()])),
            )),
        ),
    ] {
        let status = upgrade_status(gateway.addr, &format!("token={token}")).await;
        assert_eq!(status, 101, "{what}: the right token opens a socket");
    }
}

#[tokio::test]
async fn user_and_device_ids_that_are_not_ids_are_refused_at_the_upgrade() {
    let addr = system().gateways[0];
    let exp = now_secs() + 600;
    for (what, id) in bad_ids() {
        let as_user = signed(&Claims {
            sub: id.clone(),
            exp,
            device: None,
            iss: None,
            aud: None,
        });
        let status = upgrade_status(addr, &format!("token={as_user}")).await;
        assert_eq!(status, 401, "sub {what} ({id:?})");
        let as_claimed_device = signed(&Claims {
            sub: unique("eve"),
            exp,
            device: Some(id.clone()),
            iss: None,
            aud: None,
        });
        let status = upgrade_status(addr, &format!("token={as_claimed_device}")).await;
        assert_eq!(status, 401, "device claim {what} ({id:?})");
        let query = format!(
            "token={}&device={}",
            token(&unique("eve")),
            query_value(&id)
        );
        let status = upgrade_status(addr, &query).await;
        assert_eq!(status, 400, "?device= {what} ({id:?})");
    }
    // 64 characters is an id.
    let longest = "y".repeat(64);
    let query = format!("token={}&device={longest}", token(&longest));
    assert_eq!(upgrade_status(addr, &query).await, 101);
}

#[tokio::test]
async fn ids_that_are_not_ids_in_a_send_get_bad_id_and_the_socket_goes_on() {
    let (eve, bob) = (unique("eve"), unique("bob"));
    let mut e = Client::connect(0, &eve, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let text = json!({"kind": "text", "text": "hello"});
    for (what, id) in bad_ids() {
        let fresh = uuid::Uuid::new_v4().to_string();
        for (place, frame) in [
            (
                "to user",
                json!({"type": "send", "id": fresh, "to": format!("user:{id}"), "body": text}),
            ),
            (
                "to group",
                json!({"type": "send", "id": fresh, "to": format!("group:{id}"), "body": text}),
            ),
            (
                "client id",
                json!({"type": "send", "id": id, "to": format!("user:{bob}"), "body": text}),
            ),
        ] {
            let answer = e.request(frame).await;
            assert_eq!(answer["type"], "error", "{place} {what}: {answer}");
            assert_eq!(
                answer["code"], "bad_id",
                "{place} {what} ({id:?}): {answer}"
            );
        }
        // A file id that is not an id is answered like an unknown file.
        let media = json!({"kind": "image", "media_id": id, "mime": "image/png"});
        let answer = e
            .request(
                json!({"type": "send", "id": fresh, "to": format!("user:{bob}"), "body": media}),
            )
            .await;
        assert_eq!(answer["code"], "forbidden", "media id {what}: {answer}");
    }
    // 64 characters is an id: as a recipient and as a client id it is sent; as a group
    // it is a group that does not exist.
    let longest = "z".repeat(64);
    let sent = e
        .send_to_with_id(&format!("user:{longest}"), &longest, "to the longest id")
        .await;
    assert_eq!(sent["type"], "sent", "{sent}");
    let answer = e
        .send_to_with_id(&format!("group:{longest}"), "c64", "to no group")
        .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    let nothing = b.messages_within(Duration::from_millis(500)).await;
    assert!(nothing.is_empty(), "Bob got refused sends: {nothing:?}");
    still_chats(&mut e, &mut b).await;
}

#[tokio::test]
async fn frames_of_the_wrong_shape_get_bad_frame_and_the_socket_goes_on() {
    let (eve, bob) = (unique("eve"), unique("bob"));
    let mut e = Client::connect(0, &eve, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    // Objects with a `ref`: the error carries it.
    for frame in [
        json!({"type": "ack", "seq": "5"}),
        json!({"type": "ack", "seq": -1}),
        json!({"type": "ack"}),
        json!({"type": "send", "id": "c1", "to": 5, "body": {"kind": "text", "text": "x"}}),
        json!({"type": "send", "id": "c1", "to": format!("user:{bob}"), "body": "x"}),
        json!({"type": "send", "id": "c1", "to": format!("user:{bob}"), "body": {"kind": "hologram"}}),
        json!({"type": "send", "id": 7, "to": format!("user:{bob}"), "body": {"kind": "text", "text": "x"}}),
        json!({"type": "history", "conv": format!("dm:{eve}:{eve}"), "limit": "ten"}),
        json!({"type": "typing", "conv": format!("dm:{eve}:{eve}"), "state": "dancing"}),
        json!({"type": "presence_subscribe", "users": bob}),
        json!({"type": "PING"}),
        json!({"type": null}),
        json!({}),
    ] {
        let answer = e.request(frame.clone()).await;
        assert_eq!(answer["type"], "error", "{frame} → {answer}");
        assert_eq!(answer["code"], "bad_frame", "{frame} → {answer}");
    }
    // Anything else: the error has no `ref` to carry.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    for frame in [
        "[]",
        r#"[{"type":"ping","ref":"p"}]"#,
        "42",
        r#""ping""#,
        "null",
        "true",
        "",
        " ",
        r#"{"type":"ping","ref":7}"#,
        r#"{"type":"ping","ref":"p"} {"type":"ping"}"#,
        r#"{"type":"ping","ref":"p""#,
        &deep,
    ] {
        e.send_raw(frame).await;
        let answer = e.wait_for("an answer", |_| true).await;
        let shown = &frame[..frame.len().min(40)];
        assert_eq!(answer["type"], "error", "{shown} → {answer}");
        assert_eq!(answer["code"], "bad_frame", "{shown} → {answer}");
    }
    still_chats(&mut e, &mut b).await;
}

/// The next text frame on `socket`, as JSON.
async fn next_text(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("an answer")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn a_binary_frame_gets_bad_frame_and_the_socket_goes_on() {
    let (eve, bob) = (unique("eve"), unique("bob"));
    let url = format!(
        "ws://{}/v1/ws?token={}&device=phone",
        system().gateways[0],
        token(&eve)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(next_text(&mut socket).await["type"], "hello");
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    for payload in [
        br#"{"type":"ping","ref":"b"}"#.to_vec(),
        vec![0, 159, 146, 150],
    ] {
        socket.send(Message::binary(payload)).await.unwrap();
        let answer = next_text(&mut socket).await;
        assert_eq!(answer["code"], "bad_frame", "{answer}");
    }
    socket
        .send(Message::text(r#"{"type":"ping","ref":"after"}"#))
        .await
        .unwrap();
    let pong = next_text(&mut socket).await;
    assert_eq!(pong, json!({"type": "pong", "ref": "after"}));
    let send = json!({
        "type": "send", "id": "after-binary", "to": format!("user:{bob}"),
        "body": {"kind": "text", "text": "after a binary frame"}, "ref": "s",
    });
    socket.send(Message::text(send.to_string())).await.unwrap();
    // Eve's own copy of the message may come before its `sent` (docs/PROTOCOL.md).
    let mut sent = next_text(&mut socket).await;
    if sent["type"] == "msg" && sent["from"] == eve.as_str() {
        sent = next_text(&mut socket).await;
    }
    assert_eq!(sent["type"], "sent", "{sent}");
    b.wait_for_text("after a binary frame").await;
}

/// A ping frame padded with an ignored field to exactly `len` bytes.
fn padded_ping(len: usize) -> Vec<u8> {
    let head = r#"{"type":"ping","ref":"big","pad":""#;
    let tail = r#""}"#;
    let mut frame = head.as_bytes().to_vec();
    frame.resize(len - tail.len(), b'x');
    frame.extend_from_slice(tail.as_bytes());
    frame
}

/// Alice, on the other gateway, still reaches Bob, and `offender` can connect again.
async fn others_unaffected(alice: &mut Client, bob: &mut Client, offender: &str) {
    let text = format!("unaffected {}", unique("t"));
    let bob_user = bob.user.clone();
    alice.send_text(&bob_user, &text).await;
    bob.wait_for_text(&text).await;
    let mut again = Client::connect(0, offender, "phone", 0).await;
    let pong = again.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn a_frame_over_64_kib_ends_that_socket_and_nobody_else_notices() {
    let (eve, alice, bob) = (unique("eve"), unique("alice"), unique("bob"));
    let addr = system().gateways[0];
    let mut a = Client::connect(1, &alice, "phone", 0).await;
    let mut b = Client::connect(0, &bob, "phone", 0).await;

    // Exactly 64 KiB is still a frame.
    let mut raw = RawSocket::open(addr, &eve, None).await;
    raw.send_frame(true, TEXT, &padded_ping(64 * 1024))
        .await
        .unwrap();
    let (opcode, pong) = raw.next_frame().await.expect("an answer");
    assert_eq!(opcode, TEXT);
    assert_eq!(
        serde_json::from_slice::<Value>(&pong).unwrap(),
        json!({"type": "pong", "ref": "big"})
    );

    // One byte more, in one frame or in two fragments: the socket ends.
    let _ = raw
        .send_frame(true, TEXT, &padded_ping(64 * 1024 + 1))
        .await;
    let (ending, _) = raw.ending(Duration::from_secs(10)).await;
    assert!(
        matches!(ending, Ending::Close(Some(1009)) | Ending::Dropped),
        "{ending:?}"
    );
    let mut raw = RawSocket::open(addr, &eve, None).await;
    let big = padded_ping(64 * 1024 + 1);
    let (first, second) = big.split_at(40 * 1024);
    let _ = raw.send_frame(false, TEXT, first).await;
    let _ = raw.send_frame(true, CONTINUATION, second).await;
    let (ending, _) = raw.ending(Duration::from_secs(10)).await;
    assert!(
        matches!(ending, Ending::Close(Some(1009)) | Ending::Dropped),
        "{ending:?}"
    );
    others_unaffected(&mut a, &mut b, &eve).await;
}

#[tokio::test]
async fn a_frame_over_64_kib_is_closed_with_1009() {
    let mut raw = RawSocket::open(system().gateways[0], &unique("eve"), None).await;
    let _ = raw
        .send_frame(true, TEXT, &padded_ping(64 * 1024 + 1))
        .await;
    let (ending, _) = raw.ending(Duration::from_secs(10)).await;
    assert_eq!(ending, Ending::Close(Some(1009)));
}

/// A ping whose `ref` holds bytes that are not UTF-8.
const NOT_UTF8: &[u8] = b"{\"type\":\"ping\",\"ref\":\"\xff\xfe\xc3\"}";

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_ends_that_socket_and_nobody_else_notices() {
    let (eve, alice, bob) = (unique("eve"), unique("alice"), unique("bob"));
    let addr = system().gateways[0];
    let mut a = Client::connect(1, &alice, "phone", 0).await;
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    let mut raw = RawSocket::open(addr, &eve, None).await;
    let _ = raw.send_frame(true, TEXT, NOT_UTF8).await;
    let (ending, _) = raw.ending(Duration::from_secs(10)).await;
    assert!(
        matches!(ending, Ending::Close(Some(1007)) | Ending::Dropped),
        "{ending:?}"
    );
    others_unaffected(&mut a, &mut b, &eve).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_is_closed_with_1007() {
    let mut raw = RawSocket::open(system().gateways[0], &unique("eve"), None).await;
    let _ = raw.send_frame(true, TEXT, NOT_UTF8).await;
    let (ending, _) = raw.ending(Duration::from_secs(10)).await;
    assert_eq!(ending, Ending::Close(Some(1007)));
}

const URLS_VAR: &str = "NATTER_E2E_BAD_INPUT_URLS";
const REDIS_VAR: &str = "NATTER_E2E_BAD_INPUT_REDIS";
/// The child gateway's write timeout.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs a gateway with a 1 s write timeout until killed, when started by the test below.
#[test]
#[ignore = "a child process of the never-reading client test, not a test"]
fn gateway_process() {
    child::gateway_process(URLS_VAR, "never-read-gateway", |config| {
        config.limits.write_timeout_ms = WRITE_TIMEOUT.as_millis() as u64;
        if let Ok(redis) = std::env::var(REDIS_VAR) {
            config.redis.url = redis;
        }
    });
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_while_others_are_served_and_memory_stays_bounded() {
    const MESSAGES: usize = 2_400;
    const BATCH: usize = 40;
    let system = system();
    let (gateway, addr) = {
        let env = [
            (URLS_VAR, system.nats_urls.as_str()),
            (REDIS_VAR, system.redis_url.as_str()),
        ];
        let (process, addr) = TestProcess::start_announcing("gateway_process", &env, "listening ");
        (process, addr.parse::<SocketAddr>().unwrap())
    };
    wait_healthy(addr).await;
    let (alice, bob, carol, dave) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("dave"),
    );
    // Bob's device on the child gateway never reads (and has a small receive buffer);
    // Carol and Dave chat on the same gateway; Alice floods Bob from a shared gateway.
    let mut bob_socket = RawSocket::open(addr, &bob, Some(4096)).await;
    let mut c = Client::connect_to(addr, &carol, "phone", 0).await;
    let mut d = Client::connect_to(addr, &dave, "phone", 0).await;
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = memory_mib(gateway.pid(), "VmRSS:");

    let bulk = "x".repeat(30 * 1024);
    let started = std::time::Instant::now();
    let mut slowest_chat = Duration::ZERO;
    for batch in 0..MESSAGES / BATCH {
        for i in 0..BATCH {
            a.send_json(json!({
                "type": "send", "id": format!("bulk-{batch}-{i}"), "to": format!("user:{bob}"),
                "body": {"kind": "text", "text": format!("{batch}/{i} {bulk}")},
                "ref": format!("bulk-{batch}-{i}"),
            }))
            .await;
        }
        for i in 0..BATCH {
            let reference = format!("bulk-{batch}-{i}");
            let answer = a.wait_for("sent", |f| f["ref"] == reference.as_str()).await;
            assert_eq!(answer["type"], "sent", "{answer}");
        }
        // Alice's own copies come back to her phone; she has them all already.
        a.pending.clear();
        // Meanwhile Carol and Dave chat on Bob's gateway.
        let chat = std::time::Instant::now();
        let text = format!("meanwhile {batch}");
        c.send_text(&dave, &text).await;
        d.wait_for_text(&text).await;
        slowest_chat = slowest_chat.max(chat.elapsed());
    }
    let flood_time = started.elapsed();
    let peak = memory_mib(gateway.pid(), "VmHWM:");
    let flood_mib = (MESSAGES * bulk.len()) as f64 / (1024.0 * 1024.0);

    // Bob's socket was closed by the gateway: reading it now gets what the buffers held,
    // then the end, well short of everything sent.
    let (ending, received) = bob_socket.ending(Duration::from_secs(30)).await;
    eprintln!(
        "never-reading client: {MESSAGES} messages ({flood_mib:.0} MiB) in {:.1} s; it got \
         {received} before the gateway ended it ({ending:?}); the gateway's RSS idle \
         {idle:.1} MiB, peak {peak:.1} MiB; slowest chat meanwhile {:?} ({} build)",
        flood_time.as_secs_f64(),
        slowest_chat,
        natter_e2e::build_profile(),
    );
    assert!(
        matches!(ending, Ending::Close(Some(1013)) | Ending::Dropped),
        "{ending:?}"
    );
    assert!(
        received < MESSAGES / 2,
        "the gateway went on writing to a client that did not read ({received} frames)"
    );
    assert!(
        peak < idle + flood_mib / 3.0,
        "the gateway peaked at {peak:.1} MiB (idle {idle:.1} MiB) for a {flood_mib:.0} MiB flood"
    );
    assert!(
        slowest_chat < Duration::from_secs(5),
        "others waited {slowest_chat:?}"
    );
    // Carol's socket on that gateway is still fine.
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}
