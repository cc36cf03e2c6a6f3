//! Test harness for Natter's end-to-end tests: real servers, real sockets.
//!
//! - [`child`]: this test binary run again as a gateway or worker process a test can kill.
//! - [`cluster`]: a 3-node nats-server cluster with JetStream on free loopback ports,
//!   using the repo's `nats/accounts.conf`, killed and deleted on Drop.
//! - [`http`]: a minimal HTTP/1.1 client for binary uploads and downloads.
//! - [`redis`]: a redis-server on a free loopback port, which a test can restart empty.
//! - [`proxy`]: a TCP proxy a test can cut, to make a process lose its NATS connection.
//! - [`system`]: one shared system per test binary (the cluster, Redis, two gateways,
//!   the workers), started on first use on a runtime of its own and torn down at exit.
//! - [`client`]: a WebSocket client that records every frame and checks, on every inbox
//!   item, that sequences only grow (no duplicate, no reordering).

pub mod child;
pub mod client;
pub mod cluster;
pub mod http;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod system;

pub use client::Client;
pub use system::{System, system};

/// `len` bytes of deterministic noise after `head` (a file signature), for uploads.
pub fn test_file(head: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = head.to_vec();
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// "debug" or "release", for figures a test prints.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// A user id no other test uses.
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A `/proc/<pid>/status` figure in MiB (`VmRSS:` now, `VmHWM:` peak).
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .expect("a memory figure");
    kib / 1024.0
}
