//! Scenario `storm` (reconnect storm): `users` devices, spread over the gateways with one
//! load process per gateway, connect and each receive and ack one message (so every
//! device holds a real inbox cursor). Then every socket drops at once; while they are
//! away each user is sent `messages` more; then all reconnect at once with `after` = their
//! cursor. The report has the time from the reconnect order until the last device has all
//! its new messages, and what the devices checked: nothing lost, nothing doubled, nothing
//! at or before the cursor sent again.

pub mod control;
pub mod device;

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::{
    cpu::{CpuReport, Watch, WatchArgs},
    dm,
    net::{self, Sources},
    report::Latency,
    shard::Shard,
};
use device::{CaughtUp, PHASE_LIMIT, Phase};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Gateway addresses, comma-separated (e.g. from .run/bench-gateways.addrs).
    #[arg(long, value_delimiter = ',', required = true)]
    pub gateways: Vec<String>,
    /// Devices in all (one user each), split evenly over the gateways.
    #[arg(long, default_value_t = 50_000)]
    pub users: usize,
    /// Messages sent to each user while it is away.
    #[arg(long, default_value_t = 1)]
    pub messages: usize,
    /// Sender sockets (on the first gateway), each keeping `window` sends in flight.
    #[arg(long, default_value_t = 64)]
    pub senders: usize,
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// NATS monitoring endpoint: before the reconnect order the tool waits until the
    /// consumers of `MSGS` (fanout, history) have nothing pending, so every inbox item
    /// exists and the storm times catch-up, not the fanout backlog.
    #[arg(long, default_value = "127.0.0.1:8222")]
    pub monitor: String,
    /// HS256 secret of the gateways (default: the development secret).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub users: usize,
    pub gateways: usize,
    pub messages_per_user: usize,
    pub connected: u64,
    pub warm: u64,
    /// Messages sent while everyone was away, and how fast the senders stored them.
    pub sent_while_away: u64,
    pub send_per_s: f64,
    /// From the last `sent` until every consumer had nothing pending.
    pub settle_seconds: f64,
    #[serde(flatten)]
    pub reconnects: Reconnects,
    /// From the reconnect order until every load process reported; per device caught up.
    pub cpu: CpuReport,
}

impl StormReport {
    pub fn table(&self) -> Vec<String> {
        self.reconnects
            .table(self.users, self.gateways, self.messages_per_user, &self.cpu)
    }
}

/// What the load processes saw from the reconnect order on (`storm` and `storm-control`).
#[derive(Debug, Default, Serialize)]
pub struct Reconnects {
    /// From the reconnect order until the last device had all its messages.
    pub all_caught_up_s: f64,
    pub complete: u64,
    pub lost: u64,
    pub doubled: u64,
    pub replayed: u64,
    pub connect_failed: u64,
    pub connect_retried: u64,
    pub catch_up_ms_by_process: Vec<Latency>,
}

impl Reconnects {
    /// Tells every load process to reconnect its devices (each expecting `messages` new
    /// ones) and adds up their reports; CPU is measured from the order to the last report.
    pub async fn order(
        shards: &mut [Shard],
        messages: usize,
        watch: &Watch,
    ) -> anyhow::Result<(Self, CpuReport)> {
        let window = watch.start()?;
        for shard in shards.iter_mut() {
            shard.tell(&format!("reconnect {messages}")).await?;
        }
        let mut all = Self::default();
        for shard in shards.iter_mut() {
            let c: CaughtUp = shard.next().await?;
            all.all_caught_up_s = all.all_caught_up_s.max(c.last_s);
            all.complete += c.complete;
            all.lost += c.lost;
            all.doubled += c.doubled;
            all.replayed += c.replayed;
            all.connect_failed += c.connect_failed;
            all.connect_retried += c.connect_retried;
            all.catch_up_ms_by_process.push(c.catch_up_ms);
        }
        let cpu = window.finish(all.complete, "reconnect");
        Ok((all, cpu))
    }

    pub fn table(
        &self,
        users: usize,
        servers: usize,
        messages: usize,
        cpu: &CpuReport,
    ) -> Vec<String> {
        let mut lines = vec![
            "devices  servers  msgs/device  all caught up s  complete  lost  doubled  replayed  retried"
                .into(),
            format!(
                "{:>7} {:>8} {:>12} {:>16.2} {:>9} {:>5} {:>8} {:>9} {:>8}",
                users,
                servers,
                messages,
                self.all_caught_up_s,
                self.complete,
                self.lost,
                self.doubled,
                self.replayed,
                self.connect_retried
            ),
        ];
        lines.extend(cpu.table());
        lines
    }
}

