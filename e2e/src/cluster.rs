//! A nats-server cluster for tests. Binary: `$NATTER_NATS_SERVER`, else
//! `.tools/bin/nats-server` (installed by `scripts/install-nats.sh`).
#![allow(unsafe_code)] // prctl(PR_SET_PDEATHSIG) so servers die with the test process

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

/// The repository root (for `nats/accounts.conf` and `.tools/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("NATTER_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/bin/nats-server"))
}

/// A loopback port that was free a moment ago and that this process has not handed out
/// before. Ports come from below Linux's ephemeral range (32768 and up), so an outgoing
/// connection cannot take one between this call and the server binding it.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    // Start at a per-process offset so test binaries that overlap rarely probe the same
    // ports: spread by the clock as well as the PID, since processes started one after
    // another have neighbouring PIDs and would walk the same ports a few apart.
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = u64::from(std::process::id()).wrapping_mul(7_919) ^ u64::from(nanos);
        AtomicU16::new((seed % u64::from(SPAN)) as u16)
    });
    for _ in 0..SPAN {
        let port = FIRST + next.fetch_add(1, Ordering::Relaxed) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

struct Node {
    config: PathBuf,
    store: PathBuf,
    client_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// A running cluster; every node is killed and its data deleted on Drop.
pub struct NatsCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl NatsCluster {
    pub fn start(size: usize) -> Self {
        let binary = nats_server_binary();
        assert!(
            binary.exists(),
            "{} missing: run scripts/install-nats.sh",
            binary.display()
        );
        let dir =
            std::env::temp_dir().join(format!("natter-e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["accounts.conf", "permissions.conf"] {
            std::fs::copy(repo_root().join("nats").join(file), dir.join(file)).unwrap();
        }
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client_port, cluster_port, monitor_port)) in ports.iter().enumerate() {
            let config = dir.join(format!("node-{i}.conf"));
            let store = dir.join(format!("store-{i}"));
            let cluster = if size > 1 {
                format!(
                    "cluster {{ name: natter-test, listen: 127.0.0.1:{cluster_port}, routes: [{}] }}",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: test-{i}\nlisten: 127.0.0.1:{client_port}\n\
                     http: 127.0.0.1:{monitor_port}\n\
                     jetstream {{ sync_interval: 1s, max_memory_store: 64MB, max_file_store: 2GB }}\n\
                     {cluster}\nmax_payload: 1MB\ninclude ./accounts.conf\n"
                ),
            )
            .unwrap();
            nodes.push(Node {
                config,
                store,
                client_port: *client_port,
                monitor_port: *monitor_port,
                child: None,
            });
        }
        let mut cluster = Self { dir, nodes };
        for i in 0..size {
            cluster.start_node(i);
        }
        for i in 0..size {
            cluster.wait_listening(i);
        }
        for i in 0..size {
            cluster.wait_jetstream_healthy(i);
        }
        cluster
    }

    fn start_node(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = std::fs::File::create(self.dir.join(format!("node-{i}.log"))).unwrap();
        let mut command = Command::new(nats_server_binary());
        command
            .arg("-c")
            .arg(&node.config)
            .arg("--store_dir")
            .arg(&node.store)
            // Three servers on one machine: one Go scheduler thread each, as scripts/up runs
            // them.
            .env("GOMAXPROCS", "1")
            .stdout(Stdio::null())
            .stderr(log);
        self.nodes[i].child = Some(spawn_bound(&mut command));
    }

    fn wait_listening(&mut self, i: usize) {
        let port = self.nodes[i].client_port;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats node {i} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Something listens; make sure it is this node (another test process may have
        // taken one of its ports, and the node then exited).
        std::thread::sleep(Duration::from_millis(50));
        let exited = self.nodes[i]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "nats node {i} exited ({exited:?}); its log ends:\n{}",
            self.log_tail(i, 20)
        );
    }

    /// Waits until node `i`'s monitoring `/healthz` answers 200: JetStream is enabled and
    /// the node is current with the meta leader. A cluster that never gets there fails here,
    /// with the node's log, instead of as a gateway that cannot create its streams.
    fn wait_jetstream_healthy(&self, i: usize) {
        let port = self.nodes[i].monitor_port;
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_status(port, "/healthz") != Some(200) {
            if Instant::now() >= deadline {
                panic!(
                    "nats node {i} not healthy after 60 s; its log ends:\n{}",
                    self.log_tail(i, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let log =
            std::fs::read_to_string(self.dir.join(format!("node-{i}.log"))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The cluster's scratch directory (configs, stores, logs), deleted on Drop: a place
    /// for other per-run data too.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All client URLs, comma-separated, as the processes take them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `server_name` of node `i`.
    pub fn name(&self, i: usize) -> String {
        format!("test-{i}")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// kill -9 one node (by PID), keeping its data.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on the same ports and data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_node(i);
        self.wait_listening(i);
    }
}

/// Spawns `command` so the kernel kills it (SIGKILL) if the thread that spawned it dies:
/// a crashed or killed test run leaves no servers or workers behind.
pub fn spawn_bound(command: &mut Command) -> Child {
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().expect("spawn a test process")
}

/// The status code of a plain `GET path` to a loopback port, if it answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
