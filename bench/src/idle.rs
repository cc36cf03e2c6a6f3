//! Scenario `idle`: how many authenticated, idle sockets the gateways hold, and what each
//! costs. One load process per gateway (each under the 20,000 open-files cap) connects
//! `per_gateway` users, each with its own token; every socket then only answers the
//! gateway's pings. The parent samples each gateway's resident memory before and after
//! and its CPU time over a rest period, so the report has the memory per connected user
//! (its NATS subscriptions and Redis presence included) and the CPU at rest.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    cpu,
    dm::token,
    net::{self, Sources},
    shard::{self, Orders, Shard, ShardOptions},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Gateway addresses, comma-separated (e.g. from .run/bench-gateways.addrs).
    #[arg(long, value_delimiter = ',', required = true)]
    pub gateways: Vec<String>,
    /// PIDs of those gateways, same order (e.g. from .run/bench-gateways.pids).
    #[arg(long, required = true)]
    pub gateway_pids: String,
    /// Users (one socket each) per gateway; at most ~19,900 (open files).
    #[arg(long, default_value_t = 19_500)]
    pub per_gateway: usize,
    /// How long to watch CPU once every socket is connected.
    #[arg(long, default_value_t = 30)]
    pub rest_seconds: u64,
    /// Other processes to report memory for, as name=pid, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub watch: Vec<String>,
    /// HS256 secret of the gateways (default: the development secret).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Label of the servers in the report: `natter`, or `control` when the addresses are
    /// `control-server` processes (idle-control).
    #[arg(long, default_value = "natter")]
    pub system: String,
}

/// Handshakes in flight per load process.
const CONNECTING: usize = 256;
/// Connection attempts per user, as a phone retries with backoff; and how long the load
/// process waits for every user to be connected before it reports what it has.
const ATTEMPTS: u32 = 8;
const CONNECT_LIMIT: Duration = Duration::from_secs(240);

#[derive(Debug, Serialize, Deserialize)]
pub struct Connected {
    pub connected: u64,
    pub failed: u64,
    pub seconds: f64,
    /// Sockets the gateway closed after the upgrade, and failed attempts; each was retried.
    pub closed_by_gateway: u64,
    pub connect_errors: u64,
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Tally {
    live: AtomicU64,
    closed: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn note(&self, error: String) {
        self.first_error
            .lock()
            .expect("not poisoned")
            .get_or_insert(error);
    }
}

/// One idle user: connect (retrying with backoff, like a phone), then only read, which
/// answers the gateway's pings; reconnect if the gateway closes the socket.
async fn hold(
    gateway: std::net::SocketAddr,
    source: std::net::Ipv4Addr,
    token: String,
    tally: Arc<Tally>,
    handshakes: Arc<tokio::sync::Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            let backoff = Duration::from_millis(500 << attempt.min(4));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
        }
        let connected = {
            let _slot = handshakes.acquire().await.expect("never closed");
            net::connect(gateway, source, &token, "d0", None).await
        };
        let mut socket = match connected {
            Ok(socket) => socket,
            Err(e) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tally.note(format!("{e:#}"));
                continue;
            }
        };
        tally.live.fetch_add(1, Ordering::Relaxed);
        let end = loop {
            tokio::select! {
                _ = stop.changed() => {
                    tally.live.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                message = socket.next() => match message {
                    Some(Ok(Message::Close(frame))) => break format!("closed: {frame:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("read: {e}"),
                    None => break "ended".to_owned(),
                },
            }
        };
        tally.live.fetch_sub(1, Ordering::Relaxed);
        tally.closed.fetch_add(1, Ordering::Relaxed);
        tally.note(format!("gateway ended the socket: {end}"));
    }
}

