//! The device side of the reconnect storms, run in load processes (see shard.rs): for
//! `storm`, connect, receive and ack a first message, drop, then reconnect with `after`;
//! for `storm-control` only the reconnect ([`reconnect_all`]), so both storms time the
//! same client doing the same handshakes with the same concurrency.

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
    shard::{self, Orders, ShardOptions},
};

/// Handshakes in flight per load process, during the first connect and the storm.
pub const CONNECTING: usize = 512;
/// How long any phase may take before what is missing counts as lost.
pub const PHASE_LIMIT: Duration = Duration::from_secs(180);
/// The first and the longest pause before a refused reconnect is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MOST: Duration = Duration::from_secs(4);

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
    /// Devices that could not connect within [`PHASE_LIMIT`].
    pub connect_failed: u64,
    /// Connect attempts refused (a 503 while the gateway is busy, say) and tried again, as
    /// a phone does.
    pub connect_retried: u64,
    /// From the reconnect order to the last device caught up.
    pub last_s: f64,
    /// Per device: reconnect order → all its new messages.
    pub catch_up_ms: Latency,
}

/// A device between phases: who it is and the inbox cursor it stored.
pub struct Device {
    pub user: String,
    pub cursor: u64,
    pub seen: HashSet<String>,
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
    let report = reconnect_all(gateway, &sources, &options.secret, devices, expected).await;
    shard::say(&report)?;
    while let Some(order) = orders.next().await {
        if order == "stop" {
            break;
        }
    }
    Ok(())
}

/// Every device comes back at once with its cursor and expects `expected` new messages;
/// the report counts from now until the last device has them.
pub async fn reconnect_all(
    gateway: SocketAddr,
    sources: &Sources,
    secret: &str,
    devices: Vec<Device>,
    expected: usize,
) -> CaughtUp {
    let storm = Instant::now();
    // Every device comes back at once; only the handshakes in flight are bounded (not the
    // devices' whole stay, which ends with a linger that checks for doubles).
    let handshakes = tokio::sync::Semaphore::new(CONNECTING);
    let outcomes: Vec<Outcome> = stream::iter(devices)
        .map(|device| {
            catch_up(
                gateway,
                sources.pick(),
                secret,
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
        connect_retried: 0,
        last_s: 0.0,
        catch_up_ms: Latency::default(),
    };
    for o in &outcomes {
        report.doubled += o.doubled;
        report.replayed += o.replayed;
        report.lost += expected.saturating_sub(o.new) as u64;
        report.connect_failed += u64::from(o.connect_failed);
        report.connect_retried += o.connect_retried;
        if let Some(done) = o.done {
            report.complete += 1;
            report.last_s = report.last_s.max(done.as_secs_f64());
            latency.saturating_record(done.as_micros() as u64);
        }
    }
    report.catch_up_ms = Latency::of(&latency);
    report
}

struct Outcome {
    new: usize,
    doubled: u64,
    replayed: u64,
    connect_failed: bool,
    connect_retried: u64,
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
        connect_retried: 0,
        done: None,
    };
    let deadline = storm + PHASE_LIMIT;
    // A refused attempt is tried again after a pause that grows, as a phone does; the
    // pauses are spread so the retries do not come back as one wave.
    let spread = {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(&device.user) % 250
    };
    let mut pause = RETRY_FIRST + Duration::from_millis(spread);
    let mut socket = loop {
        let attempt = {
            let _slot = handshakes.acquire().await.expect("never closed");
            match token(secret, &device.user) {
                Ok(token) => net::connect(gateway, source, &token, "d0", Some(device.cursor)).await,
                Err(e) => Err(e),
            }
        };
        match attempt {
            Ok(socket) => break socket,
            Err(_) if Instant::now() + pause < deadline => {
                outcome.connect_retried += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MOST);
            }
            Err(_) => {
                outcome.connect_failed = true;
                return outcome;
            }
        }
    };
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
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(linger.into(), socket.next()).await {
        let Message::Text(text) = message else {
            continue;
        };
        if let Ok(frame) = serde_json::from_str::<Value>(text.as_str())
            && frame["type"] == "msg"
        {
            outcome.doubled += 1;
        }
    }
    outcome
}
