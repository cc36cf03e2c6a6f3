//! Media cannot take the storage messages need, and one user cannot take everyone's:
//! uploads have a daily quota per user (429 `quota_exceeded`), all files together are
//! bounded (the media stream's `max_bytes`, refusing new files: 507 `storage_full`), and
//! while media is full, chat (and sharing files already stored) goes on.
//!
//! The gateways of this test binary bound all media to 4 MiB and each user to 3 MiB a day.

use natter_e2e::{
    Client,
    client::token,
    http::{Body, Response, request},
    system::{self, Options, configure},
    test_file, unique,
};
use serde_json::json;

const MIB: usize = 1024 * 1024;
const PNG_HEAD: &[u8] = b"\x89PNG\r\n\x1a\n";

fn setup() {
    configure(Options {
        media_max_total_bytes: 4 * MIB as u64,
        media_mib_per_day: 3,
        ..Options::default()
    });
}

async fn upload(user: &str, bytes: &[u8]) -> Response {
    let auth = format!("Bearer {}", token(user));
    request(
        system::system().gateways[0],
        "POST",
        "/v1/media",
        &[("Authorization", &auth), ("Content-Type", "image/png")],
        Body::Bytes(bytes),
    )
    .await
}

#[tokio::test]
async fn uploads_have_a_daily_quota_and_a_full_media_store_stops_only_uploads() {
    setup();
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;

    // Alice's day: three 1 MiB files, then the quota.
    let mut ids = Vec::new();
    for seed in 0..3 {
        let stored = upload(&alice, &test_file(PNG_HEAD, MIB, seed)).await;
        assert_eq!(stored.status, 201, "{:?}", stored.json());
        ids.push(stored.json()["id"].as_str().unwrap().to_owned());
    }
    let over = upload(&alice, &test_file(PNG_HEAD, 1024, 9)).await;
    assert_eq!(over.status, 429, "{:?}", over.json());
    assert_eq!(over.json()["error"], "quota_exceeded");

    // 3 MiB of the 4 are used: bob (within his own quota) cannot store 1 MiB more, and
    // what he tried is not left behind; a small file still fits.
    let full = upload(&bob, &test_file(PNG_HEAD, MIB, 5)).await;
    assert_eq!(full.status, 507, "{:?}", full.json());
    assert_eq!(full.json()["error"], "storage_full");
    let small = upload(&bob, &test_file(PNG_HEAD, 64 * 1024, 6)).await;
    assert_eq!(small.status, 201, "{:?}", small.json());
    let still_full = upload(&carol, &test_file(PNG_HEAD, MIB, 7)).await;
    assert_eq!(still_full.status, 507, "{:?}", still_full.json());

    // Chat goes on, and a file already stored is shared and fetched as before.
    a.send_text(&bob, "the store is full, chat is not").await;
    b.wait_for_text("the store is full, chat is not").await;
    let shared = a
        .request(json!({
            "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": format!("user:{bob}"),
            "body": {"kind": "image", "media_id": ids[0], "mime": "image/png"},
        }))
        .await;
    assert_eq!(shared["type"], "sent", "{shared}");
    b.wait_for("the image", |f| f["body"]["media_id"] == ids[0].as_str())
        .await;
    let auth = format!("Bearer {}", token(&bob));
    let fetched = request(
        system::system().gateways[1],
        "GET",
        &format!("/v1/media/{}", ids[0]),
        &[("Authorization", &auth)],
        Body::None,
    )
    .await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body.len(), MIB);
}
