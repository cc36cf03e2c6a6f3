//! When to re-check every socket's inbox cursor.
//!
//! RePublish is done by the `INBOX` leader only, asynchronously: items in flight when a
//! leader dies are stored but never republished, and a lost *last* item leaves no gap for
//! the sequence chain to see (NATS-NOTES.md). The same happens to this gateway when its
//! NATS connection drops, or when NATS drops items for a slow subscriber. After each of
//! those, every socket compares its inbox's newest sequence with what it forwarded.

use std::time::Duration;

use async_nats::Event;
use futures_util::{FutureExt, StreamExt};
use natter_fabric::subjects;
use tokio::sync::{broadcast, watch};

/// Give the new leader time to finish republishing what it can before checking.
const SETTLE: Duration = Duration::from_secs(1);

pub(crate) async fn spawn(
    nats: &async_nats::Client,
    mut events: broadcast::Receiver<Event>,
    resync: broadcast::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), async_nats::SubscribeError> {
    let mut advisories = nats.subscribe(subjects::INBOX_LEADER_ELECTED).await?;
    tokio::spawn(async move {
        loop {
            let reason = tokio::select! {
                _ = shutdown.changed() => return,
                Some(_) = advisories.next() => "inbox leader elected",
                event = events.recv() => match event {
                    Ok(Event::Connected) => "NATS reconnected",
                    Ok(Event::SlowConsumer(_)) | Err(broadcast::error::RecvError::Lagged(_)) => "slow consumer",
                    Ok(Event::Disconnected) => {
                        metrics::counter!("natter_gateway_nats_disconnects_total").increment(1);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            metrics::counter!("natter_gateway_resync_triggers_total", "reason" => reason)
                .increment(1);
            tracing::info!(reason, "re-checking every socket's inbox");
            // Triggers that arrive while settling are covered by this one resync, which
            // runs after all of them: coalesced, never dropped.
            tokio::time::sleep(SETTLE).await;
            while events.try_recv().is_ok() {}
            while let Some(Some(_)) = advisories.next().now_or_never() {}
            let _ = resync.send(());
        }
    });
    Ok(())
}
