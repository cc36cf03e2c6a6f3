//! `raw fan`: the floor under a group fanout. Each round writes one republished item into
//! `BENCH_INBOX` per member but the sender (1,023 for a 1,024-member group), each with its
//! own `Nats-Msg-Id`, up to `in_flight` unacknowledged, and is timed from its first
//! publish until the last item arrives on a subscriber of `bench.live.*`. A Natter group
//! message slower than this spends its time elsewhere than in JetStream.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage};
use futures_util::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{
    INBOX_STREAM, LIVE_ALL, NatsOptions, await_interest, inbox_stream, inbox_subject, recreate,
    run_id, stamp, stamped,
};
use crate::{
    cpu::{CpuReport, Watch},
    report::{Latency, histogram},
};

/// How long a round may take before its missing items count as missing.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct FanSpec {
    pub members: usize,
    pub rounds: usize,
    pub in_flight: usize,
    pub payload: usize,
}

#[derive(Debug, Serialize)]
pub struct FanReport {
    pub members: usize,
    pub items_per_round: usize,
    pub rounds: usize,
    pub in_flight: usize,
    /// Rounds in which every item arrived within 30 s.
    pub complete_rounds: usize,
    /// Items acked but not republished to the subscriber within their round.
    pub missing: u64,
    /// Arrivals outside their round (late or twice).
    pub stray: u64,
    pub errors: u64,
    /// Per round: first publish → every item acked.
    pub publish_to_all_acked_ms: Latency,
    /// Per round: first publish → the last item arrived.
    pub publish_to_last_arrival_ms: Latency,
    /// Per item: first publish of its round → its arrival.
    pub publish_to_each_arrival_ms: Latency,
    /// Over all rounds; per item that arrived.
    pub cpu: CpuReport,
}

impl FanReport {
    pub fn table(&self) -> Vec<String> {
        let (a, l, e) = (
            self.publish_to_all_acked_ms,
            self.publish_to_last_arrival_ms,
            self.publish_to_each_arrival_ms,
        );
        vec![
            "items/round  rounds  complete  all acked p50/p99 ms  last arrival p50/p99 ms  each p50/p99 ms  missing".into(),
            format!(
                "{:>11} {:>7} {:>9} {:>9.1} / {:<9.1} {:>11.1} / {:<10.1} {:>6.1} / {:<7.1} {:>7}",
                self.items_per_round, self.rounds, self.complete_rounds, a.p50, a.p99, l.p50, l.p99, e.p50, e.p99, self.missing
            ),
        ]
    }
}

pub async fn run(
    options: &NatsOptions,
    spec: &FanSpec,
    watch: &Watch,
) -> anyhow::Result<FanReport> {
    let js = jetstream::new(options.connect().await?);
    recreate(&js, inbox_stream()).await?;
    let reader = options.connect().await?;
    let mut subscriber = reader.subscribe(LIVE_ALL).await?;
    reader.flush().await.context("subscribe to bench.live.*")?;
    await_interest(&js, &mut subscriber).await?;
    let origin = Instant::now();
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<(u64, u64)>();
    let listener = tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            let now = origin.elapsed().as_micros() as u64;
            if let Some((round, _)) = stamp(&message.payload)
                && arrivals_tx.send((round, now)).is_err()
            {
                break;
            }
        }
    });

    let run = run_id();
    let items = spec.members - 1;
    let members: Vec<String> = (0..items)
        .map(|j| inbox_subject(&format!("m{j}")))
        .collect();
    let (mut acked_h, mut last_h, mut each_h) = (histogram(), histogram(), histogram());
    let (mut complete, mut missing, mut stray, mut errors, mut arrived) =
        (0, 0u64, 0u64, 0u64, 0u64);
    let window = watch.start()?;
    for round in 0..spec.rounds {
        let t0 = origin.elapsed().as_micros() as u64;
        let payload = stamped(round as u64, t0, spec.payload);
        let publish = async {
            let mut pending = FuturesUnordered::new();
            let mut failed = 0u64;
            for (j, subject) in members.iter().enumerate() {
                if pending.len() >= spec.in_flight {
                    failed += u64::from(matches!(pending.next().await, Some(Err(_))));
                }
                let message = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(format!("{run}-{round}-{j}"));
                let ack = js
                    .send_publish(subject.clone(), message)
                    .await
                    .context("publish to BENCH_INBOX")?;
                pending.push(ack.into_future());
            }
            while let Some(done) = pending.next().await {
                failed += u64::from(done.is_err());
            }
            anyhow::Ok((failed, origin.elapsed().as_micros() as u64))
        };
        let collect = async {
            let (mut got, mut last, mut strays) = (0usize, None, 0u64);
            let deadline = tokio::time::Instant::now() + ROUND_LIMIT;
            while got < items {
                let Ok(Some((r, when))) = tokio::time::timeout_at(deadline, arrivals.recv()).await
                else {
                    break;
                };
                if r != round as u64 {
                    strays += 1;
                    continue;
                }
                got += 1;
                each_h.saturating_record(when.saturating_sub(t0));
                last = Some(when);
            }
            (got, last, strays)
        };
        let (published, (got, last, strays)) = tokio::join!(publish, collect);
        let (failed, all_acked) = published?;
        acked_h.saturating_record(all_acked.saturating_sub(t0));
        errors += failed;
        stray += strays;
        arrived += got as u64;
        missing += (items as u64 - failed).saturating_sub(got as u64);
        if got == items {
            complete += 1;
            if let Some(last) = last {
                last_h.saturating_record(last.saturating_sub(t0));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = window.finish(arrived, "item");
    // Anything still arriving now came late or twice.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), arrivals.recv()).await {
        stray += 1;
    }
    listener.abort();
    js.delete_stream(INBOX_STREAM)
        .await
        .context("delete BENCH_INBOX")?;
    Ok(FanReport {
        members: spec.members,
        items_per_round: items,
        rounds: spec.rounds,
        in_flight: spec.in_flight,
        complete_rounds: complete,
        missing,
        stray,
        errors,
        publish_to_all_acked_ms: Latency::of(&acked_h),
        publish_to_last_arrival_ms: Latency::of(&last_h),
        publish_to_each_arrival_ms: Latency::of(&each_h),
        cpu,
    })
}
