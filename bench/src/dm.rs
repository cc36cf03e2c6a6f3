//! Scenario `dm` (one-on-one, steady): `pairs` conversations; each sender sends at
//! `rate / pairs` messages per second for `seconds`, without waiting for answers (open
//! loop, so a slow system shows up as latency, not as a politely lower rate); each
//! receiver acks the newest sequence every 20 ms, which drives delivered receipts, as a
//! phone would. Latencies are measured in this process on one monotonic clock:
//! send → `sent` (stored in JetStream, R3) and send → the recipient's socket.
//!
//! Scenario `sweep`: `dm` at increasing offered rates until the system stops keeping up,
//! then once more at half of the peak it sustained (the rate the targets are quoted at).

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    cpu::{Watch, WatchArgs},
    net::{self, Socket, Sources},
    report::{DmReport, DmStats, RunShape},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway: String,
    /// Conversations (a sender and a receiver socket each).
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Offered messages per second, over all pairs.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// HS256 secret of the gateway (default: the development secret).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Label of the runs in reports and plots (e.g. `natter-sync-always`).
    #[arg(long, default_value = "natter")]
    pub system: String,
}

impl Options {
    pub fn secret(&self) -> String {
        secret_or_dev(self.secret.as_deref())
    }
}

/// The given HS256 secret, or the development secret a `--dev` gateway accepts.
pub fn secret_or_dev(secret: Option<&str>) -> String {
    secret.unwrap_or(natter_auth::DEV_JWT_SECRET).to_owned()
}

/// After the sending window, how long the tool waits for the last deliveries.
const DRAIN_LIMIT: Duration = Duration::from_secs(45);
/// A receiver acks the newest sequence at most this often.
const ACK_EVERY: Duration = Duration::from_millis(20);

/// Mints a one-hour development token for `user`.
pub fn token(secret: &str, user: &str) -> anyhow::Result<String> {
    Ok(natter_auth::mint_hs256(
        secret.as_bytes(),
        user,
        None,
        3600,
        None,
        None,
    )?)
}

/// One `dm` run, measuring only the load tool's CPU.
pub async fn run(options: &Options) -> anyhow::Result<DmReport> {
    run_watched(options, &Watch::default()).await
}

/// One `dm` run, with the CPU of the watched processes from the first send until the last
/// delivery (or the drain limit), per delivered message.
pub async fn run_watched(options: &Options, watch: &Watch) -> anyhow::Result<DmReport> {
    net::raise_fd_limit();
    let gateway = net::addr(&options.gateway)?;
    let secret = options.secret();
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let sources = Sources::new(0, options.pairs * 2);
    let stats = Arc::new(DmStats::default());
    let interval = Duration::from_secs_f64(options.pairs as f64 / options.rate.max(1) as f64);

    // Every socket first, then every sender at once: the run's rate is the offered one
    // from its first send, and the report's window starts there.
    let mut pairs = Vec::with_capacity(options.pairs);
    for i in 0..options.pairs {
        let (a, b) = (format!("bench-{run}-a{i}"), format!("bench-{run}-b{i}"));
        let rx = net::connect(gateway, sources.pick(), &token(&secret, &b)?, "bench", None).await?;
        let tx = net::connect(gateway, sources.pick(), &token(&secret, &a)?, "bench", None).await?;
        pairs.push((rx, tx, b));
    }
    let origin = Instant::now();
    let deadline = origin + Duration::from_secs(options.seconds);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (rx, tx, b) in pairs {
        receivers.push(tokio::spawn(receive(
            rx,
            origin,
            stats.clone(),
            stop_rx.clone(),
        )));
        senders.push(tokio::spawn(send(
            tx,
            b,
            origin,
            interval,
            deadline,
            stats.clone(),
        )));
    }
    let started_us = 0;
    let window = watch.start()?;
    for s in senders {
        s.await??;
    }
    // Wait until every acknowledged send was delivered, or give up after DRAIN_LIMIT:
    // what is still missing then is reported as lost.
    let drain_start = Instant::now();
    while stats.deliveries.load(Ordering::Relaxed) < stats.confirmed.load(Ordering::Relaxed)
        && drain_start.elapsed() < DRAIN_LIMIT
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = window.finish(stats.deliveries.load(Ordering::Relaxed), "message");
    let _ = stop_tx.send(true);
    for r in receivers {
        r.await??;
    }
    let mut report = stats
        .report(RunShape {
            system: options.system.clone(),
            pairs: options.pairs,
            offered_per_s: options.rate as f64,
            seconds: options.seconds as f64,
            started_us,
            deadline_us: deadline.duration_since(origin).as_micros() as u64,
        })
        .await;
    report.cpu = Some(cpu);
    Ok(report)
}

