//! Clients that move files at a trickle cannot hold the gateway's connection slots: an
//! upload that falls behind the slowest pace allowed is refused (408) though it never
//! pauses long, a download read slower has its connection closed, and one user moves at
//! most so many files at once (429 `too_many_transfers`). Everyone else's files move
//! meanwhile.
//!
//! Each test runs its own gateway on the shared cluster with the pace under test: the
//! shared gateways keep the defaults.

use std::{net::SocketAddr, time::Duration};

use natter_e2e::{
    client::token,
    http::{Body, Response, request},
    system::{ExtraGateway, nats_settings, system},
    test_file, unique,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// A gateway on the shared cluster and Redis, with a 1 s body deadline and this pace.
async fn gateway(name: &str, bytes_per_sec: u64, transfers_per_user: usize) -> ExtraGateway {
    let sys = system();
    let redis = sys.redis_url.clone();
    ExtraGateway::start_with(nats_settings(&sys.nats_urls, "gateway", name), |config| {
        config.redis.url = redis;
        config.limits.body_timeout_ms = 1_000;
        config.limits.min_transfer_bytes_per_sec = bytes_per_sec;
        config.limits.transfers_per_user = transfers_per_user;
    })
    .await
}

async fn upload(addr: SocketAddr, user: &str, bytes: &[u8]) -> Response {
    let auth = format!("Bearer {}", token(user));
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/octet-stream"),
    ];
    request(addr, "POST", "/v1/media", &headers, Body::Bytes(bytes)).await
}

/// A file of `len` bytes stored by `user` through a shared gateway: its id.
async fn stored_file(user: &str, len: usize) -> String {
    let uploaded = upload(system().gateways[0], user, &test_file(b"", len, 7)).await;
    assert_eq!(uploaded.status, 201, "{:?}", uploaded.json());
    uploaded.json()["id"].as_str().unwrap().to_owned()
}

async fn download(addr: SocketAddr, user: &str, id: &str) -> Response {
    let auth = format!("Bearer {}", token(user));
    let path = format!("/v1/media/{id}");
    request(addr, "GET", &path, &[("Authorization", &auth)], Body::None).await
}

/// A download of `id` whose response is not read: a small receive buffer, so the file
/// cannot all sit in the kernel's buffers.
async fn stalled_download(addr: SocketAddr, user: &str, id: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * KIB as u32).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/media/{id} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\r\n",
        token(user)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Everything `stream` still delivers until the server closes it (or `patience` passes:
/// then `None`).
async fn read_to_close(stream: &mut TcpStream, patience: Duration) -> Option<usize> {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * KIB];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(total),
            Ok(Ok(n)) => total += n,
        }
    }
}

/// An upload that never pauses for a whole second but comes at ~200 bytes/s, where the
/// gateway asks for 16 KiB/s after the first second: 408 within seconds, and another
/// user's upload through the same gateway is stored meanwhile.
#[tokio::test]
async fn an_upload_slower_than_the_pace_allowed_is_refused() {
    let gw = gateway("slow-upload", 16 * KIB as u64, 16).await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        token(&unique("trickler")),
        64 * KIB
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let addr = gw.addr;
    let bystander = tokio::spawn(async move {
        let file = test_file(b"", 256 * KIB, 3);
        upload(addr, &unique("bystander"), &file).await
    });
    let (mut answers, mut trickles) = slow.split();
    // 64 bytes every 300 ms until the answer comes.
    let trickle = async {
        for _ in 0..100 {
            if trickles.write_all(&[b'x'; 64]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        std::future::pending::<()>().await;
    };
    let answer = async {
        let mut head = [0u8; 12];
        answers.read_exact(&mut head).await.unwrap();
        let mut rest = vec![0u8; 4 * KIB];
        let n = tokio::time::timeout(Duration::from_secs(1), answers.read(&mut rest))
            .await
            .map_or(0, |read| read.unwrap_or(0));
        [&head[..], &rest[..n]].concat()
    };
    let answer = tokio::select! {
        () = trickle => unreachable!(),
        answer = answer => String::from_utf8_lossy(&answer).into_owned(),
    };
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "the trickling upload's answer: {answer:?}"
    );
    assert!(answer.contains("\"timeout\""), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused once it fell behind, not when it ended"
    );

    let stored = bystander.await.unwrap();
    assert_eq!(
        stored.status,
        201,
        "the bystander's file: {:?}",
        stored.json()
    );
}

/// A download that is not read has its connection closed once the file's time at the
/// slowest pace allowed (1 s + 8 MiB at 2 MiB/s here) is over, before the file is through;
/// the same user's download of the same file on another connection arrives whole.
#[tokio::test]
async fn a_download_read_slower_than_the_pace_allowed_is_cut_off() {
    let gw = gateway("slow-download", 2 * MIB as u64, 16).await;
    let alice = unique("alice");
    let id = stored_file(&alice, 8 * MIB).await;

    let mut stalled = stalled_download(gw.addr, &alice, &id).await;
    let whole = download(gw.addr, &alice, &id).await;
    assert_eq!(whole.status, 200);
    assert_eq!(
        whole.body,
        test_file(b"", 8 * MIB, 7),
        "the file arrives whole"
    );

    tokio::time::sleep(Duration::from_secs(8)).await;
    let got = read_to_close(&mut stalled, Duration::from_secs(20))
        .await
        .expect("the gateway closes the stalled download");
    assert!(
        got < 8 * MIB,
        "the stalled download got {got} bytes: it was not cut off"
    );
}

/// With two transfers per user: two stalled downloads hold both, a third is refused with
/// 429 while another user still uploads, and once the stalled ones are gone the user
/// downloads again.
#[tokio::test]
async fn one_user_moves_at_most_so_many_files_at_once() {
    let gw = gateway("transfer-cap", 4 * KIB as u64, 2).await;
    let alice = unique("alice");
    let id = stored_file(&alice, 8 * MIB).await;
    let first = stalled_download(gw.addr, &alice, &id).await;
    let second = stalled_download(gw.addr, &alice, &id).await;
    // Both are in progress once their answers have started.
    let mut refused = None;
    for _ in 0..50 {
        let third = download(gw.addr, &alice, &id).await;
        if third.status == 429 {
            refused = Some(third);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("a third transfer is refused");
    assert_eq!(refused.json()["error"], "too_many_transfers");

    let other = upload(gw.addr, &unique("bob"), &test_file(b"", 64 * KIB, 5)).await;
    assert_eq!(other.status, 201, "another user is not held up");

    drop((first, second));
    let mut again = None;
    for _ in 0..50 {
        let attempt = download(gw.addr, &alice, &id).await;
        if attempt.status == 200 {
            again = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = again.expect("the user downloads again once the stalled transfers end");
    assert_eq!(again.body.len(), 8 * MIB);
}
