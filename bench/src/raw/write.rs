//! `raw write`: plain R3 async writes with a fixed number unacknowledged, the unit every
//! other figure is compared with. Used by `raw write` (for a fixed time: the rate of a
//! window of a few seconds swings less than that of a fixed count that may take 1.5 s)
//! and by `ceiling` (as many writes as Natter confirmed).

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use futures_util::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;

use super::{WRITE_STREAM, recreate, write_stream};
use crate::{
    cpu::{CpuReport, Watch},
    report::{Latency, histogram},
};

/// How much to write.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    Writes(u64),
    Seconds(u64),
}

#[derive(Debug, Clone)]
pub struct WriteSpec {
    pub amount: Amount,
    pub in_flight: usize,
    pub payload: usize,
}

#[derive(Debug, Serialize)]
pub struct WriteReport {
    /// Writes acknowledged.
    pub writes: u64,
    /// Messages the stream held at the end, as the server reports them (equal to `writes`
    /// unless the writer or the server lost some).
    pub stored: u64,
    /// The stream's replicas, as the server reports them.
    pub replicas: usize,
    /// From the first publish to the last ack.
    pub seconds: f64,
    pub writes_per_s: f64,
    pub in_flight: usize,
    pub payload: usize,
    pub publish_to_ack_ms: Latency,
    /// Over the same window; per write.
    pub cpu: CpuReport,
}

impl WriteReport {
    pub fn table(&self) -> Vec<String> {
        vec![format!(
            "raw JetStream R3: {} writes in {:.1} s, {:.0}/s ({} in flight; publish → ack p50 {:.2} ms, p99 {:.2} ms)",
            self.writes,
            self.seconds,
            self.writes_per_s,
            self.in_flight,
            self.publish_to_ack_ms.p50,
            self.publish_to_ack_ms.p99
        )]
    }
}

/// Writes to a fresh `BENCH` stream, then deletes it.
pub async fn run(
    client: &async_nats::Client,
    spec: &WriteSpec,
    watch: &Watch,
) -> anyhow::Result<WriteReport> {
    let js = jetstream::new(client.clone());
    recreate(&js, write_stream()).await?;
    let payload = bytes::Bytes::from(vec![b'x'; spec.payload]);
    let mut latency = histogram();
    let mut pending = FuturesUnordered::new();
    let window = watch.start()?;
    let started = Instant::now();
    let more = |i: u64| match spec.amount {
        Amount::Writes(n) => i < n,
        Amount::Seconds(s) => started.elapsed() < Duration::from_secs(s),
    };
    let mut acked = 0u64;
    let mut i = 0u64;
    while more(i) {
        if pending.len() >= spec.in_flight {
            let at: Instant = pending.next().await.context("pending")??;
            latency.saturating_record(at.elapsed().as_micros() as u64);
            acked += 1;
        }
        let at = Instant::now();
        let ack = js
            .publish(format!("bench.raw.u{}", i % 1000), payload.clone())
            .await
            .context("publish to BENCH")?;
        pending.push(async move { ack.await.map(|_| at) });
        i += 1;
    }
    while let Some(done) = pending.next().await {
        latency.saturating_record(done.context("ack from BENCH")?.elapsed().as_micros() as u64);
        acked += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = window.finish(acked, "write");
    let mut stream = js.get_stream(WRITE_STREAM).await.context("find BENCH")?;
    let info = stream.info().await.context("BENCH info")?;
    let (stored, replicas) = (info.state.messages, info.config.num_replicas);
    js.delete_stream(WRITE_STREAM)
        .await
        .context("delete BENCH")?;
    Ok(WriteReport {
        writes: acked,
        stored,
        replicas,
        seconds,
        writes_per_s: acked as f64 / seconds,
        in_flight: spec.in_flight,
        payload: spec.payload,
        publish_to_ack_ms: Latency::of(&latency),
        cpu,
    })
}