/// Child: connect everyone, report, hold every socket until told to stop.
pub async fn shard(options: &ShardOptions) -> anyhow::Result<()> {
    net::raise_fd_limit();
    let gateway = net::addr(&options.gateway)?;
    let sources = Sources::new(options.first_source, options.users);
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let handshakes = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut holders = Vec::with_capacity(options.users);
    for i in 0..options.users {
        let token = token(&options.secret, &format!("{}-{i}", options.prefix))?;
        holders.push(tokio::spawn(hold(
            gateway,
            sources.pick(),
            token,
            tally.clone(),
            handshakes.clone(),
            stop_rx.clone(),
        )));
    }
    let users = options.users as u64;
    while tally.live.load(Ordering::Relaxed) < users && started.elapsed() < CONNECT_LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = tally.live.load(Ordering::Relaxed);
    shard::say(&Connected {
        connected: live,
        failed: users - live,
        seconds: started.elapsed().as_secs_f64(),
        closed_by_gateway: tally.closed.load(Ordering::Relaxed),
        connect_errors: tally.errors.load(Ordering::Relaxed),
        first_error: tally.first_error.lock().expect("not poisoned").take(),
    })?;
    let mut orders = Orders::new();
    while let Some(order) = orders.next().await {
        if order == "stop" {
            break;
        }
    }
    let still_open = tally.live.load(Ordering::Relaxed);
    shard::say(&serde_json::json!({ "still_open": still_open }))?;
    let _ = stop_tx.send(true);
    for holder in holders {
        let _ = holder.await;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct GatewayFigures {
    pub gateway: String,
    pub pid: u32,
    pub connected: u64,
    pub failed: u64,
    /// Attempts that failed or sockets the gateway closed while connecting (retried).
    pub retried: u64,
    pub connect_seconds: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    /// (after − before) / connected.
    pub rss_per_user_bytes: f64,
    /// CPU at rest, in percent of one core.
    pub cpu_rest_percent: f64,
    /// Sockets still open after the rest period.
    pub still_open: u64,
}

#[derive(Debug, Serialize)]
pub struct ProcessFigures {
    pub name: String,
    pub pid: u32,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub cpu_rest_percent: f64,
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub system: String,
    pub gateways: Vec<GatewayFigures>,
    pub connected: u64,
    pub failed: u64,
    /// Total gateway RSS growth over total connected users.
    pub rss_per_user_bytes: f64,
    pub load_processes: Vec<ProcessFigures>,
    pub others: Vec<ProcessFigures>,
    pub rest_seconds: u64,
}

pub async fn run(options: &Options) -> anyhow::Result<IdleReport> {
    let gateway_pids = shard::pids(&options.gateway_pids)?;
    anyhow::ensure!(
        gateway_pids.len() == options.gateways.len(),
        "{} gateways but {} PIDs",
        options.gateways.len(),
        gateway_pids.len()
    );
    let secret = crate::dm::secret_or_dev(options.secret.as_deref());
    let others: Vec<(String, u32)> = options
        .watch
        .iter()
        .map(|w| {
            let (name, pid) = w.split_once('=').unwrap_or((w, ""));
            Ok((name.to_owned(), pid.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let before: Vec<u64> = gateway_pids
        .iter()
        .map(|&p| shard::rss_bytes(p))
        .collect::<anyhow::Result<_>>()?;
    let others_before: Vec<u64> = others
        .iter()
        .map(|(_, p)| shard::rss_bytes(*p))
        .collect::<anyhow::Result<_>>()?;

    let mut shards = Vec::new();
    for (i, gateway) in options.gateways.iter().enumerate() {
        shards.push(Shard::spawn(&[
            "idle-shard".into(),
            format!("--gateway={gateway}"),
            format!("--users={}", options.per_gateway),
            format!("--prefix=idle-{run}-g{i}"),
            format!(
                "--first-source={}",
                i * Sources::needed(options.per_gateway)
            ),
            format!("--secret={secret}"),
        ])?);
    }
    let mut connected = Vec::new();
    for shard in &mut shards {
        let c: Connected = shard.next().await?;
        eprintln!(
            "load process {:?}: {} connected, {} failed in {:.1} s ({} closed by the gateway, {} failed attempts, all retried){}",
            shard.pid(),
            c.connected,
            c.failed,
            c.seconds,
            c.closed_by_gateway,
            c.connect_errors,
            c.first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
        connected.push(c);
    }
    // Let allocations settle (presence heartbeats, first pings), then watch the rest.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let shard_pids: Vec<u32> = shards.iter().filter_map(Shard::pid).collect();
    let watched: Vec<u32> = gateway_pids
        .iter()
        .chain(&shard_pids)
        .chain(others.iter().map(|(_, p)| p))
        .copied()
        .collect();
    let cpu_before: Vec<f64> = watched
        .iter()
        .map(|&p| cpu::seconds(p))
        .collect::<anyhow::Result<_>>()?;
    let rest_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.rest_seconds)).await;
    let wall = rest_start.elapsed().as_secs_f64();
    let cpu: Vec<f64> = watched
        .iter()
        .zip(&cpu_before)
        .map(|(&p, b)| Ok((cpu::seconds(p)? - b) / wall * 100.0))
        .collect::<anyhow::Result<_>>()?;

    let mut gateways = Vec::new();
    for (i, mut shard) in shards.into_iter().enumerate() {
        let pid = gateway_pids[i];
        let after = shard::rss_bytes(pid)?;
        let load_rss = shard.pid().map(shard::rss_bytes).transpose()?.unwrap_or(0);
        shard.tell("stop").await?;
        let still: serde_json::Value = shard.next().await?;
        shard.finish().await?;
        let c = &connected[i];
        gateways.push((
            GatewayFigures {
                gateway: options.gateways[i].clone(),
                pid,
                connected: c.connected,
                failed: c.failed,
                retried: c.closed_by_gateway + c.connect_errors,
                connect_seconds: c.seconds,
                rss_before_bytes: before[i],
                rss_after_bytes: after,
                rss_per_user_bytes: after.saturating_sub(before[i]) as f64
                    / c.connected.max(1) as f64,
                cpu_rest_percent: cpu[i],
                still_open: still["still_open"].as_u64().unwrap_or(0),
            },
            load_rss,
        ));
    }
    let load_processes = gateways
        .iter()
        .enumerate()
        .map(|(i, (_, rss))| ProcessFigures {
            name: format!("load-{i}"),
            pid: shard_pids.get(i).copied().unwrap_or(0),
            rss_before_bytes: 0,
            rss_after_bytes: *rss,
            cpu_rest_percent: cpu[gateway_pids.len() + i],
        })
        .collect();
    let others = others
        .iter()
        .enumerate()
        .map(|(i, (name, pid))| ProcessFigures {
            name: name.clone(),
            pid: *pid,
            rss_before_bytes: others_before[i],
            rss_after_bytes: shard::rss_bytes(*pid).unwrap_or(0),
            cpu_rest_percent: cpu[gateway_pids.len() + shard_pids.len() + i],
        })
        .collect();
    let gateways: Vec<GatewayFigures> = gateways.into_iter().map(|(g, _)| g).collect();
    let total: u64 = gateways.iter().map(|g| g.connected).sum();
    let growth: u64 = gateways
        .iter()
        .map(|g| g.rss_after_bytes.saturating_sub(g.rss_before_bytes))
        .sum();
    Ok(IdleReport {
        system: options.system.clone(),
        connected: total,
        failed: gateways.iter().map(|g| g.failed).sum(),
        rss_per_user_bytes: growth as f64 / total.max(1) as f64,
        gateways,
        load_processes,
        others,
        rest_seconds: options.rest_seconds,
    })
}

impl IdleReport {
    pub fn table(&self) -> Vec<String> {
        let mut lines =
            vec!["gateway              connected  failed  RSS/user B  CPU at rest %".to_owned()];
        for g in &self.gateways {
            lines.push(format!(
                "{:<20} {:>9} {:>7} {:>11.0} {:>14.1}",
                g.gateway, g.connected, g.failed, g.rss_per_user_bytes, g.cpu_rest_percent
            ));
        }
        lines.push(format!(
            "total                {:>9} {:>7} {:>11.0}",
            self.connected, self.failed, self.rss_per_user_bytes
        ));
        lines
    }
}
