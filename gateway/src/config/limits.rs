//! Per-connection and per-user bounds on what clients may hold and spend; everything a
//! connection holds is bounded by these.

use std::time::Duration;

use serde::Deserialize;

/// Per-connection bounds. Everything a connection holds is bounded by these.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Sends waiting for their JetStream ack on one socket; beyond it the gateway stops
    /// reading from that socket until acks come back.
    pub max_inflight: usize,
    /// A write to a socket that takes longer than this closes it (1013: resume later).
    pub write_timeout_ms: u64,
    /// A socket that needs more than this many items read back from the inbox in one
    /// repair (a gap in its live items, or what its full mailbox dropped) is closed with
    /// 1013 and the client resumes with `after`. Repairs are read a page at a time.
    pub max_gap_repair: u64,
    /// How often each socket checks its inbox's newest sequence against what it has
    /// forwarded (finds republishes lost to a leader change).
    pub reconcile_every_ms: u64,
    /// WebSocket keepalive ping interval; a peer silent for three of them is dropped.
    pub ping_every_ms: u64,
    /// Largest client frame, in bytes.
    pub max_frame_bytes: usize,
    /// Most members of one group (WhatsApp's limit by default).
    pub max_group_members: usize,
    /// Members of the groups the gateway keeps cached, all together (≈ 100 bytes each);
    /// the least recently used groups go first.
    pub cached_group_members: usize,
    /// Tokens a user's bucket refills per second, over all their sockets and gateways (in
    /// Redis): every action that writes or fans out costs some (a one-on-one send 1; the
    /// table is in `charge.rs` and docs/PROTOCOL.md); 0 for no limit.
    pub send_per_sec: f64,
    /// Tokens a user may spend at once before `send_per_sec` applies.
    pub send_burst: f64,
    /// Groups a user may create a day (0: no cap).
    pub groups_per_day: u32,
    /// Sockets one user may hold at once, over all gateways (counted in Redis, and per
    /// gateway when Redis is down); beyond it the upgrade is refused with 429.
    pub max_sockets_per_user: usize,
    /// A connection must finish its TLS handshake, and then send its request head, within
    /// this; otherwise it is closed.
    pub handshake_timeout_ms: u64,
    /// A request body (device registration, development sign-in) must arrive whole within
    /// this after its head, and it is read only once the request is authenticated; an
    /// upload's body may not pause longer than this between two chunks.
    pub body_timeout_ms: u64,
    /// HTTP connections open at once (plain requests, and sockets until their upgrade:
    /// a flood of half-open connections); beyond it accepting waits until one finishes.
    /// Upgraded sockets are bounded by the open-files limit and `max_sockets_per_user`.
    pub max_connections: usize,
    /// Of `max_connections`, how many one client address may hold (0: no cap). Beyond it
    /// a new connection from that address is closed at once. Many phones can share one
    /// address (carrier NAT), but each holds a connection only until its upgrade.
    pub max_connections_per_address: usize,
    /// One HTTP exchange (its request body, the answer, and the response body read by the
    /// client) must be over within this, or the connection is closed; media uploads and
    /// downloads get longer, by their size (`min_transfer_bytes_per_sec`).
    pub request_timeout_ms: u64,
    /// The slowest a client may upload or download a file, on average after the first
    /// `body_timeout_ms`: a file of n bytes may take `body_timeout_ms` + n / this. Slower,
    /// the upload is refused (408) or the download's connection closed.
    pub min_transfer_bytes_per_sec: u64,
    /// Uploads and downloads one user may have in progress at once on one gateway;
    /// beyond it 429 `too_many_transfers`.
    pub transfers_per_user: usize,
    /// How long after sending its author may edit a message (WhatsApp: 15 minutes).
    pub edit_window_secs: u64,
    /// How long after sending its author may delete a message for everyone (a group admin
    /// may delete any member's message at any time).
    pub delete_window_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inflight: 64,
            write_timeout_ms: 10_000,
            max_gap_repair: 1_000,
            reconcile_every_ms: 30_000,
            ping_every_ms: 30_000,
            max_frame_bytes: 64 * 1024,
            max_group_members: natter_fabric::groups::DEFAULT_MAX_MEMBERS,
            cached_group_members: natter_fabric::groups::DEFAULT_CACHED_MEMBERS,
            send_per_sec: 20.0,
            send_burst: 100.0,
            groups_per_day: 100,
            max_sockets_per_user: 32,
            handshake_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_connections: 4_096,
            max_connections_per_address: 512,
            request_timeout_ms: 30_000,
            // 32 kbit/s: slower than a phone on 2G.
            min_transfer_bytes_per_sec: 4_096,
            transfers_per_user: 16,
            edit_window_secs: 15 * 60,
            delete_window_secs: 48 * 3600,
        }
    }
}

impl Limits {
    /// Refuses values the gateway cannot run with.
    pub fn check(&self) -> Result<(), String> {
        let zero = [
            ("max_connections", self.max_connections as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            (
                "min_transfer_bytes_per_sec",
                self.min_transfer_bytes_per_sec,
            ),
            ("transfers_per_user", self.transfers_per_user as u64),
            ("ping_every_ms", self.ping_every_ms),
            ("reconcile_every_ms", self.reconcile_every_ms),
        ];
        match zero.iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(format!("limits.{name} must be above 0")),
            None => Ok(()),
        }
    }

    /// How long moving a file of `bytes` may take at the slowest rate allowed.
    pub fn transfer_time(&self, bytes: u64) -> Duration {
        let seconds = bytes as f64 / self.min_transfer_bytes_per_sec as f64;
        self.body_timeout() + Duration::from_secs_f64(seconds)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn reconcile_every(&self) -> Duration {
        Duration::from_millis(self.reconcile_every_ms)
    }
    pub fn ping_every(&self) -> Duration {
        Duration::from_millis(self.ping_every_ms)
    }
}
