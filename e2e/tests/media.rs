//! Media end to end on the shared system: upload, send in a one-on-one or group chat,
//! authorized download with Range, and refusals that leave nothing stored.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use natter_e2e::{
    Client,
    client::token,
    http::{Body, Response, request},
    system::{self, ExtraGateway, nats_settings},
    test_file, unique,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MP4_HEAD: &[u8] = b"\0\0\0\x18ftypmp42";
const PNG_HEAD: &[u8] = b"\x89PNG\r\n\x1a\n";
const MIB: usize = 1024 * 1024;

/// Tests that count what is stored take this, so no other upload runs meanwhile.
static STORE_COUNT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn upload(gateway: usize, user: &str, mime: &str, bytes: &[u8]) -> Response {
    let auth = format!("Bearer {}", token(user));
    let addr = system::system().gateways[gateway];
    request(
        addr,
        "POST",
        "/v1/media",
        &[("Authorization", &auth), ("Content-Type", mime)],
        Body::Bytes(bytes),
    )
    .await
}

async fn download(gateway: usize, user: &str, id: &str, range: Option<&str>) -> Response {
    let auth = format!("Bearer {}", token(user));
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(range) = range {
        headers.push(("Range", range));
    }
    let path = format!("/v1/media/{id}");
    request(
        system::system().gateways[gateway],
        "GET",
        &path,
        &headers,
        Body::None,
    )
    .await
}

async fn send_media(client: &mut Client, to: &str, kind: &str, id: &str, mime: &str) -> Value {
    client
        .request(json!({
            "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": to,
            "body": {"kind": kind, "media_id": id, "mime": mime, "caption": "look"},
        }))
        .await
}

/// JetStream as one of `nats/accounts.conf`'s users.
async fn nats_as(user: &str) -> jetstream::Context {
    jetstream::new(system::nats_as(user, "media-admin").await)
}

/// Messages in the media bucket's stream (chunks and metadata) and access records.
async fn stored_objects() -> (u64, u64) {
    let js = nats_as("workers").await;
    let count = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_stream(name)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages
        }
    };
    (count("OBJ_media").await, count("KV_media_access").await)
}

#[tokio::test]
async fn a_10_mib_video_round_trips_byte_exact_with_ranges_and_only_for_the_conversation() {
    let _one_at_a_time = STORE_COUNT.lock().await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let file = test_file(MP4_HEAD, 10 * MIB, 7);

    let started = Instant::now();
    let uploaded = upload(0, &alice, "video/mp4", &file).await;
    let upload_time = started.elapsed();
    assert_eq!(uploaded.status, 201, "{:?}", uploaded.json());
    let stored = uploaded.json();
    let id = stored["id"].as_str().unwrap().to_owned();
    assert!(id.len() >= 32, "unguessable id: {id}");
    assert_eq!(stored["size"], file.len());
    assert_eq!(stored["sha256"], hex_sha256(&file));
    assert_eq!(stored["mime"], "video/mp4");

    // Before it is sent, only the uploader sees it.
    assert_eq!(download(1, &bob, &id, None).await.status, 404);
    assert_eq!(
        download(0, &alice, &id, Some("bytes=0-15")).await.status,
        206
    );

    let sent = send_media(&mut a, &format!("user:{bob}"), "video", &id, "video/mp4").await;
    assert_eq!(sent["type"], "sent", "{sent}");
    let msg = b
        .wait_for("video message", |f| {
            f["type"] == "msg" && f["body"]["kind"] == "video"
        })
        .await;
    assert_eq!(msg["body"]["media_id"], id.as_str());
    assert_eq!(msg["body"]["caption"], "look");

    let started = Instant::now();
    let whole = download(1, &bob, &id, None).await;
    let download_time = started.elapsed();
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-type"), Some("video/mp4"));
    assert_eq!(whole.header("content-length"), Some("10485760"));
    assert_eq!(
        whole.header("etag").map(str::to_owned),
        Some(format!("\"{}\"", hex_sha256(&file)))
    );
    assert!(whole.body == file, "the download differs from the upload");
    // Inert: never sniffed into another type, never run as a page.
    assert_eq!(whole.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        whole.header("content-disposition").map(str::to_owned),
        Some(format!("inline; filename=\"{id}\""))
    );
    let csp = whole.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
    // Stored in the object store's own layout: its client reads the same bytes.
    let read = async {
        let store = nats_as("gateway").await.get_object_store("media").await;
        let mut object = store.unwrap().get(&id).await.unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
            .await
            .unwrap();
        bytes
    };
    let through_object_store = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("object store read within 30 s");
    assert!(through_object_store == file, "object store layout differs");
    eprintln!(
        "10 MiB: upload {:.1} MiB/s, download {:.1} MiB/s ({} build)",
        10.0 / upload_time.as_secs_f64(),
        10.0 / download_time.as_secs_f64(),
        natter_e2e::build_profile()
    );

    let part = download(1, &bob, &id, Some("bytes=5000000-5000999")).await;
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some("bytes 5000000-5000999/10485760")
    );
    assert!(part.body == file[5_000_000..5_001_000]);
    let tail = download(1, &bob, &id, Some("bytes=-100")).await;
    assert_eq!(tail.status, 206);
    assert!(tail.body == file[file.len() - 100..]);
    let beyond = download(1, &bob, &id, Some("bytes=20000000-")).await;
    assert_eq!(beyond.status, 416);

    // Nobody else, and no forged id, and no token.
    assert_eq!(download(0, &carol, &id, None).await.status, 404);
    let flipped = if id.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &id[..id.len() - 1]);
    assert_eq!(download(1, &bob, &forged, None).await.status, 404);
    assert_eq!(download(1, &bob, "not.an.id", None).await.status, 404);
    let path = format!("/v1/media/{id}");
    let anonymous = request(system::system().gateways[0], "GET", &path, &[], Body::None).await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test]
