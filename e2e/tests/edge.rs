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
    natter_e2e::system::test_settings(&mut config);
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

/// The status code of the response `stream` gets within `patience`, if any.
async fn status_within(stream: &mut TcpStream, patience: Duration) -> Option<u16> {
    let mut head = [0u8; 12];
    match tokio::time::timeout(patience, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&head[9..12]).parse().ok(),
        _ => None,
    }
}

/// A request head with a promised body of which only the first byte comes.
async fn stalled_post(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 100000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Slowloris on request bodies, and one host holding every connection slot: a request
/// without a token is answered before its body is read, a body that does not come is
/// given up after the body deadline, one address holds at most its share of the slots,
/// and a client elsewhere still connects and chats.
#[tokio::test]
async fn stalled_bodies_and_one_host_s_flood_do_not_keep_others_out() {
    const FLOOD: usize = 800;
    let gw = gateway("stalled-bodies", |c| {
        c.limits.body_timeout_ms = 1_000;
        c.limits.handshake_timeout_ms = 60_000;
        c.limits.max_connections = 600;
        c.limits.max_connections_per_address = 200;
        c.web.dev_sign_in = true;
    })
    .await;

    let mut unauthenticated = stalled_post(gw.addr, "/v1/devices").await;
    assert_eq!(
        status_within(&mut unauthenticated, Duration::from_secs(2)).await,
        Some(401),
        "no token: refused before the body"
    );
    let mut sign_in = stalled_post(gw.addr, "/v1/dev/sign-in").await;
    assert_eq!(
        status_within(&mut sign_in, Duration::from_secs(5)).await,
        Some(408),
        "a sign-in body that never comes is given up"
    );

    // One host (127.0.0.2) opens more connections than the gateway has slots, each with
    // half a request head.
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(gw.addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n")
            .await;
        flood.push(stream);
    }
    let closed = futures_util::future::join_all(
        flood
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(3))),
    )
    .await;
    let kept = closed.iter().filter(|closed| !**closed).count();
    assert!(kept <= 200, "one address holds {kept} connections");

    // Everyone else goes on: a sign-in and a chat through this gateway.
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect_to(gw.addr, &alice, "phone", 0),
    )
    .await
    .expect("a client from another address connects during the flood");
    let mut b = Client::connect(0, &bob, "phone", 0).await;
    a.send_text(&bob, "still here").await;
    b.wait_for_text("still here").await;
    let mut sign_in = TcpStream::connect(gw.addr).await.unwrap();
    let body = format!(r#"{{"user":"{alice}"}}"#);
    let request = format!(
        "POST /v1/dev/sign-in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sign_in.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(
        status_within(&mut sign_in, Duration::from_secs(5)).await,
        Some(200)
    );
    drop(flood);
}

/// Every `/v1` answer that is not a success is JSON `{error, message}`, axum's own
/// refusals included; media downloads cannot be sniffed or run as pages.
#[tokio::test]
async fn api_errors_are_json_and_media_is_served_inert() {
    let addr = system().gateways[0];
    for request in [
        "GET /v1/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "DELETE /v1/media HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 404") || head.starts_with("HTTP/1.1 405"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert!(json["error"].is_string() && json["message"].is_string());
    }
}

