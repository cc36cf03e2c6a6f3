//! Test harness for Natter's end-to-end tests: real servers, real sockets.
//!
//! - [`cluster`]: a 3-node nats-server cluster with JetStream on free loopback ports,
//!   using the repo's `nats/accounts.conf`, killed and deleted on Drop.
//! - [`proxy`]: a TCP proxy a test can cut, to make a process lose its NATS connection.
//! - [`system`]: one shared system per test binary (the cluster, two gateways, the
//!   workers), started on first use on a runtime of its own and torn down at exit.
//! - [`client`]: a WebSocket client that records every frame and checks, on every inbox
//!   item, that sequences only grow (no duplicate, no reordering).

pub mod client;
pub mod cluster;
pub mod proxy;
pub mod system;

pub use client::Client;
pub use system::{System, system};

/// A user id no other test uses.
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}
