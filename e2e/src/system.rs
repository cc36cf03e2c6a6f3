//! One running Natter per test binary: a 3-node cluster, two gateways and two worker
//! processes' worth of workers, on a runtime and thread of their own (so they outlive
//! each test's runtime). The cluster is killed and deleted when the test process exits.
#![allow(unsafe_code)] // libc::atexit, to stop the servers when the test binary exits

use std::{
    net::SocketAddr,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use natter_fabric::NatsSettings;
use natter_gateway::config::Config;
use natter_workers::history::{Backend, HistorySettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{cluster::NatsCluster, redis::RedisServer};

/// The HS256 secret the test gateways use: the development one, as `scripts/up` does, since
/// the browser tests sign in through development sign-in, which signs with nothing else.
pub const SECRET: &str = natter_gateway::config::DEV_JWT_SECRET;

/// What every test gateway shares: it verifies tokens signed with [`SECRET`]
/// (development mode), and bounds media to what the test cluster's storage (2 GB per
/// server) can reserve. Gateways agree on the bound, or each start would change it.
pub fn test_settings(config: &mut Config) {
    config.jwt.secret = None;
    config.jwt.allow_dev_secret = true;
    config.media.max_total_bytes = OPTIONS
        .get()
        .map_or(MEDIA_MAX_TOTAL_BYTES, |o| o.media_max_total_bytes);
}

/// The media bound of every test gateway (see [`test_settings`]).
pub const MEDIA_MAX_TOTAL_BYTES: u64 = 1024 * 1024 * 1024;

pub struct System {
    pub gateways: Vec<SocketAddr>,
    pub nats_urls: String,
    pub redis_url: String,
    /// The test process's one Prometheus exporter (the gateways and workers share it).
    pub metrics: SocketAddr,
}

static CLUSTER: Mutex<Option<NatsCluster>> = Mutex::new(None);
static REDIS: Mutex<Option<RedisServer>> = Mutex::new(None);

extern "C" fn stop_cluster() {
    if let Ok(mut cluster) = CLUSTER.lock() {
        cluster.take();
    }
    if let Ok(mut redis) = REDIS.lock() {
        redis.take();
    }
}

/// Runs `f` on the shared system's Redis (to kill or restart it). Like nodes, a Redis
/// restarted from a test's thread lives as long as that thread.
pub fn with_redis<T>(f: impl FnOnce(&mut RedisServer) -> T) -> T {
    system();
    let mut redis = REDIS.lock().unwrap();
    f(redis.as_mut().expect("redis is running"))
}

/// Runs `f` on the shared system's cluster (to kill or restart a node). A node restarted
/// from a test's thread is bound to that thread's life (PR_SET_PDEATHSIG): use it from the
/// last test of a binary, or restart every node a test stopped before it returns.
pub fn with_cluster<T>(f: impl FnOnce(&mut NatsCluster) -> T) -> T {
    system();
    let mut cluster = CLUSTER.lock().unwrap();
    f(cluster.as_mut().expect("the cluster is running"))
}

/// How the shared system is set up; [`configure`] before first use to change it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Each socket's periodic inbox check (the gateway's `limits.reconcile_every_ms`).
    pub reconcile_every_ms: u64,
    /// Sets of workers run inside the test process (0: the test runs its own, e.g. as
    /// processes it can kill).
    pub workers: usize,
    /// The gateways' per-user send limit (`limits.send_per_sec`; 0: none, so tests that
    /// send thousands of messages are not slowed) and burst.
    pub send_per_sec: f64,
    pub send_burst: f64,
    /// Groups a user may create a day (`limits.groups_per_day`; 0: no cap).
    pub groups_per_day: u32,
    /// Members of cached groups a gateway keeps (`limits.cached_group_members`).
    pub cached_group_members: usize,
    /// All media together (`media.max_total_bytes`), and one user's uploads a day
    /// (`media.mib_per_day`).
    pub media_max_total_bytes: u64,
    pub media_mib_per_day: u32,
    /// How long a socket stays online without a heartbeat (short, so tests see expiry).
    pub presence_ttl_ms: u64,
    /// Push workers (with the workers) delivering to this webhook; none: no push.
    pub push: Option<natter_workers::push::PushSettings>,
    /// How long fanout retries an inbox item the stream refuses before parking it.
    pub refused_patience: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reconcile_every_ms: 2_000,
            workers: 2,
            send_per_sec: 0.0,
            send_burst: 1.0,
            groups_per_day: 0,
            cached_group_members: natter_fabric::groups::DEFAULT_CACHED_MEMBERS,
            media_max_total_bytes: MEDIA_MAX_TOTAL_BYTES,
            media_mib_per_day: 1024,
            presence_ttl_ms: 3_000,
            push: None,
            refused_patience: natter_workers::fanout::REFUSED_PATIENCE,
        }
    }
}