/// A socket does not outlive its token: at its `exp` the socket is closed with 4001 and
/// the client must come back with a fresh token; a bystander's socket goes on.
#[tokio::test]
async fn a_socket_is_closed_with_4001_when_its_token_expires() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};
    let gw = gateway("token-expiry", |c| c.limits.ping_every_ms = 300).await;
    let (short, bystander) = (unique("short"), unique("bystander"));
    let token = natter_gateway::auth::mint_hs256(
        natter_e2e::system::SECRET.as_bytes(),
        &short,
        None,
        2,
        None,
        None,
    )
    .unwrap();
    let url = format!("ws://{}/v1/ws?token={token}&device=phone", gw.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut other = Client::connect_to(gw.addr, &bystander, "phone", 0).await;
    let opened = tokio::time::Instant::now();
    let closed = async {
        while let Some(frame) = socket.next().await {
            if let Ok(Message::Close(close)) = frame {
                return close;
            }
        }
        None
    };
    // The bystander keeps talking (and so answers keepalives) until then.
    let bystander_talks = async {
        loop {
            assert_eq!(other.request(json!({"type": "ping"})).await["type"], "pong");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            close = closed => close,
            () = bystander_talks => unreachable!(),
        }
    })
    .await
    .expect("closed within 10 s")
    .expect("with a close frame");
    assert_eq!(close.code, CloseCode::from(4001), "{close:?}");
    assert!(
        opened.elapsed() >= Duration::from_millis(500),
        "not before it expired"
    );
    assert_eq!(other.request(json!({"type": "ping"})).await["type"], "pong");
}

/// A token can stay out of the URL (and so out of access logs): offered as the WebSocket
/// subprotocol `bearer.<jwt>` next to `natter.v1`, which the gateway selects.
#[tokio::test]
async fn a_token_offered_as_a_subprotocol_opens_the_socket_and_a_bad_one_is_refused() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};
    let addr = system().gateways[0];
    let open = |token: String| async move {
        let mut request = format!("ws://{addr}/v1/ws?device=phone")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&format!("natter.v1, bearer.{token}")).unwrap(),
        );
        tokio_tungstenite::connect_async(request).await
    };
    let (mut socket, response) = open(token(&unique("sub"))).await.expect("upgraded");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "natter.v1"
    );
    socket
        .send(Message::text(r#"{"type":"ping","ref":"p"}"#))
        .await
        .unwrap();
    let pong = loop {
        match socket.next().await.expect("a frame").unwrap() {
            Message::Text(text) if text.contains("pong") => break text,
            _ => continue,
        }
    };
    assert!(pong.contains(r#""ref":"p""#), "{pong}");
    match open("not-a-token".into()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("a bad token was not refused: {:?}", other.map(|_| ())),
    }
}

/// Development sign-in mints a token for whoever asks: a gateway refuses to start with it
/// unless its tokens are signed with the public development secret anyway and it listens
/// on loopback only; and no gateway accepts the public secret as its configured one.
#[tokio::test]
async fn a_gateway_will_not_mint_real_tokens_through_development_sign_in() {
    use natter_gateway::GatewayError;
    let sys = system();
    let start = |configure: fn(&mut natter_gateway::config::Config)| {
        let nats = nats_settings(&sys.nats_urls, "gateway", "dev-sign-in");
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut config = natter_gateway::config::Config {
                nats,
                metrics_listen: None,
                ..Default::default()
            };
            configure(&mut config);
            let run = natter_gateway::run(listener, config, std::future::pending());
            tokio::time::timeout(Duration::from_secs(5), run).await
        }
    };
    let with_own_secret = start(|c| {
        c.jwt.secret = Some("a-production-secret-of-at-least-32-bytes".into());
        c.web.dev_sign_in = true;
    });
    assert!(matches!(
        with_own_secret.await,
        Ok(Err(GatewayError::DevSignIn(_)))
    ));
    // Configured to listen on every address (this test binds loopback all the same).
    let on_every_address = start(|c| {
        c.jwt.allow_dev_secret = true;
        c.web.dev_sign_in = true;
        c.listen = "0.0.0.0:8080".parse().unwrap();
    });
    assert!(matches!(
        on_every_address.await,
        Ok(Err(GatewayError::DevSignIn(_)))
    ));
    let public_secret =
        start(|c| c.jwt.secret = Some(natter_gateway::config::DEV_JWT_SECRET.into()));
    assert!(matches!(
        public_secret.await,
        Ok(Err(GatewayError::PublicSecret))
    ));
}
