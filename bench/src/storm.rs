//! Scenario `storm` (reconnect storm): `users` devices, spread over the gateways with one
//! load process per gateway, connect and each receive and ack one message (so every
//! device holds a real inbox cursor). Then every socket drops at once; while they are
//! away each user is sent `messages` more; then all reconnect at once with `after` = their
//! cursor. The report has the time from the reconnect order until the last device has all
//! its new messages, and what the devices checked: nothing lost, nothing doubled, nothing
//! at or before the cursor sent again.

use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    dm::token,
    net::{self, Socket, Sources},
    report::{Latency, histogram},
    shard::{self, Orders, Shard, ShardOptions},
};

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
}

/// Handshakes in flight per load process, during the first connect and the storm.
const CONNECTING: usize = 512;
/// How long any phase may take before what is missing counts as lost.
const PHASE_LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug, Serialize, Deserialize)]
pub struct Phase {
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CaughtUp {
    pub users: u64,
    /// Devices that got every new message.
    pub complete: u64,
    pub lost: u64,
    pub doubled: u64,
    /// Messages at or before the device's cursor sent again.
    pub replayed: u64,
    pub connect_failed: u64,
    /// From the reconnect order to the last device caught up.
    pub last_s: f64,
    /// Per device: reconnect order → all its new messages.
    pub catch_up_ms: Latency,
}

/// A device between phases: who it is and the inbox cursor it stored.
struct Device {
    user: String,
    cursor: u64,
    seen: HashSet<String>,
}

/// Reads until the first `msg`, acks it, and returns its sequence and id.
async fn first_message(socket: &mut Socket) -> anyhow::Result<(u64, String)> {
    loop {
        let Message::Text(text) = socket.next().await.context("closed")?? else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str())?;
        if frame["type"] == "msg" {
            let seq = frame["seq"].as_u64().context("msg without seq")?;
            socket
                .send(Message::text(
                    json!({"type": "ack", "seq": seq}).to_string(),
                ))
                .await?;
            return Ok((seq, frame["id"].as_str().unwrap_or_default().to_owned()));
        }
    }
}

/// Child: the device side of the storm, phase by phase on the parent's orders.
pub async fn shard(options: &ShardOptions) -> anyhow::Result<()> {
    net::raise_fd_limit();
    let gateway = net::addr(&options.gateway)?;
    let sources = Sources::new(options.first_source, options.users * 2);
    let mut orders = Orders::new();
    let users: Vec<String> = (0..options.users)
        .map(|i| format!("{}-{i}", options.prefix))
        .collect();

    // Phase 1: connect everyone.
    let started = Instant::now();
    let results: Vec<anyhow::Result<Socket>> = stream::iter(users.iter())
        .map(|user| {
            let token = token(&options.secret, user);
            let source = sources.pick();
            async move { net::connect(gateway, source, &token?, "d0", None).await }
        })
        .buffered(CONNECTING)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count() as u64;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("storm load process: first connect error: {e:#}");
    }
    let sockets: Vec<(String, Socket)> = users
        .iter()
        .cloned()
        .zip(results)
        .filter_map(|(u, r)| r.ok().map(|s| (u, s)))
        .collect();
    shard::say(&Phase {
        ok: sockets.len() as u64,
        failed,
        seconds: started.elapsed().as_secs_f64(),
    })?;

    // Phase 2: every device receives and acks its first message.
    let started = Instant::now();
    let warm: Vec<(Option<Device>, Socket)> = stream::iter(sockets)
        .map(|(user, mut socket)| async move {
            let got = tokio::time::timeout(PHASE_LIMIT, first_message(&mut socket)).await;
            let device = match got {
                Ok(Ok((cursor, id))) => Some(Device {
                    user,
                    cursor,
                    seen: HashSet::from([id]),
                }),
                _ => None,
            };
            (device, socket)
        })
        .buffer_unordered(usize::MAX)
        .collect()
        .await;
    let ready = warm.iter().filter(|(d, _)| d.is_some()).count() as u64;
    shard::say(&Phase {
        ok: ready,
        failed: warm.len() as u64 - ready,
        seconds: started.elapsed().as_secs_f64(),
    })?;

    // Phase 3: on `drop`, every socket goes away at once (a network drop: no close frame).
    anyhow::ensure!(
        orders.next().await.as_deref() == Some("drop"),
        "expected drop"
    );
    let devices: Vec<Device> = warm.into_iter().filter_map(|(d, _)| d).collect();
    shard::say(&Phase {
        ok: devices.len() as u64,
        failed: 0,
        seconds: 0.0,
    })?;

    // Phase 4: on `reconnect <n>`, everyone comes back with `after` and expects n new ones.
    let order = orders.next().await.unwrap_or_default();
    let expected: usize = order
        .strip_prefix("reconnect ")
        .context("expected reconnect <n>")?
        .parse()?;
    let storm = Instant::now();
    // Every device comes back at once; only the handshakes in flight are bounded (not the
    // devices' whole stay, which ends with a linger that checks for doubles).
    let handshakes = tokio::sync::Semaphore::new(CONNECTING);
    let outcomes: Vec<Outcome> = stream::iter(devices)
        .map(|device| {
            catch_up(
                gateway,
                sources.pick(),
                &options.secret,
                device,
                expected,
                storm,
                &handshakes,
            )
        })
        .buffer_unordered(usize::MAX)
        .collect()
        .await;
    let mut latency = histogram();
    let mut report = CaughtUp {
        users: outcomes.len() as u64,
        complete: 0,
        lost: 0,
        doubled: 0,
        replayed: 0,
        connect_failed: 0,
        last_s: 0.0,
        catch_up_ms: Latency::default(),
    };
    for o in &outcomes {
        report.doubled += o.doubled;
        report.replayed += o.replayed;
        report.lost += expected.saturating_sub(o.new) as u64;
        report.connect_failed += u64::from(o.connect_failed);
        if let Some(done) = o.done {
            report.complete += 1;
            report.last_s = report.last_s.max(done.as_secs_f64());
            latency.saturating_record(done.as_micros() as u64);
        }
    }
    report.catch_up_ms = Latency::of(&latency);
    shard::say(&report)?;
    while let Some(order) = orders.next().await {
        if order == "stop" {
            break;
        }
    }
    Ok(())
}

