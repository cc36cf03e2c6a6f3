//! Opening many WebSocket connections from one process, as a phone fleet would.
//!
//! Two limits decide how many sockets one load process can hold:
//! - open files: [`raise_fd_limit`] lifts the soft limit to the hard one (20,000 here, which
//!   cannot be raised further, so big runs use several processes: see `shard`);
//! - ephemeral ports: one source address has ~28,000 ports towards one listener, so
//!   [`Sources`] spreads connections over 127.0.0.2, 127.0.0.3, … (all of 127/8 is
//!   loopback on Linux), each bound explicitly before connecting.
//!
//! The client side is tuned like the gateway (4 KiB read buffer, no write buffer), so
//! 20,000 idle client sockets cost tens of MB instead of the 2.6 GB tungstenite's default
//! 128 KiB read buffers would take.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

/// A client WebSocket over plain TCP.
pub type Socket = WebSocketStream<TcpStream>;

/// Lifts this process's open-files soft limit to its hard limit; returns the new limit.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Connections per source address before moving to the next one: well under the ~28,000
/// ephemeral ports Linux gives each (address, listener) pair, so several load processes
/// sharing an address still fit.
pub const PER_SOURCE: usize = 8_000;

/// Round-robin source addresses 127.0.0.(2 + first) … for one load process.
#[derive(Debug)]
pub struct Sources {
    first: usize,
    count: usize,
    next: AtomicUsize,
}

impl Sources {
    /// Enough addresses for `sockets` connections, starting at address index `first`
    /// (give each load process its own range).
    pub fn new(first: usize, sockets: usize) -> Self {
        Self {
            first,
            count: sockets.div_ceil(PER_SOURCE).max(1),
            next: AtomicUsize::new(0),
        }
    }

    /// How many addresses a process with `sockets` connections uses.
    pub fn needed(sockets: usize) -> usize {
        sockets.div_ceil(PER_SOURCE).max(1)
    }

    pub fn pick(&self) -> Ipv4Addr {
        let i = self.first + self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        // 127.0.0.2 ..= 127.0.255.254: skip .0, .1 and .255 of every /24.
        let (hi, lo) = (i / 253, i % 253 + 2);
        Ipv4Addr::new(127, 0, hi as u8, lo as u8)
    }
}

/// Small buffers, like the gateway's: an idle socket holds ~4 KiB in user space.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
}

/// A TCP connection to `target` from the source address `source`, without Nagle's delay.
pub async fn tcp_from(source: Ipv4Addr, target: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket
        .connect(target)
        .await
        .with_context(|| format!("connect {target} from {source}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects to `gateway` from `source` and upgrades to a WebSocket for `user` on `device`,
/// resuming after inbox sequence `after` when given.
pub async fn connect(
    gateway: SocketAddr,
    source: Ipv4Addr,
    token: &str,
    device: &str,
    after: Option<u64>,
) -> anyhow::Result<Socket> {
    let stream = tcp_from(source, gateway).await?;
    let mut url = format!("ws://{gateway}/v1/ws?token={token}&device={device}");
    if let Some(after) = after {
        url.push_str(&format!("&after={after}"));
    }
    let (socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .context("websocket upgrade")?;
    Ok(socket)
}

/// Resolves `host:port` (the bench only talks to loopback addresses).
pub fn addr(gateway: &str) -> anyhow::Result<SocketAddr> {
    gateway
        .parse()
        .with_context(|| format!("gateway address {gateway:?} is not ip:port"))
}

/// Sends `frame` with `ref` = `reference` and returns the first answer carrying it.
pub async fn ask(
    socket: &mut Socket,
    mut frame: Value,
    reference: &str,
    patience: std::time::Duration,
) -> anyhow::Result<Value> {
    frame["ref"] = Value::from(reference);
    socket.send(Message::text(frame.to_string())).await?;
    loop {
        let message = tokio::time::timeout(patience, socket.next())
            .await
            .with_context(|| format!("no answer in {patience:?}"))?
            .context("socket closed")??;
        if let Message::Text(text) = message {
            let answer: Value = serde_json::from_str(text.as_str())?;
            if answer["ref"] == reference {
                return Ok(answer);
            }
        }
    }
}