static OPTIONS: OnceLock<Options> = OnceLock::new();

/// Sets the options of this test binary's system. Call before the first [`system`].
pub fn configure(options: Options) {
    let _ = OPTIONS.set(options);
}

/// The shared system, started on first use.
pub fn system() -> &'static System {
    static SYSTEM: OnceLock<System> = OnceLock::new();
    SYSTEM.get_or_init(|| start(OPTIONS.get_or_init(Options::default).clone()))
}

pub fn nats_settings(urls: &str, user: &str, name: &str) -> NatsSettings {
    NatsSettings {
        urls: urls.to_owned(),
        user: Some(user.to_owned()),
        password: Some(format!("{user}-dev")),
        name: name.to_owned(),
        ..NatsSettings::default()
    }
}

fn start(options: Options) -> System {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,async_nats=error".into()),
        )
        .try_init();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("natter-e2e-servers".into())
        .spawn(move || {
            // The cluster is started from this thread, which lives as long as the process:
            // its servers are bound to it by PR_SET_PDEATHSIG.
            let cluster = NatsCluster::start(3);
            let urls = cluster.urls();
            let redis = RedisServer::start();
            let redis_url = redis.url();
            *REDIS.lock().unwrap() = Some(redis);
            let data = cluster.dir().to_path_buf();
            *CLUSTER.lock().unwrap() = Some(cluster);
            // SAFETY: registers a plain extern "C" fn with no arguments.
            unsafe { libc::atexit(stop_cluster) };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                // One exporter for the whole test process, installed before any component
                // records a metric (a metric recorded before it would be lost).
                let metrics = SocketAddr::from(([127, 0, 0, 1], crate::cluster::free_port()));
                natter_fabric::telemetry::install(metrics).expect("metrics exporter");
                let mut gateways = Vec::new();
                let mut running = Vec::new();
                for i in 0..2 {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    gateways.push(listener.local_addr().unwrap());
                    let mut config = Config {
                        listen: gateways[i],
                        nats: nats_settings(&urls, "gateway", &format!("gateway-{i}")),
                        metrics_listen: None,
                        ..Config::default()
                    };
                    test_settings(&mut config);
                    config.limits.reconcile_every_ms = options.reconcile_every_ms;
                    config.limits.send_per_sec = options.send_per_sec;
                    config.limits.send_burst = options.send_burst;
                    config.limits.groups_per_day = options.groups_per_day;
                    config.limits.cached_group_members = options.cached_group_members;
                    config.media.mib_per_day = options.media_mib_per_day;
                    config.redis.url.clone_from(&redis_url);
                    config.presence.ttl_ms = options.presence_ttl_ms;
                    config.presence.sweep_every_ms = 250;
                    // The browser tests load the web client from the gateway and sign in.
                    config.web.dir = Some(web_dir());
                    config.web.dev_sign_in = true;
                    running.push(tokio::spawn(async move {
                        if let Err(err) =
                            natter_gateway::run(listener, config, std::future::pending()).await
                        {
                            panic!("gateway {i} failed: {err}");
                        }
                    }));
                }
                let probe_gateway = gateways[0];
                for i in 0..options.workers {
                    let settings = nats_settings(&urls, "workers", &format!("workers-{i}"));
                    // Each set keeps its own embedded history (its own consumer and file).
                    let history = history_settings(&data, i);
                    let push = options.push.clone().map(|mut push| {
                        push.redis.url.clone_from(&redis_url);
                        push
                    });
                    tokio::spawn(async move {
                        let settings = natter_workers::Settings {
                            kind: natter_workers::Kind::All,
                            nats: settings,
                            metrics_listen: None,
                            // One set of workers probes gateway 0 twice a second.
                            canary: (i == 0).then(|| natter_workers::canary::CanarySettings {
                                gateway: probe_gateway.to_string(),
                                secret: SECRET.to_owned(),
                                every: Duration::from_millis(500),
                                timeout: Duration::from_secs(5),
                            }),
                            history: Some(history),
                            push,
                            refused_patience: options.refused_patience,
                        };
                        if let Err(err) =
                            natter_workers::run(settings, std::future::pending()).await
                        {
                            panic!("workers {i} failed: {err}");
                        }
                    });
                }
                for (gateway, task) in gateways.iter().zip(&running) {
                    wait_healthy_while(*gateway, || !task.is_finished()).await;
                }
                if options.workers > 0 {
                    wait_for_history_workers(&urls).await;
                }
                if options.workers > 0 {
                    wait_for_pulls(&urls, options.workers).await;
                }
                tx.send(System {
                    gateways,
                    nats_urls: urls,
                    redis_url,
                    metrics,
                })
                .unwrap();
                std::future::pending::<()>().await;
            });
        })
        .unwrap();
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the e2e system did not come up")
}

/// The web client's folder in this repository.
pub fn web_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