async fn group_members_fetch_shared_media_and_only_those_who_can_see_a_file_may_share_it() {
    let _one_at_a_time = STORE_COUNT.lock().await;
    let (amy, bob, cat, eve) = (unique("amy"), unique("bob"), unique("cat"), unique("eve"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut e = Client::connect(1, &eve, "phone", 0).await;
    let picture = test_file(PNG_HEAD, 300 * 1024, 11);
    let id = upload(0, &amy, "image/png", &picture).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = a
        .request(json!({"type": "group_create", "name": "Photos", "members": [bob]}))
        .await;
    let gid = group["id"].as_str().unwrap().to_owned();

    // A mime that is not the uploaded type is refused; then the right one goes through.
    let wrong = send_media(&mut a, &format!("group:{gid}"), "image", &id, "image/gif").await;
    assert_eq!(wrong["code"], "bad_request", "{wrong}");
    let sent = send_media(&mut a, &format!("group:{gid}"), "image", &id, "image/png").await;
    assert_eq!(sent["type"], "sent", "{sent}");
    b.wait_for("image", |f| f["body"]["media_id"] == id.as_str())
        .await;
    let fetched = download(1, &bob, &id, None).await;
    assert_eq!(fetched.status, 200);
    assert!(fetched.body == picture);
    assert_eq!(download(1, &cat, &id, None).await.status, 404);

    // Eve cannot see it, so she cannot share it (nor learn it exists).
    let refused = send_media(&mut e, &format!("user:{cat}"), "image", &id, "image/png").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(download(0, &cat, &id, None).await.status, 404);
    // Bob can see it, so he may forward it to Cat, who then can fetch it.
    let forwarded = send_media(&mut b, &format!("user:{cat}"), "image", &id, "image/png").await;
    assert_eq!(forwarded["type"], "sent", "{forwarded}");
    assert_eq!(download(0, &cat, &id, None).await.status, 200);
}

#[tokio::test]
async fn refused_uploads_get_a_clear_status_and_leave_nothing_stored() {
    let _one_at_a_time = STORE_COUNT.lock().await;
    let alice = unique("alice");
    let small = ExtraGateway::start_with(
        nats_settings(
            &system::system().nats_urls,
            "gateway",
            "media-limit-gateway",
        ),
        |config| config.media.max_bytes = MIB as u64,
    )
    .await;
    let auth = format!("Bearer {}", token(&alice));
    let before = stored_objects().await;

    // Declared too large: refused before reading.
    let huge = (2 * MIB).to_string();
    let declared = request(
        small.addr,
        "POST",
        "/v1/media",
        &[
            ("Authorization", &auth),
            ("Content-Type", "video/mp4"),
            ("Content-Length", &huge),
        ],
        Body::None,
    )
    .await;
    assert_eq!(declared.status, 413, "{:?}", declared.json());

    // Streamed without a length, one byte over: refused once it gets there.
    let file = test_file(MP4_HEAD, MIB + 1, 3);
    let mut chunks = file.chunks(64 * 1024).map(<[u8]>::to_vec);
    let mut next = move || chunks.next();
    let streamed = request(
        small.addr,
        "POST",
        "/v1/media",
        &[("Authorization", &auth), ("Content-Type", "video/mp4")],
        Body::Chunked(&mut next),
    )
    .await;
    assert_eq!(streamed.status, 413, "{:?}", streamed.json());
    assert_eq!(streamed.json()["error"], "too_large");
    assert_eq!(
        stored_objects().await,
        before,
        "a refused upload left chunks behind"
    );

    // Exactly the limit is fine.
    let fits = request(
        small.addr,
        "POST",
        "/v1/media",
        &[("Authorization", &auth), ("Content-Type", "video/mp4")],
        Body::Bytes(&file[..MIB]),
    )
    .await;
    assert_eq!(fits.status, 201, "{:?}", fits.json());
    let after_fit = stored_objects().await;
    assert!(after_fit.0 > before.0 && after_fit.1 == before.1 + 1);

    // A claim the bytes contradict, a type not accepted, no type, an empty file.
    let jpeg = test_file(&[0xFF, 0xD8, 0xFF, 0xE0], 200 * 1024, 5);
    let claimed_png = upload(0, &alice, "image/png", &jpeg).await;
    assert_eq!(claimed_png.status, 415);
    assert_eq!(claimed_png.json()["error"], "wrong_type");
    let exe = upload(0, &alice, "application/x-msdownload", b"MZ\x90\0").await;
    assert_eq!(exe.status, 415);
    assert_eq!(exe.json()["error"], "unsupported_type");
    let auth0 = format!("Bearer {}", token(&alice));
    let untyped = request(
        system::system().gateways[0],
        "POST",
        "/v1/media",
        &[("Authorization", &auth0)],
        Body::Bytes(b"x"),
    )
    .await;
    assert_eq!(untyped.status, 400);
    assert_eq!(upload(0, &alice, "text/plain", b"").await.status, 400);

    assert_eq!(
        stored_objects().await,
        after_fit,
        "refused uploads left something"
    );
}

/// A media message's client id re-sent with another `to` is a re-send: it is answered
/// with the first `sent`, stores nothing, and grants the new recipient nothing either.
#[tokio::test]
async fn re_sending_a_media_message_s_id_to_someone_else_grants_them_nothing() {
    let (alice, bob, eve) = (unique("alice"), unique("bob"), unique("eve"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut e = Client::connect(1, &eve, "phone", 0).await;
    let file = test_file(PNG_HEAD, 4096, 11);
    let uploaded = upload(0, &alice, "image/png", &file).await;
    assert_eq!(uploaded.status, 201);
    let id = uploaded.json()["id"].as_str().unwrap().to_owned();
    let client_id = uuid::Uuid::new_v4().to_string();
    let send = |to: &str| {
        json!({
            "type": "send", "id": client_id, "to": format!("user:{to}"),
            "body": {"kind": "image", "media_id": id, "mime": "image/png"},
        })
    };
    let first = a.request(send(&bob)).await;
    assert_eq!(first["type"], "sent", "{first}");
    let again = a.request(send(&eve)).await;
    assert_eq!(again["type"], "sent", "{again}");
    assert_eq!(again["id"], first["id"], "answered with the first message");
    assert_eq!(again["conv"], first["conv"]);

    b.wait_for("the image", |f| f["body"]["media_id"] == id.as_str())
        .await;
    assert_eq!(download(1, &bob, &id, None).await.status, 200);
    assert_eq!(download(1, &eve, &id, None).await.status, 404);
    // Eve got no message; a later one from alice reaches her first.
    a.send_text(&eve, "hello eve").await;
    let next = e.wait_for("a message", |f| f["type"] == "msg").await;
    assert_eq!(next["body"]["text"], "hello eve");
}
