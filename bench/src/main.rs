//! `natter-bench`: drives a running Natter (e.g. `scripts/up`) through its WebSocket API,
//! as real clients would, and reports throughput and latency percentiles.
//!
//! Scenario `dm`: `pairs` one-on-one conversations; each sender sends at `rate / pairs`
//! messages per second for `seconds`; each receiver acks every message it gets (which
//! drives delivered receipts, as a phone would). Latencies are measured in this process
//! on one monotonic clock: send→sent (the JetStream ack reached the sender) and
//! send→deliver (the message reached the recipient's socket).
//!
//! Scenario `history`: see [`history`].

mod history;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Dm,
    History,
}

#[derive(Debug, Parser)]
#[command(name = "natter-bench", about = "Load tool for Natter")]
struct Cli {
    #[arg(long, value_enum, default_value = "dm")]
    scenario: Scenario,
    /// `history`: messages in the conversation.
    #[arg(long, default_value_t = 5_000)]
    messages: usize,
    /// `history`: page requests timed.
    #[arg(long, default_value_t = 500)]
    pages: usize,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: String,
    /// Conversations (a sender and a receiver socket each).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Offered messages per second, over all pairs.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// HS256 secret of the gateway (default: the development secret).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

/// After the sending window, how long the tool waits for the last deliveries.
const DRAIN_LIMIT: Duration = Duration::from_secs(45);

#[derive(Default)]
struct Stats {
    sent: Mutex<Option<Histogram<u64>>>,
    delivered: Mutex<Option<Histogram<u64>>>,
    sends: AtomicU64,
    acks: AtomicU64,
    deliveries: AtomicU64,
    errors: AtomicU64,
    /// Microseconds since the start at which the last message was delivered.
    last_delivery_us: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

async fn record(slot: &Mutex<Option<Histogram<u64>>>, micros: u64) {
    let mut slot = slot.lock().await;
    slot.get_or_insert_with(histogram)
        .saturating_record(micros.max(1));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let secret = cli
        .secret
        .clone()
        .unwrap_or_else(|| natter_gateway::config::DEV_JWT_SECRET.to_owned());
    if cli.scenario == Scenario::History {
        let report = history::run(&cli.gateway, &secret, cli.messages.max(100), cli.pages).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let origin = Instant::now();
    let stats = Arc::new(Stats::default());
    let interval = Duration::from_secs_f64(cli.pairs as f64 / cli.rate as f64);
    let deadline = origin + Duration::from_secs(cli.seconds);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..cli.pairs {
        let (a, b) = (format!("bench-{run}-a{i}"), format!("bench-{run}-b{i}"));
        let rx = connect(&cli.gateway, &secret, &b).await?;
        let tx = connect(&cli.gateway, &secret, &a).await?;
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
    let started_us = origin.elapsed().as_micros() as u64;
    for s in senders {
        s.await??;
    }
    // Wait until every acknowledged send was delivered, or give up after DRAIN_LIMIT:
    // what is still missing then is reported as lost.
    let drain_start = Instant::now();
    while stats.deliveries.load(Ordering::Relaxed) < stats.acks.load(Ordering::Relaxed)
        && drain_start.elapsed() < DRAIN_LIMIT
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    for r in receivers {
        r.await??;
    }
    let busy = Duration::from_micros(
        stats
            .last_delivery_us
            .load(Ordering::Relaxed)
            .saturating_sub(started_us),
    );

    let sends = stats.sends.load(Ordering::Relaxed);
    let acks = stats.acks.load(Ordering::Relaxed);
    let deliveries = stats.deliveries.load(Ordering::Relaxed);
    let sent = stats.sent.lock().await.take().unwrap_or_else(histogram);
    let delivered = stats
        .delivered
        .lock()
        .await
        .take()
        .unwrap_or_else(histogram);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "scenario": "dm",
        "pairs": cli.pairs,
        "offered_per_s": cli.rate,
        "seconds": cli.seconds,
        "sends": sends,
        "sent_acks": acks,
        "delivered": deliveries,
        "lost": acks.saturating_sub(deliveries),
        "drain_after_sending_s": stats.last_delivery_us.load(Ordering::Relaxed).saturating_sub(deadline.duration_since(origin).as_micros() as u64) as f64 / 1e6,
        "errors": stats.errors.load(Ordering::Relaxed),
        "delivered_per_s": deliveries as f64 / busy.as_secs_f64().max(1e-9),
        "send_to_sent_ms": {"p50": ms(&sent, 0.5), "p90": ms(&sent, 0.9), "p99": ms(&sent, 0.99), "max": ms(&sent, 1.0)},
        "send_to_deliver_ms": {"p50": ms(&delivered, 0.5), "p90": ms(&delivered, 0.9), "p99": ms(&delivered, 0.99), "max": ms(&delivered, 1.0)},
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gateway: &str, secret: &str, user: &str) -> anyhow::Result<Socket> {
    let token = natter_gateway::auth::mint_hs256(secret.as_bytes(), user, None, 3600, None, None)?;
    let url = format!("ws://{gateway}/v1/ws?token={token}&device=bench");
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("connect {user}"))?;
    Ok(socket)
}

async fn send(
    socket: Socket,
    to: String,
    origin: Instant,
    interval: Duration,
    deadline: Instant,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = socket.split();
    let reader_stats = stats.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            match frame["type"].as_str() {
                Some("sent") => {
                    let at: u64 = frame["ref"]
                        .as_str()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0);
                    let now = origin.elapsed().as_micros() as u64;
                    reader_stats.acks.fetch_add(1, Ordering::Relaxed);
                    record(&reader_stats.sent, now.saturating_sub(at)).await;
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
    stats: Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    const ACK_EVERY: Duration = Duration::from_millis(20);
    let (mut sink, mut stream) = socket.split();
    let (mut newest, mut acked) = (0u64, 0u64);
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
                let at: u64 = frame["body"]["text"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
                let now = origin.elapsed().as_micros() as u64;
                stats.deliveries.fetch_add(1, Ordering::Relaxed);
                stats.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                record(&stats.delivered, now.saturating_sub(at)).await;
            }
        }
    }
}
