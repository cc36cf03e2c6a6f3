//! The gateway's edge under hostile or careless clients: a user cannot hold more sockets
//! than allowed (over all gateways); connections that never finish their TLS handshake or
//! request are closed; browsers from origins not on the allow-list are refused; and the
//! gateway serves `wss://` and `https://` with a certificate it is given.
//!
//! Each test runs its own gateway(s) on the shared cluster and Redis with the setting
//! under test.

use std::{sync::Arc, time::Duration};

use natter_e2e::{
    Client,
    client::token,
    system::{ExtraGateway, nats_settings, system},
    unique,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A gateway on the shared cluster and Redis, configured by `configure`.
async fn gateway(
    name: &str,
    configure: impl FnOnce(&mut natter_gateway::config::Config),
) -> ExtraGateway {
    let sys = system();
    let redis = sys.redis_url.clone();
    ExtraGateway::start_with(nats_settings(&sys.nats_urls, "gateway", name), |config| {
        config.redis.url = redis;
        configure(config);
    })
    .await
}

/// The HTTP status of a WebSocket upgrade of `user` at `addr`, with these extra headers.
async fn upgrade_status(addr: std::net::SocketAddr, user: &str, extra: &[(&str, &str)]) -> u16 {
    let mut request = format!(
        "GET /v1/ws?token={}&device={} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        token(user),
        uuid::Uuid::new_v4().simple()
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

#[tokio::test]
async fn a_user_may_hold_only_so_many_sockets_over_all_gateways() {
    let first = gateway("cap-a", |c| c.limits.max_sockets_per_user = 3).await;
    let second = gateway("cap-b", |c| c.limits.max_sockets_per_user = 3).await;
    let (greedy, other) = (unique("greedy"), unique("other"));
    let a1 = Client::connect_to(first.addr, &greedy, "d1", 0).await;
    let _a2 = Client::connect_to(first.addr, &greedy, "d2", 0).await;
    let _b1 = Client::connect_to(second.addr, &greedy, "d3", 0).await;
    // A fourth anywhere is refused before any socket exists.
    assert_eq!(upgrade_status(second.addr, &greedy, &[]).await, 429);
    assert_eq!(upgrade_status(first.addr, &greedy, &[]).await, 429);
    // Someone else is not affected.
    let mut o = Client::connect_to(first.addr, &other, "phone", 0).await;
    assert_eq!(o.request(json!({"type": "ping"})).await["type"], "pong");
    // Closing one makes room.
    a1.close().await;
    let mut admitted = false;
    for _ in 0..50 {
        if upgrade_status(second.addr, &greedy, &[]).await == 101 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "a socket closed, so another may open");
}

/// Whether the server closes `stream` (EOF or reset) within `patience`.
async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 response before the close
        }
    }
}

#[tokio::test]
async fn connections_that_never_finish_their_request_are_closed() {
    let gw = gateway("slow-clients", |c| c.limits.handshake_timeout_ms = 500).await;
    // Silent after connecting.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // Half a request head, then nothing (slowloris).
    let mut partial = TcpStream::connect(gw.addr).await.unwrap();
    partial
        .write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "silent connection kept"
    );
    assert!(
        closed_within(&mut partial, Duration::from_secs(3)).await,
        "partial request kept"
    );
    // A socket that did upgrade is not subject to it.
    let mut c = Client::connect_to(gw.addr, &unique("patient"), "phone", 0).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn browsers_from_other_origins_are_refused_when_an_allow_list_is_set() {
    let gw = gateway("origins", |c| {
        c.web.allowed_origins = vec!["https://chat.example".to_owned()];
    })
    .await;
    let user = unique("web");
    let evil = [("Origin", "https://evil.example")];
    assert_eq!(upgrade_status(gw.addr, &user, &evil).await, 403);
    let good = [("Origin", "https://chat.example")];
    assert_eq!(upgrade_status(gw.addr, &user, &good).await, 101);
    assert_eq!(
        upgrade_status(gw.addr, &user, &[]).await,
        101,
        "native apps send no Origin"
    );
}

#[tokio::test]
async fn the_gateway_serves_wss_and_https_with_the_certificate_it_is_given() {
    // A self-signed certificate for 127.0.0.1, as an operator would provide.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("natter-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("gateway.crt"), dir.join("gateway.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();

    let sys = system();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = natter_gateway::config::Config {
        listen: addr,
        nats: nats_settings(&sys.nats_urls, "gateway", "tls-gateway"),
        metrics_listen: None,
        ..Default::default()
    };
    config.jwt.secret = Some(natter_e2e::system::SECRET.to_owned());
    config.redis.url.clone_from(&sys.redis_url);
    config.tls.cert_file = Some(cert_file);
    config.tls.key_file = Some(key_file);
    config.limits.handshake_timeout_ms = 500;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(natter_gateway::run(listener, config, async move {
        let _ = stopped.await;
    }));

    // A client that trusts only this certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = || async {
        for _ in 0..100 {
            if let Ok(tcp) = TcpStream::connect(addr).await
                && let Ok(stream) = connector.connect(server_name.clone(), tcp).await
            {
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no TLS connection to the gateway");
    };

    // https: health answers over TLS (once the gateway reached NATS).
    let mut healthy = false;
    for _ in 0..100 {
        let mut stream = tls().await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        if response.starts_with("HTTP/1.1 200") {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(healthy, "https://…/healthz answers 200");

    // wss: a user chats over TLS.
    let (alice, bob) = (unique("alice"), unique("bob"));
    let url = format!(
        "wss://127.0.0.1:{}/v1/ws?token={}&device=phone",
        addr.port(),
        token(&alice)
    );
    let (mut socket, _) = tokio_tungstenite::client_async(url, tls().await)
        .await
        .expect("wss handshake");
    use futures_util::{SinkExt, StreamExt};
    let send = json!({
        "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": format!("user:{bob}"),
        "body": {"kind": "text", "text": "over tls"}, "ref": "t1",
    });
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            send.to_string(),
        ))
        .await
        .unwrap();
    let answer = loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("an answer over wss")
            .expect("socket open")
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        if value["ref"] == "t1" {
            break value;
        }
    };
    assert_eq!(answer["type"], "sent", "{answer}");
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    b.wait_for_text("over tls").await;

    // Plain HTTP to the TLS port gets nowhere, and a client that never sends its
    // ClientHello is dropped after the handshake timeout.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(&dir);
}
