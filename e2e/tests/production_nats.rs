//! The production NATS template (`nats/production/`) runs as written: three nodes started
//! from `node.conf` with every secret in the environment form a JetStream cluster over
//! authenticated routes; a node without the route secret does not join; Natter's
//! services log in with nkey seeds (the servers hold only public keys) and keep the
//! local users' permissions; the local setup's public passwords, and no credentials at
//! all, are refused.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use natter_e2e::cluster::{free_port, nats_server_binary, repo_root, spawn_bound};
use natter_fabric::{NatsSettings, streams};
use tokio::sync::broadcast;

/// One user's key pair: the public key for the servers, the seed in a file for a process.
struct Key {
    public: String,
    seed_file: PathBuf,
}

fn user_key(dir: &Path, name: &str) -> Key {
    let pair = nkeys::KeyPair::new_user();
    let seed_file = dir.join(format!("{name}.nk"));
    std::fs::write(&seed_file, pair.seed().unwrap()).unwrap();
    Key {
        public: pair.public_key(),
        seed_file,
    }
}

struct Node {
    name: String,
    child: Child,
    client_port: u16,
    monitor_port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node from the template with the given environment.
fn start_node(dir: &Path, name: &str, route_port: u16, env: &[(&str, String)]) -> Node {
    let (client_port, monitor_port) = (free_port(), free_port());
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut command = Command::new(nats_server_binary());
    command
        .arg("-c")
        .arg(repo_root().join("nats/production/node.conf"))
        .arg("--store_dir")
        .arg(dir.join(name))
        .env("GOMAXPROCS", "1")
        .env("NATTER_NODE_NAME", name)
        .env("NATTER_CLIENT_LISTEN", format!("127.0.0.1:{client_port}"))
        .env("NATTER_MONITOR_LISTEN", format!("127.0.0.1:{monitor_port}"))
        .env("NATTER_ROUTE_LISTEN", format!("127.0.0.1:{route_port}"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log);
    Node {
        name: name.to_owned(),
        child: spawn_bound(&mut command),
        client_port,
        monitor_port,
    }
}

/// `GET path` from the node whose monitoring is on `port`: status and body, `None` while
/// it does not answer.
async fn monitor(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}

/// The node's monitoring answer to `path` as JSON, `None` while it does not answer.
async fn monitor_json(node: &Node, path: &str) -> Option<serde_json::Value> {
    let (_, body) = monitor(node.monitor_port, path).await?;
    serde_json::from_str(&body).ok()
}

/// The number of routes the node has, `None` while it does not answer.
async fn routes(node: &Node) -> Option<u64> {
    monitor_json(node, "/routez").await?["num_routes"].as_u64()
}

/// The server ids at the other end of the node's routes. (Counting routes does not tell
/// who is connected: a cluster's pooled and per-account routes keep coming up for a while
/// after `/healthz` answers.)
async fn route_peers(node: &Node) -> Vec<String> {
    let routez = monitor_json(node, "/routez").await.expect("routez answers");
    let routes = routez["routes"].as_array().cloned().unwrap_or_default();
    routes
        .iter()
        .filter_map(|route| route["remote_id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the node is running and answers `path` with `status`; fails with its log
/// when it exits or takes over a minute.
async fn wait_for(node: &mut Node, dir: &Path, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if monitor(node.monitor_port, path).await.map(|(s, _)| s) == Some(status) {
            return;
        }
        let exited = node.child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join(format!("{}.log", node.name)));
            panic!("{} not answering {path}: {exited:?}\n{log:?}", node.name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn settings(urls: &str) -> NatsSettings {
    NatsSettings {
        urls: urls.to_owned(),
        name: "e2e-production".into(),
        discover_servers: false,
        ..NatsSettings::default()
    }
}

#[tokio::test]
async fn the_production_template_runs_with_nkeys_and_authenticated_routes_and_refuses_dev_passwords()
 {
    let dir = std::env::temp_dir().join(format!(
        "natter-e2e-production-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (gateway, workers, sys) = (
        user_key(&dir, "gateway"),
        user_key(&dir, "workers"),
        user_key(&dir, "sys"),
    );
    // nats-server reads an environment value as configuration: one that starts with a
    // digit would be a number (and a parse error), so the secret starts with a letter.
    let secret = format!("route-{}", uuid::Uuid::new_v4().simple());
    let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_urls = |password: &str| {
        let urls: Vec<String> = route_ports
            .iter()
            .map(|port| format!("nats-route://route:{password}@127.0.0.1:{port}"))
            .collect();
        format!("[{}]", urls.join(", "))
    };
    let env = |password: &str| {
        vec![
            ("NATTER_ROUTE_PASSWORD", password.to_owned()),
            ("NATTER_ROUTES", route_urls(password)),
            ("NATTER_GATEWAY_NKEY", gateway.public.clone()),
            ("NATTER_WORKERS_NKEY", workers.public.clone()),
            ("NATTER_SYS_NKEY", sys.public.clone()),
        ]
    };
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| start_node(&dir, &format!("nats-{i}"), route_ports[i], &env(&secret)))
        .collect();

    // The cluster forms over authenticated routes and JetStream comes up.
    for node in &mut nodes {
        wait_for(node, &dir, "/healthz", 200).await;
    }
    for node in &nodes {
        let count = routes(node).await.unwrap_or(0);
        assert!(count >= 2, "{count} routes");
    }

    // A node that does not know the route secret is not let in.
    let intruder_port = free_port();
    let wrong = env("not-the-secret");

    let mut intruder = start_node(&dir, "intruder", intruder_port, &wrong);
    wait_for(&mut intruder, &dir, "/routez", 200).await;
    let varz = monitor_json(&intruder, "/varz")
        .await
        .expect("varz answers");
    let intruder_id = varz["server_id"].as_str().expect("a server id").to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(routes(&intruder).await, Some(0));
    let refusals: usize = (0..3)
        .map(|i| std::fs::read_to_string(dir.join(format!("nats-{i}.log"))).unwrap())
        .map(|log| {
            log.matches("Router connection closed: Authentication Failure")
                .count()
        })
        .sum();
    assert!(
        refusals > 0,
        "the nodes did not refuse the intruder's routes"
    );
    for node in &nodes {
        let peers = route_peers(node).await;
        assert!(!peers.is_empty(), "{} has no routes", node.name);
        assert!(
            !peers.contains(&intruder_id),
            "the intruder got a route to {}",
            node.name
        );
    }
    drop(intruder);

    let urls: Vec<String> = nodes
        .iter()
        .map(|node| format!("nats://127.0.0.1:{}", node.client_port))
        .collect();
    let urls = urls.join(",");

    // Services log in with their seeds and keep their permissions.
    let (events, mut gateway_events) = broadcast::channel(64);
    let as_gateway = NatsSettings {
        nkey_file: Some(gateway.seed_file.clone()),
        ..settings(&urls)
    };
    let client = natter_fabric::connect(&as_gateway, events, Duration::from_secs(10))
        .await
        .expect("the gateway logs in with its nkey");
    let js = jetstream::new(client.clone());
    streams::ensure_with_patience(&js, 3, Duration::from_secs(30))
        .await
        .expect("the gateway sets up the streams");
    js.publish("inbox.someone", "hello".into())
        .await
        .unwrap()
        .await
        .expect("an inbox item stored");
    client
        .publish("$KV.receipts.x", "forged".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(async_nats::Event::ServerError(error)) = gateway_events.recv().await
                && error.to_string().contains("Permissions Violation")
            {
                return error;
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "the gateway wrote receipt state");
    let as_workers = NatsSettings {
        nkey_file: Some(workers.seed_file.clone()),
        ..settings(&urls)
    };
    let (events, _) = broadcast::channel(4);
    natter_fabric::connect(&as_workers, events, Duration::from_secs(10))
        .await
        .expect("the workers log in with their nkey");

    // The public development password, and no credentials, are refused.
    let with_dev_password = NatsSettings {
        user: Some("gateway".into()),
        password: Some("gateway-dev".into()),
        ..settings(&urls)
    };
    let (events, _) = broadcast::channel(4);
    let refused = natter_fabric::connect(&with_dev_password, events, Duration::from_secs(1)).await;
    assert!(refused.is_err(), "a development password was accepted");
    let (events, _) = broadcast::channel(4);
    let refused = natter_fabric::connect(&settings(&urls), events, Duration::from_secs(1)).await;
    assert!(refused.is_err(), "no credentials were accepted");
    // A seed that is not a key is refused.
    std::fs::write(dir.join("bad.nk"), "SUNOTAKEY").unwrap();
    let (events, _) = broadcast::channel(4);
    let bad = NatsSettings {
        nkey_file: Some(dir.join("bad.nk")),
        ..settings(&urls)
    };
    assert!(
        natter_fabric::connect(&bad, events, Duration::from_secs(1))
            .await
            .is_err()
    );

    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