pub async fn run(options: &Options) -> anyhow::Result<StormReport> {
    net::raise_fd_limit();
    let mut watch = options.watch.watch()?;
    let secret = dm::secret_or_dev(options.secret.as_deref());
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let per = options.users.div_ceil(options.gateways.len());
    let mut shards = Vec::new();
    let mut users = Vec::new();
    for (i, gateway) in options.gateways.iter().enumerate() {
        let count = per.min(options.users - users.len());
        let prefix = format!("storm-{run}-g{i}");
        users.extend((0..count).map(|j| format!("{prefix}-{j}")));
        shards.push(Shard::spawn(&[
            "storm-shard".into(),
            format!("--gateway={gateway}"),
            format!("--users={count}"),
            format!("--prefix={prefix}"),
            format!("--first-source={}", 1 + i * Sources::needed(count * 2)),
            format!("--secret={secret}"),
        ])?);
    }
    for (i, shard) in shards.iter().enumerate() {
        watch.add(
            format!("load-{i}"),
            shard.pid().context("load process pid")?,
        );
    }
    let connected = sum(&mut shards, "connected").await?;
    let sender_gateway = net::addr(&options.gateways[0])?;
    let mut senders = crate::senders::Senders::connect(
        sender_gateway,
        &secret,
        &format!("storm-{run}-s"),
        options.senders,
    )
    .await?;
    let warm_sent = senders.send_to_all(&users, 1, options.window).await?;
    eprintln!(
        "warm-up: {} messages stored at {:.0}/s",
        warm_sent.stored, warm_sent.per_s
    );
    let warm = sum(&mut shards, "warm").await?;
    for shard in &mut shards {
        shard.tell("drop").await?;
    }
    sum(&mut shards, "dropped").await?;
    let away = senders
        .send_to_all(&users, options.messages, options.window)
        .await?;
    eprintln!(
        "while away: {} messages stored at {:.0}/s",
        away.stored, away.per_s
    );
    let settle_seconds = settle(&options.monitor).await?;
    eprintln!("workers idle {settle_seconds:.1} s after the last send");
    let (reconnects, cpu) = Reconnects::order(&mut shards, options.messages, &watch).await?;
    let report = StormReport {
        users: options.users,
        gateways: options.gateways.len(),
        messages_per_user: options.messages,
        connected,
        warm,
        sent_while_away: away.stored,
        send_per_s: away.per_s,
        settle_seconds,
        reconnects,
        cpu,
    };
    for shard in shards {
        shard.finish().await?;
    }
    Ok(report)
}

/// Waits for every load process's report of a phase; returns the devices that made it.
pub(crate) async fn sum(shards: &mut [Shard], phase: &str) -> anyhow::Result<u64> {
    let mut ok = 0;
    for shard in shards.iter_mut() {
        let p: Phase = shard.next().await?;
        eprintln!(
            "{phase}: load process {:?}: {} ok, {} failed, {:.1} s",
            shard.pid(),
            p.ok,
            p.failed,
            p.seconds
        );
        ok += p.ok;
    }
    Ok(ok)
}

/// Waits until no consumer of `MSGS` (the fanout workers, which write the inbox items, and
/// history) has messages pending or unacknowledged, three polls in a row (NATS
/// monitoring `/jsz`); returns how long that took.
async fn settle(monitor: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut quiet = 0;
    while quiet < 3 {
        anyhow::ensure!(
            started.elapsed() < PHASE_LIMIT,
            "workers still busy after {PHASE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let jsz = http_get_json(monitor, "/jsz?consumers=true").await?;
        let busy: u64 = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .filter(|s| s["name"] == "MSGS")
            .flat_map(|s| s["consumer_detail"].as_array().into_iter().flatten())
            .map(|c| {
                c["num_pending"].as_u64().unwrap_or(0) + c["num_ack_pending"].as_u64().unwrap_or(0)
            })
            .sum();
        quiet = if busy == 0 { quiet + 1 } else { 0 };
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A plain HTTP/1.0 GET on loopback, answered with JSON.
async fn http_get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("NATS monitoring at {addr}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .context("no HTTP body")?;
    Ok(serde_json::from_str(body)?)
}
