//! JetStream figures for dashboards and alerts: stream sizes and consumer backlogs.
//!
//! nats-server's own monitoring endpoint speaks JSON, not Prometheus text, so the workers
//! read what matters through the JetStream API every [`EVERY`] and export it as gauges.
//! Every worker process exports the same values: aggregate with `max`, not `sum`.

use std::time::Duration;

use async_nats::jetstream;
use natter_fabric::{streams, subjects};

use tokio_util::sync::CancellationToken;

/// How often the figures are refreshed.
pub const EVERY: Duration = Duration::from_secs(5);

/// Runs until `stop`; failures (a leader election) are logged and retried next round.
pub async fn run(js: jetstream::Context, stop: CancellationToken) {
    let work = async {
        let mut ticks = tokio::time::interval(EVERY);
        loop {
            ticks.tick().await;
            if let Err(err) = refresh(&js).await {
                tracing::debug!(error = %err, "JetStream figures not refreshed");
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = work => {}
    }
}

async fn refresh(js: &jetstream::Context) -> Result<(), async_nats::Error> {
    for name in [streams::MSGS, streams::INBOX, streams::RCPT] {
        let mut stream = js.get_stream(name).await?;
        let state = &stream.info().await?.state;
        metrics::gauge!("natter_jetstream_stream_messages", "stream" => name)
            .set(state.messages as f64);
        metrics::gauge!("natter_jetstream_stream_bytes", "stream" => name).set(state.bytes as f64);
    }
    // Media's bound (`max_bytes`, the gateways' `media.max_total_bytes`) next to its size,
    // for the "media store nearly full" alert; -1 when unbounded.
    if let Ok(mut media) = js.get_stream(natter_fabric::media::STREAM).await {
        let info = media.info().await?;
        metrics::gauge!("natter_jetstream_stream_messages", "stream" => natter_fabric::media::STREAM)
            .set(info.state.messages as f64);
        metrics::gauge!("natter_jetstream_stream_bytes", "stream" => natter_fabric::media::STREAM)
            .set(info.state.bytes as f64);
        metrics::gauge!("natter_jetstream_stream_max_bytes", "stream" => natter_fabric::media::STREAM)
            .set(info.config.max_bytes as f64);
    }
    let msgs = js.get_stream_no_info(streams::MSGS).await?;
    let (mut pending, mut unacked) = (0u64, 0u64);
    for p in 0..subjects::PARTITIONS {
        let mut consumer: jetstream::consumer::PullConsumer =
            msgs.get_consumer(&format!("fanout-{p}")).await?;
        let info = consumer.info().await?;
        pending += info.num_pending;
        unacked += info.num_ack_pending as u64;
    }
    metrics::gauge!("natter_jetstream_consumer_pending", "consumer" => "fanout")
        .set(pending as f64);
    metrics::gauge!("natter_jetstream_consumer_ack_pending", "consumer" => "fanout")
        .set(unacked as f64);
    let rcpt = js.get_stream_no_info(streams::RCPT).await?;
    let mut consumer: jetstream::consumer::PullConsumer = rcpt.get_consumer("receipts").await?;
    let info = consumer.info().await?;
    metrics::gauge!("natter_jetstream_consumer_pending", "consumer" => "receipts")
        .set(info.num_pending as f64);
    metrics::gauge!("natter_jetstream_consumer_ack_pending", "consumer" => "receipts")
        .set(info.num_ack_pending as f64);
    Ok(())
}
