//! What every scenario reports: latency summaries from HDR histograms, and the two output
//! forms, JSON on stdout (for files and plots) and a short table on stderr (for people).

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cpu::CpuReport;

/// A histogram of microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// A histogram that many tasks record into.
#[derive(Debug, Default)]
pub struct Recorder(tokio::sync::Mutex<Option<Histogram<u64>>>);

impl Recorder {
    pub async fn record(&self, micros: u64) {
        let mut slot = self.0.lock().await;
        slot.get_or_insert_with(histogram)
            .saturating_record(micros.max(1));
    }

    /// The percentiles of everything recorded so far.
    pub async fn latency(&self) -> Latency {
        match &*self.0.lock().await {
            Some(h) => Latency::of(h),
            None => Latency::of(&histogram()),
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: ms(1.0),
        }
    }
}

/// One steady one-on-one run at one offered rate, by Natter or a peer system.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DmReport {
    /// `natter`, or the peer's name (e.g. `ejabberd-nomam`).
    pub system: String,
    pub pairs: usize,
    pub offered_per_s: f64,
    pub seconds: f64,
    pub sends: u64,
    /// Sends the system confirmed (Natter: `sent`, i.e. durable).
    pub confirmed: u64,
    pub delivered: u64,
    /// Confirmed sends never delivered within the drain limit.
    pub lost: u64,
    /// Deliveries of a message already delivered to that socket.
    pub doubled: u64,
    pub errors: u64,
    pub delivered_per_s: f64,
    /// Time after the sending window until the last delivery.
    pub drain_s: f64,
    /// Send → confirmation (Natter: `sent`, i.e. stored in JetStream R3).
    pub send_to_confirmed_ms: Latency,
    pub send_to_deliver_ms: Latency,
    /// CPU of the watched processes over the run, per delivered message (`dm`; absent in
    /// reports of older runs and of the XMPP peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuReport>,
}

impl DmReport {
    pub fn header() -> &'static str {
        "system            offered/s  delivered/s  confirm p50/p99 ms   deliver p50/p99 ms   lost  doubled"
    }

    pub fn row(&self) -> String {
        format!(
            "{:<16} {:>10.0} {:>12.0} {:>9.2} / {:<8.2} {:>9.2} / {:<8.2} {:>5} {:>8}",
            self.system,
            self.offered_per_s,
            self.delivered_per_s,
            self.send_to_confirmed_ms.p50,
            self.send_to_confirmed_ms.p99,
            self.send_to_deliver_ms.p50,
            self.send_to_deliver_ms.p99,
            self.lost,
            self.doubled
        )
    }
}

/// What a one-on-one run counts while it runs: Natter's `dm` and the XMPP peer's alike.
#[derive(Debug, Default)]
pub struct DmStats {
    pub sends: AtomicU64,
    /// Sends the system confirmed (see [`DmReport::confirmed`]).
    pub confirmed: AtomicU64,
    pub deliveries: AtomicU64,
    pub doubled: AtomicU64,
    pub errors: AtomicU64,
    /// Senders past the end of the sending window.
    pub senders_done: AtomicU64,
    /// Microseconds since the run's origin at which the last message was delivered.
    pub last_delivery_us: AtomicU64,
    pub confirm_latency: Recorder,
    pub deliver_latency: Recorder,
}

/// How a run was shaped: what its report is measured against.
#[derive(Debug, Clone)]
pub struct RunShape {
    pub system: String,
    pub pairs: usize,
    pub offered_per_s: f64,
    pub seconds: f64,
    /// Microseconds since the origin when sending started and when it was to end.
    pub started_us: u64,
    pub deadline_us: u64,
}

impl DmStats {
    pub async fn report(&self, shape: RunShape) -> DmReport {
        let last_us = self.last_delivery_us.load(Ordering::Relaxed);
        let busy_s = last_us.saturating_sub(shape.started_us) as f64 / 1e6;
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        let deliveries = self.deliveries.load(Ordering::Relaxed);
        DmReport {
            system: shape.system,
            pairs: shape.pairs,
            offered_per_s: shape.offered_per_s,
            seconds: shape.seconds,
            sends: self.sends.load(Ordering::Relaxed),
            confirmed,
            delivered: deliveries,
            lost: confirmed.saturating_sub(deliveries),
            doubled: self.doubled.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            delivered_per_s: deliveries as f64 / busy_s.max(1e-9),
            drain_s: last_us.saturating_sub(shape.deadline_us) as f64 / 1e6,
            send_to_confirmed_ms: self.confirm_latency.latency().await,
            send_to_deliver_ms: self.deliver_latency.latency().await,
            cpu: None,
        }
    }
}

/// Prints `value` as pretty JSON on stdout and `table` lines on stderr.
pub fn emit(value: &impl Serialize, table: &[String]) -> anyhow::Result<()> {
    for line in table {
        eprintln!("{line}");
    }
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
