//! Scenario `ceiling`: how close Natter gets to the physical limit of its fabric. In one
//! run it first drives Natter's one-on-one path (`dm`) at the offered rate, then does as
//! many JetStream writes as Natter confirmed messages, directly with async-nats: the same
//! 3-node cluster, an R3 file stream, payloads of the same size, `in_flight` unacknowledged
//! publishes at a time (no gateway, no worker, no WebSocket). The report gives both rates
//! and Natter's messages/s as a ratio of the raw writes/s.
//!
//! Each Natter message is itself several replicated writes (the message, the recipient's
//! and the sender's inbox items, the receipt event and receipt), so the ratio also shows
//! what that design costs against a single write.
//!
//! The raw writer logs in as NATS user `bench` (nats/accounts.conf), which may only create,
//! write and delete its own stream `BENCH`.

use std::time::Instant;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use futures_util::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;

use crate::{
    dm,
    report::{DmReport, Latency, histogram},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub dm: dm::Options,
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
    )]
    pub nats: String,
    #[arg(long, default_value = "bench")]
    pub nats_user: String,
    #[arg(long, default_value = "bench-dev", env = "NATTER_BENCH_NATS_PASSWORD")]
    pub nats_password: String,
    /// Raw publishes awaiting their JetStream ack at any time.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Bytes per raw write (Natter's stored message is about this size).
    #[arg(long, default_value_t = 300)]
    pub payload: usize,
}

#[derive(Debug, Serialize)]
pub struct RawReport {
    pub writes: u64,
    pub seconds: f64,
    pub writes_per_s: f64,
    pub publish_to_ack_ms: Latency,
}

#[derive(Debug, Serialize)]
pub struct CeilingReport {
    pub natter: DmReport,
    pub raw_jetstream: RawReport,
    /// Natter's delivered messages/s over the raw writes/s.
    pub ratio: f64,
}

impl CeilingReport {
    pub fn table(&self) -> Vec<String> {
        vec![
            DmReport::header().into(),
            self.natter.row(),
            format!(
                "raw JetStream R3: {} writes at {:.0}/s (publish → ack p50 {:.2} ms, p99 {:.2} ms)",
                self.raw_jetstream.writes,
                self.raw_jetstream.writes_per_s,
                self.raw_jetstream.publish_to_ack_ms.p50,
                self.raw_jetstream.publish_to_ack_ms.p99
            ),
            format!("Natter / raw = {:.3}", self.ratio),
        ]
    }
}

pub async fn run(options: &Options) -> anyhow::Result<CeilingReport> {
    let natter = dm::run(&options.dm).await?;
    eprintln!("{}", natter.row());
    let raw = raw_writes(options, natter.confirmed.max(1)).await?;
    Ok(CeilingReport {
        ratio: natter.delivered_per_s / raw.writes_per_s.max(1e-9),
        natter,
        raw_jetstream: raw,
    })
}

async fn raw_writes(options: &Options, writes: u64) -> anyhow::Result<RawReport> {
    let client = async_nats::ConnectOptions::with_user_and_password(
        options.nats_user.clone(),
        options.nats_password.clone(),
    )
    // The servers advertise cluster addresses this client must not try (see fabric).
    .ignore_discovered_servers()
    .connect(
        options
            .nats
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<async_nats::ServerAddr>, _>>()
            .context("--nats: comma-separated nats:// URLs")?,
    )
    .await
    .context("connect to NATS as the bench user")?;
    let js = jetstream::new(client);
    // Same shape as Natter's streams: R3, file storage, the cluster's sync policy.
    let _ = js.delete_stream("BENCH").await;
    js.create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("create stream BENCH")?;

    let payload = bytes::Bytes::from(vec![b'x'; options.payload]);
    let mut latency = histogram();
    let mut pending = FuturesUnordered::new();
    let started = Instant::now();
    let mut acked = 0u64;
    for i in 0..writes {
        if pending.len() >= options.in_flight {
            let at: Instant = pending.next().await.context("pending")??;
            latency.saturating_record(at.elapsed().as_micros() as u64);
            acked += 1;
        }
        let at = Instant::now();
        let ack = js
            .publish(format!("bench.u{}", i % 1000), payload.clone())
            .await?;
        pending.push(async move { ack.await.map(|_| at) });
    }
    while let Some(done) = pending.next().await {
        latency.saturating_record(done?.elapsed().as_micros() as u64);
        acked += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    js.delete_stream("BENCH").await.context("delete BENCH")?;
    Ok(RawReport {
        writes: acked,
        seconds,
        writes_per_s: acked as f64 / seconds,
        publish_to_ack_ms: Latency::of(&latency),
    })
}
