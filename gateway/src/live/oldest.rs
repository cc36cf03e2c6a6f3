//! The oldest item the inbox stream still holds, for a socket's `hello` to say whether a
//! device resumed without a gap.
//!
//! Inbox items expire after 30 days, oldest first, so everything below the stream's
//! first sequence is gone. A device whose `after` is below it may have missed items (of
//! its own, or only of other users': sequences are shared, so it cannot be told which).
//! One stream-info request per [`REFRESH`] serves every socket; between two, an item that
//! just expired can go unnoticed for that long.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use natter_fabric::Inbox;
use tokio_util::sync::CancellationToken;

/// How often the inbox's oldest sequence is read.
pub(crate) const REFRESH: Duration = Duration::from_secs(10);

/// The inbox stream's oldest sequence as last read (0 until the first read succeeds).
#[derive(Clone, Default)]
pub(crate) struct Oldest(Arc<AtomicU64>);

impl Oldest {
    /// Reads it now (failures are retried at the next refresh), then every [`REFRESH`]
    /// until `stop`.
    pub(crate) async fn start(inbox: Inbox, stop: CancellationToken) -> Self {
        let oldest = Self::default();
        oldest.refresh(&inbox).await;
        let task = oldest.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REFRESH);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => task.refresh(&inbox).await,
                    () = stop.cancelled() => return,
                }
            }
        });
        oldest
    }

    async fn refresh(&self, inbox: &Inbox) {
        match inbox.oldest_seq().await {
            Ok(seq) => self.0.store(seq, Ordering::Relaxed),
            Err(err) => tracing::debug!(error = %err, "inbox oldest sequence not read"),
        }
    }

    /// The inbox's oldest sequence as last read.
    pub(crate) fn seq(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether a device resuming after `after` has every item since, when the inbox's oldest
/// item is `oldest`: it starts afresh (`after` 0), or nothing after `after` has expired.
pub(crate) fn resumed(after: u64, oldest: u64) -> bool {
    after == 0 || after.saturating_add(1) >= oldest
}

#[cfg(test)]
mod tests {
    use super::resumed;

    #[test]
    fn a_device_resumed_unless_something_after_its_point_expired() {
        assert!(resumed(0, 100), "a new device starts afresh");
        assert!(resumed(99, 100), "item 100 is still there");
        assert!(resumed(150, 100));
        assert!(!resumed(98, 100), "item 99 expired");
        assert!(resumed(5, 0), "not read yet, or empty");
    }
}
