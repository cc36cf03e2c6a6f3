//! Prometheus metrics for every Natter process: one exporter on a separate port, and the
//! histogram buckets of every `_seconds` metric.
//!
//! Metric names follow Prometheus conventions (`natter_<process>_<what>_total`,
//! `_seconds` histograms); labels have a handful of values each, never a user id. The full
//! list is in `docs/METRICS.md`.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Latency buckets in seconds: 0.5 ms to 10 s, dense where chat latency lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Serves `/metrics` on `listen` from this process's global recorder. A process (or a test
/// binary running several components) installs it once; later calls return `Ok(false)`.
pub fn install(listen: SocketAddr) -> Result<bool, BuildError> {
    let result = PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install();
    match result {
        Ok(()) => {
            tracing::info!(%listen, "metrics on /metrics");
            Ok(true)
        }
        Err(BuildError::FailedToSetGlobalRecorder(_)) => Ok(false),
        Err(err) => Err(err),
    }
}
