//! What every scenario reports: latency summaries from HDR histograms, and the two output
//! forms, JSON on stdout (for files and plots) and a short table on stderr (for people).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A histogram of microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
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

/// Prints `value` as pretty JSON on stdout and `table` lines on stderr.
pub fn emit(value: &impl Serialize, table: &[String]) -> anyhow::Result<()> {
    for line in table {
        eprintln!("{line}");
    }
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