async fn send(
    socket: Socket,
    to: String,
    origin: Instant,
    interval: Duration,
    deadline: Instant,
    stats: Arc<DmStats>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = socket.split();
    let reader_stats = stats.clone();
    let reader = tokio::spawn(async move {
        // Until the socket has been quiet for 5 s (every `sent` is in by then) or closes;
        // the gateway's keepalive pings are answered by the socket itself.
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        {
            let Message::Text(text) = message else {
                continue;
            };
            let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            match frame["type"].as_str() {
                Some("sent") => {
                    let at: u64 = frame["ref"]
                        .as_str()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0);
                    let now = origin.elapsed().as_micros() as u64;
                    reader_stats.confirmed.fetch_add(1, Ordering::Relaxed);
                    reader_stats
                        .confirm_latency
                        .record(now.saturating_sub(at))
                        .await;
                }
                Some("error") => {
                    reader_stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while Instant::now() < deadline {
        ticks.tick().await;
        let at = origin.elapsed().as_micros();
        let frame = json!({
            "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": format!("user:{to}"),
            "body": {"kind": "text", "text": at.to_string()}, "ref": at.to_string(),
        });
        sink.send(Message::text(frame.to_string())).await?;
        stats.sends.fetch_add(1, Ordering::Relaxed);
    }
    reader.await?;
    Ok(())
}

/// Receives messages and acks them the way a phone would: the newest sequence at most
/// every [`ACK_EVERY`], not one ack per message.
async fn receive(
    socket: Socket,
    origin: Instant,
    stats: Arc<DmStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = socket.split();
    let (mut newest, mut acked) = (0u64, 0u64);
    let mut seen = HashSet::new();
    let mut ticks = tokio::time::interval(ACK_EVERY);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if newest > acked {
                    sink.send(Message::text(json!({"type": "ack", "seq": newest}).to_string())).await?;
                    acked = newest;
                }
            }
            _ = stop.changed() => return Ok(()),
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                let Message::Text(text) = message? else { continue };
                let frame: Value = serde_json::from_str(text.as_str())?;
                newest = newest.max(frame["seq"].as_u64().unwrap_or(0));
                if frame["type"] != "msg" {
                    continue;
                }
                if !seen.insert(frame["id"].as_str().unwrap_or_default().to_owned()) {
                    stats.doubled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let at: u64 = frame["body"]["text"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
                let now = origin.elapsed().as_micros() as u64;
                stats.deliveries.fetch_add(1, Ordering::Relaxed);
                stats.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                stats.deliver_latency.record(now.saturating_sub(at)).await;
            }
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct SweepOptions {
    #[command(flatten)]
    pub dm: Options,
    /// Offered rates to try, in order; the sweep stops at the first the system cannot keep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,500,1000,2000,3000,4000,5000,6000"
    )]
    pub rates: Vec<u64>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub runs: Vec<DmReport>,
    /// The highest delivered rate among runs that kept up.
    pub peak_per_s: f64,
    /// The run at half of `peak_per_s`.
    pub half_peak: Option<DmReport>,
}

/// A run keeps up when it delivers ≥ 95 % of the offered rate, loses nothing, and drains
/// its backlog within two seconds of the end of sending.
pub fn kept_up(run: &DmReport) -> bool {
    run.delivered_per_s >= 0.95 * run.offered_per_s && run.lost == 0 && run.drain_s <= 2.0
}

pub async fn sweep(options: &SweepOptions) -> anyhow::Result<SweepReport> {
    let watch = options.watch.watch()?;
    let mut runs = Vec::new();
    let mut peak: f64 = 0.0;
    for &rate in &options.rates {
        let run = run_watched(
            &Options {
                rate,
                ..options.dm.clone()
            },
            &watch,
        )
        .await?;
        eprintln!("{}", run.row());
        run.cpu
            .iter()
            .flat_map(|c| c.table())
            .for_each(|l| eprintln!("{l}"));
        let ok = kept_up(&run);
        if ok {
            peak = peak.max(run.delivered_per_s);
        }
        runs.push(run);
        if !ok {
            break;
        }
    }
    let half_peak = if peak > 0.0 {
        let half = run_watched(
            &Options {
                rate: (peak / 2.0).round() as u64,
                ..options.dm.clone()
            },
            &watch,
        )
        .await?;
        eprintln!("{} (half of peak)", half.row());
        Some(half)
    } else {
        None
    };
    Ok(SweepReport {
        runs,
        peak_per_s: peak,
        half_peak,
    })
}
