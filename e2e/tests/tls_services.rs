//! Services reach NATS and Redis over TLS when configured: a nats-server and a
//! redis-server that accept only TLS, with a certificate generated here, are used by the
//! same connection code the gateway and workers run (`natter_fabric::connect`,
//! `natter_redis::connect`), and a client without TLS gets nowhere.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use natter_e2e::cluster::{free_port, nats_server_binary, spawn_bound};
use natter_redis::{RedisSettings, rate_limit::Decision};

/// A certificate for 127.0.0.1 and its key, as PEM files in a fresh directory.
fn certificate() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("natter-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    (dir, cert_file, key_file)
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}

#[tokio::test]
async fn services_talk_to_nats_over_tls() {
    let (dir, cert, key) = certificate();
    let port = free_port();
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n\
             tls {{ cert_file: {cert:?}, key_file: {key:?} }}\n",
            dir.join("store")
        ),
    )
    .unwrap();
    let mut server = spawn_bound(
        Command::new(nats_server_binary())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_listening(port).await;

    let settings = natter_fabric::NatsSettings {
        urls: format!("nats://127.0.0.1:{port}"),
        replicas: 1,
        tls_ca_file: Some(cert.clone()),
        ..Default::default()
    };
    let (events, _) = tokio::sync::broadcast::channel(16);
    let client = natter_fabric::connect(&settings, events.clone(), Duration::from_secs(20))
        .await
        .expect("a TLS connection to NATS");
    // JetStream works over it: the streams are created and a message is stored.
    let js = async_nats::jetstream::new(client.clone());
    natter_fabric::streams::ensure_with_patience(&js, 1, Duration::from_secs(30))
        .await
        .expect("streams over TLS");
    let ack = js
        .publish("inbox.tls-user", "over tls".into())
        .await
        .unwrap()
        .await
        .expect("stored");
    assert!(ack.sequence >= 1);

    // Without TLS the server does not let a client in.
    let plain = natter_fabric::NatsSettings {
        tls_ca_file: None,
        ..settings.clone()
    };
    let refused = natter_fabric::connect(&plain, events, Duration::from_millis(500)).await;
    assert!(refused.is_err(), "a plain connection was accepted");
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn services_talk_to_redis_over_tls() {
    let (dir, cert, key) = certificate();
    let port = free_port();
    let mut server = spawn_bound(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_listening(port).await;

    let settings = RedisSettings {
        url: format!("rediss://127.0.0.1:{port}"),
        tls_ca_file: Some(cert),
        ..RedisSettings::default()
    };
    let client = natter_redis::connect(&settings).await.unwrap();
    assert!(
        natter_redis::ClientLike::is_connected(&client),
        "TLS connection to Redis"
    );
    let limiter = natter_redis::rate_limit::RateLimiter::new(client, "tls:", "send", 1.0, 1.0);
    assert_eq!(limiter.check("u").await.unwrap(), Decision::Allowed);
    assert!(matches!(
        limiter.check("u").await.unwrap(),
        Decision::Limited { .. }
    ));

    // A client without TLS gets no answer.
    let plain = natter_redis::connect(&RedisSettings {
        url: format!("redis://127.0.0.1:{port}"),
        ..RedisSettings::default()
    })
    .await
    .unwrap();
    assert!(!natter_redis::ClientLike::is_connected(&plain));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(dir);
}
