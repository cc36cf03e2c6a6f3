//! `raw floor` and `raw lat`: republished inbox writes into `BENCH_INBOX`, read back the
//! way Natter reads its inboxes, with no Natter code in between.
//!
//! `floor` is the least durable work a 1:1 chat message needs, so Natter's 1:1 rate can be
//! read as a share of what its promises allow rather than of a single write: per message
//! two publishes with distinct `Nats-Msg-Id`s (the recipient's inbox item and the sender's
//! copy for their other devices), each stored R3 and republished; one core subscription on
//! `bench.live.*` receives every republished copy (what gateways do); one R1 consumer with
//! no acks reads every item (what a history/push tail reader does). A message counts once
//! both copies are acked. The tail consumer's state is in memory by default: the reader
//! keeps its own checkpoint (Natter commits it with the history it writes), so the
//! consumer's state is a cache, and file storage would only add disk writes that promise
//! nothing (`--tail-storage file` measures them).
//!
//! `lat` is one republished write per message at a paced rate: publish → republished
//! arrival, the floor under Natter's send → deliver at the same offered rate. Paced sends
//! are timed from when they were due, so a late send shows as latency.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use async_nats::jetstream::{
    self, consumer::pull, context::PublishAckFuture, message::PublishMessage,
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    INBOX_STREAM, LIVE_ALL, NatsOptions, PROBE_LIVE, TailStorage, await_interest, inbox_stream,
    inbox_subject, recreate, run_id, stamp, stamped,
};
use crate::{
    cpu::{CpuReport, Watch},
    report::{Latency, histogram},
};

/// After sending, how long to wait for the last republished copies and tail reads.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// Stored copies per message: 2 for floor, 1 for lat.
    pub copies: usize,
    /// Paced at this many messages per second, or flat out.
    pub rate: Option<u64>,
    pub seconds: u64,
    /// Messages whose acks are awaited at a time.
    pub in_flight: usize,
    pub payload: usize,
    pub pairs: usize,
    /// The tail reader, if any.
    pub tail: Option<TailStorage>,
}

#[derive(Debug, Serialize)]
pub struct FlowReport {
    pub copies: usize,
    /// `null`: flat out.
    pub offered_per_s: Option<u64>,
    pub in_flight: usize,
    pub users: usize,
    /// Messages whose every copy was acked.
    pub messages: u64,
    /// From the first publish to the last ack.
    pub seconds: f64,
    pub messages_per_s: f64,
    pub errors: u64,
    /// Per message: first publish → every copy acked.
    pub publish_to_ack_ms: Latency,
    /// Per copy: publish (or when it was due, if paced) → republished arrival.
    pub publish_to_live_ms: Latency,
    pub live_received: u64,
    /// Acked copies never republished to the subscriber within the drain limit.
    pub live_missing: u64,
    pub tail_storage: Option<TailStorage>,
    /// Items the tail reader read (`null`: no tail reader).
    pub tail_read: Option<u64>,
    /// After the last ack, until the subscriber and the tail reader had everything.
    pub drain_s: f64,
    /// From the first publish to the end of the drain; per message.
    pub cpu: CpuReport,
}

impl FlowReport {
    pub fn table(&self) -> Vec<String> {
        let (a, l) = (self.publish_to_ack_ms, self.publish_to_live_ms);
        vec![
            "copies  offered/s  messages/s  ack p50/p99 ms     live p50/p99 ms    live got/missing  tail read".into(),
            format!(
                "{:>6} {:>10} {:>11.0} {:>7.2} / {:<8.2} {:>7.2} / {:<8.2} {:>9} / {:<6} {:>9}",
                self.copies,
                self.offered_per_s
                    .map_or_else(|| "max".to_owned(), |r| r.to_string()),
                self.messages_per_s,
                a.p50,
                a.p99,
                l.p50,
                l.p99,
                self.live_received,
                self.live_missing,
                self.tail_read
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ),
        ]
    }
}