struct Outcome {
    new: usize,
    doubled: u64,
    replayed: u64,
    connect_failed: bool,
    done: Option<Duration>,
}

/// One device's return: reconnect with its cursor, read until `expected` new messages.
async fn catch_up(
    gateway: SocketAddr,
    source: std::net::Ipv4Addr,
    secret: &str,
    mut device: Device,
    expected: usize,
    storm: Instant,
    handshakes: &tokio::sync::Semaphore,
) -> Outcome {
    let mut outcome = Outcome {
        new: 0,
        doubled: 0,
        replayed: 0,
        connect_failed: false,
        done: None,
    };
    let socket = {
        let _slot = handshakes.acquire().await.expect("never closed");
        match token(secret, &device.user) {
            Ok(token) => net::connect(gateway, source, &token, "d0", Some(device.cursor)).await,
            Err(e) => Err(e),
        }
    };
    let Ok(mut socket) = socket else {
        outcome.connect_failed = true;
        return outcome;
    };
    let deadline = storm + PHASE_LIMIT;
    while outcome.new < expected {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline.into(), socket.next()).await
        else {
            return outcome;
        };
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if frame["type"] != "msg" {
            continue;
        }
        let seq = frame["seq"].as_u64().unwrap_or(0);
        let id = frame["id"].as_str().unwrap_or_default().to_owned();
        if seq <= device.cursor {
            outcome.replayed += 1;
        } else if !device.seen.insert(id) {
            outcome.doubled += 1;
        } else {
            outcome.new += 1;
            device.cursor = seq;
        }
    }
    outcome.done = Some(storm.elapsed());
    // Stay a little while, so anything sent twice would still arrive and be counted.
    let linger = Instant::now() + Duration::from_secs(2);
    while let Ok(Some(Ok(Message::Text(text)))) =
        tokio::time::timeout_at(linger.into(), socket.next()).await
    {
        if let Ok(frame) = serde_json::from_str::<Value>(text.as_str())
            && frame["type"] == "msg"
        {
            outcome.doubled += 1;
        }
    }
    outcome
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
    /// From the reconnect order until the last device had all its messages.
    pub all_caught_up_s: f64,
    pub complete: u64,
    pub lost: u64,
    pub doubled: u64,
    pub replayed: u64,
    pub connect_failed: u64,
    pub catch_up_ms_by_process: Vec<Latency>,
}

impl StormReport {
    pub fn table(&self) -> Vec<String> {
        vec![
            "devices  gateways  msgs/device  all caught up s  complete  lost  doubled  replayed"
                .into(),
            format!(
                "{:>7} {:>9} {:>12} {:>16.2} {:>9} {:>5} {:>8} {:>9}",
                self.users,
                self.gateways,
                self.messages_per_user,
                self.all_caught_up_s,
                self.complete,
                self.lost,
                self.doubled,
                self.replayed
            ),
        ]
    }
}

pub async fn run(options: &Options) -> anyhow::Result<StormReport> {
    net::raise_fd_limit();
    let secret = options
        .secret
        .clone()
        .unwrap_or_else(|| natter_gateway::config::DEV_JWT_SECRET.to_owned());
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
    for shard in &mut shards {
        shard
            .tell(&format!("reconnect {}", options.messages))
            .await?;
    }
    let mut report = StormReport {
        users: options.users,
        gateways: options.gateways.len(),
        messages_per_user: options.messages,
        connected,
        warm,
        sent_while_away: away.stored,
        send_per_s: away.per_s,
        settle_seconds,
        all_caught_up_s: 0.0,
        complete: 0,
        lost: 0,
        doubled: 0,
        replayed: 0,
        connect_failed: 0,
        catch_up_ms_by_process: Vec::new(),
    };
    for shard in &mut shards {
        let c: CaughtUp = shard.next().await?;
        report.all_caught_up_s = report.all_caught_up_s.max(c.last_s);
        report.complete += c.complete;
        report.lost += c.lost;
        report.doubled += c.doubled;
        report.replayed += c.replayed;
        report.connect_failed += c.connect_failed;
        report.catch_up_ms_by_process.push(c.catch_up_ms);
    }
    for shard in shards {
        shard.finish().await?;
    }
    Ok(report)
}

/// Waits for every load process's report of a phase; returns the devices that made it.
async fn sum(shards: &mut [Shard], phase: &str) -> anyhow::Result<u64> {
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