/// A NATS connection to the cluster at `urls` as one of `nats/accounts.conf`'s users.
pub async fn nats_client(urls: &str, user: &str, name: &str) -> async_nats::Client {
    let (events, _) = tokio::sync::broadcast::channel(4);
    natter_fabric::connect(
        &nats_settings(urls, user, name),
        events,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|err| panic!("NATS as {user}: {err}"))
}

/// A NATS connection to the shared system's cluster as `user`.
pub async fn nats_as(user: &str, name: &str) -> async_nats::Client {
    nats_client(&system().nats_urls, user, name).await
}

/// Waits until a history worker answers a page request (the workers are subscribed).
async fn wait_for_history_workers(urls: &str) {
    let client = nats_client(urls, "gateway", "e2e-readiness").await;
    let query = natter_fabric::records::HistoryQuery {
        conv: "dm:ready:ready".into(),
        reader: "ready".into(),
        before: None,
        limit: 1,
    };
    let payload = serde_json::to_vec(&query).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while client
        .request(
            natter_fabric::subjects::HISTORY_PAGE,
            payload.clone().into(),
        )
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "no history worker answered in 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every worker consumer exists and has a pull request waiting on its
/// leader: fanout and receipts per partition, and one inbox tail reader per worker set.
/// Right after a cluster starts, a worker's first pull may find no consumer leader and the
/// next comes seconds later; a test sending in that gap would wait for it.
async fn wait_for_pulls(urls: &str, sets: usize) {
    use natter_fabric::streams::{INBOX, MSGS, RCPT};
    let client = nats_client(urls, "workers", "e2e-readiness").await;
    let js = async_nats::jetstream::new(client);
    let expected: Vec<String> = (0..natter_fabric::subjects::PARTITIONS)
        .flat_map(|p| [format!("fanout-{p}"), format!("receipts-{p}")])
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut waiting = Vec::new();
        let mut idle = Vec::new();
        for name in [MSGS, RCPT, INBOX] {
            let Ok(stream) = js.get_stream(name).await else {
                continue;
            };
            let mut consumers = stream.consumers();
            while let Some(Ok(info)) = consumers.next().await {
                if info.num_waiting > 0 {
                    waiting.push(info.name);
                } else {
                    idle.push(info.name);
                }
            }
        }
        let missing: Vec<&String> = expected.iter().filter(|e| !waiting.contains(e)).collect();
        let tails = waiting.iter().filter(|n| n.starts_with("tail-")).count();
        if missing.is_empty() && idle.is_empty() && tails >= sets {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "worker consumers not pulling after 90 s: missing {missing:?}, idle {idle:?}, \
             {tails} of {sets} inbox tails"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// History set-up for worker set `i`: an embedded store under `data`, its own consumer.
pub fn history_settings(data: &std::path::Path, i: usize) -> HistorySettings {
    HistorySettings {
        instance: format!("history-{i}"),
        backend: Backend::Embedded(data.join(format!("history-{i}"))),
        retention_days: 0,
    }
}

/// Plain HTTP/1.0 GET (no chunked bodies), returning the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits until `GET /healthz` on `addr` answers 200.
pub async fn wait_healthy(addr: SocketAddr) {
    wait_healthy_while(addr, || true).await
}

/// Waits until `GET /healthz` on `addr` answers 200, failing at once when `alive` says the
/// gateway has stopped (its own error is printed where it stopped).
async fn wait_healthy_while(addr: SocketAddr, alive: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(200)) =
            tokio::time::timeout(Duration::from_secs(2), healthz_status(addr)).await
        {
            return;
        }
        assert!(alive(), "gateway {addr} stopped before it was healthy");
        assert!(Instant::now() < deadline, "gateway {addr} not healthy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The status of `GET /healthz`, or None while nothing answers.
async fn healthz_status(addr: SocketAddr) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// A gateway started by one test, on that test's runtime, stopped on Drop.
pub struct ExtraGateway {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ExtraGateway {
    /// Starts a gateway with the shared system's secret, `nats` and `config`'s limits.
    pub async fn start(nats: NatsSettings, limits: natter_gateway::config::Limits) -> Self {
        Self::start_with(nats, |config| config.limits = limits).await
    }

    /// Starts a gateway with the shared system's secret and `nats`, its config otherwise
    /// the defaults as changed by `configure`.
    pub async fn start_with(nats: NatsSettings, configure: impl FnOnce(&mut Config)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config {
            listen: addr,
            nats,
            metrics_listen: None,
            ..Config::default()
        };
        // Like the shared gateways: tests send faster than a person.
        config.limits.send_per_sec = 0.0;
        configure(&mut config);
        config.listen = addr;
        test_settings(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(natter_gateway::run(listener, config, async move {
            let _ = stopped.await;
        }));
        wait_healthy(addr).await;
        Self {
            addr,
            stop: Some(stop),
        }
    }
}

impl Drop for ExtraGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