pub async fn run(
    options: &NatsOptions,
    spec: &FlowSpec,
    watch_cpu: &Watch,
) -> anyhow::Result<FlowReport> {
    // Writer, gateway-like subscriber and tail reader each have their own connection, as
    // they would be separate processes.
    let js = jetstream::new(options.connect().await?);
    recreate(&js, inbox_stream()).await?;
    let origin = Instant::now();
    let (live, probes) = Live::start(&options.connect().await?, &js, origin).await?;
    let tail = match spec.tail {
        Some(storage) => Some(Tail::start(&options.connect().await?, storage, probes + 1).await?),
        None => None,
    };
    let run = run_id();
    let users = spec.pairs * 2;

    let window = watch_cpu.start()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(spec.seconds);
    let mut pending = FuturesUnordered::new();
    let mut ack_latency = histogram();
    let (mut sent, mut acked, mut errors) = (0u64, 0u64, 0u64);
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let since = now.duration_since(started);
        let due = spec
            .rate
            .map_or(u64::MAX, |r| (since.as_secs_f64() * r as f64) as u64);
        if sent < due && pending.len() < spec.in_flight {
            // Paced: stamped with when it was due, so lateness counts as latency.
            let at = match spec.rate {
                Some(r) => {
                    sent * 1_000_000 / r.max(1) + started.duration_since(origin).as_micros() as u64
                }
                None => origin.elapsed().as_micros() as u64,
            };
            let acks = publish(&js, spec, &run, sent, at, users).await?;
            pending.push(all_acked(acks, Instant::now()));
            sent += 1;
            continue;
        }
        tokio::select! {
            Some((ok, at)) = pending.next(), if !pending.is_empty() => {
                count(ok, at, &mut acked, &mut errors, &mut ack_latency);
            }
            _ = ticks.tick(), if spec.rate.is_some() => {}
        }
    }
    while let Some((ok, at)) = pending.next().await {
        count(ok, at, &mut acked, &mut errors, &mut ack_latency);
    }
    let seconds = started.elapsed().as_secs_f64();

    let expected = acked * spec.copies as u64;
    let drain = Instant::now();
    while drain.elapsed() < DRAIN_LIMIT
        && (live.received.load(Ordering::Relaxed) < expected
            || tail
                .as_ref()
                .is_some_and(|t| t.read.load(Ordering::Relaxed) < expected))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_s = drain.elapsed().as_secs_f64();
    let cpu = window.finish(acked, "message");
    let live_received = live.received.load(Ordering::Relaxed);
    let publish_to_live_ms = Latency::of(&live.stop().await?);
    let tail_read = tail.map(|t| {
        t.task.abort();
        t.read.load(Ordering::Relaxed)
    });
    js.delete_stream(INBOX_STREAM)
        .await
        .context("delete BENCH_INBOX")?;
    Ok(FlowReport {
        copies: spec.copies,
        offered_per_s: spec.rate,
        in_flight: spec.in_flight,
        users,
        messages: acked,
        seconds,
        messages_per_s: acked as f64 / seconds.max(1e-9),
        errors,
        publish_to_ack_ms: Latency::of(&ack_latency),
        publish_to_live_ms,
        live_received,
        live_missing: expected.saturating_sub(live_received),
        tail_storage: spec.tail,
        tail_read,
        drain_s,
        cpu,
    })
}

/// Message `i`'s copies, pipelined: the recipient's and (floor) the sender's inbox item.
async fn publish(
    js: &jetstream::Context,
    spec: &FlowSpec,
    run: &str,
    i: u64,
    at_us: u64,
    users: usize,
) -> anyhow::Result<Vec<PublishAckFuture>> {
    // Pair p is users 2p (sender) and 2p + 1 (recipient), as `dm` pairs them; lat spreads
    // its single copies over every user.
    let targets = if spec.copies == 2 {
        let p = (i % spec.pairs as u64) * 2;
        vec![p + 1, p]
    } else {
        vec![i % users as u64]
    };
    let payload = stamped(i, at_us, spec.payload);
    let mut acks = Vec::with_capacity(targets.len());
    for (c, user) in targets.into_iter().enumerate() {
        let message = PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("{run}-{i}-{c}"));
        acks.push(
            js.send_publish(inbox_subject(&format!("u{user}")), message)
                .await
                .context("publish to BENCH_INBOX")?,
        );
    }
    Ok(acks)
}

/// Whether every copy was stored, and when the message was published.
async fn all_acked(acks: Vec<PublishAckFuture>, at: Instant) -> (bool, Instant) {
    let mut ok = true;
    for ack in acks {
        ok &= ack.await.is_ok();
    }
    (ok, at)
}

fn count(ok: bool, at: Instant, acked: &mut u64, errors: &mut u64, latency: &mut Histogram<u64>) {
    if ok {
        *acked += 1;
        latency.saturating_record(at.elapsed().as_micros() as u64);
    } else {
        *errors += 1;
    }
}

/// One core subscription on every user's live subject: counts republished copies and
/// times each from its stamp.
struct Live {
    received: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Histogram<u64>>,
}

impl Live {
    /// Subscribes, makes sure republished items reach the subscription, and returns the
    /// stream sequence of the last probe that proved it.
    async fn start(
        client: &async_nats::Client,
        js: &jetstream::Context,
        origin: Instant,
    ) -> anyhow::Result<(Self, u64)> {
        let mut subscriber = client.subscribe(LIVE_ALL).await?;
        client.flush().await.context("subscribe to bench.live.*")?;
        let probes = await_interest(js, &mut subscriber).await?;
        let received = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let count = received.clone();
        let task = tokio::spawn(async move {
            let mut latency = histogram();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    message = subscriber.next() => {
                        let Some(message) = message else { break };
                        if message.subject.as_str() == PROBE_LIVE {
                            continue;
                        }
                        let now = origin.elapsed().as_micros() as u64;
                        if let Some((_, at)) = stamp(&message.payload) {
                            latency.saturating_record(now.saturating_sub(at));
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latency
        });
        Ok((
            Self {
                received,
                stop,
                task,
            },
            probes,
        ))
    }

    async fn stop(self) -> anyhow::Result<Histogram<u64>> {
        let _ = self.stop.send(true);
        Ok(self.task.await?)
    }
}

/// The R1 no-ack tail reader: a durable pull consumer from `start` (after the probes).
struct Tail {
    read: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Tail {
    async fn start(
        client: &async_nats::Client,
        storage: TailStorage,
        start: u64,
    ) -> anyhow::Result<Self> {
        let stream = jetstream::new(client.clone())
            .get_stream(INBOX_STREAM)
            .await
            .context("BENCH_INBOX for the tail reader")?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("tail".into()),
                ack_policy: jetstream::consumer::AckPolicy::None,
                num_replicas: 1,
                memory_storage: storage == TailStorage::Memory,
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .context("create the tail consumer on BENCH_INBOX")?;
        let mut messages = consumer
            .messages()
            .await
            .context("tail consumer messages")?;
        let read = Arc::new(AtomicU64::new(0));
        let count = read.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                if message.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self { read, task })
    }
}
