//! How long one HTTP exchange may hold its connection, and how many files one user may
//! be moving at once.
//!
//! A client that sends its request slowly is bounded by the header and body deadlines, but
//! one that reads its response slowly (or trickles an upload a byte at a time within the
//! pause deadline) would hold a connection slot for as long as it likes: enough of them
//! take every slot of `limits.max_connections`. So every exchange on a connection gets a
//! [`Deadline`]: `limits.request_timeout_ms` from its request head, extended by the media
//! routes to the time their file may take at `limits.min_transfer_bytes_per_sec`. When it
//! passes, the connection is closed (`serve.rs`), whatever the exchange was waiting on.
//! A WebSocket leaves the connection at its upgrade and is not subject to it.
//!
//! [`Transfers`] caps the uploads and downloads one user has in progress on a gateway, so
//! one account cannot hold the slots either, however fast it moves its bytes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::{sync::watch, time::Instant};

/// When the exchange in progress on one connection must be over: set at each request
/// head, moved later by a handler that moves a file. Cheap to clone; one per connection.
#[derive(Clone)]
pub(crate) struct Deadline(Arc<watch::Sender<Instant>>);

impl Deadline {
    pub(crate) fn new(at: Instant) -> Self {
        Self(Arc::new(watch::Sender::new(at)))
    }

    pub(crate) fn set(&self, at: Instant) {
        self.0.send_replace(at);
    }

    /// Resolves once the deadline has passed (following every move of it).
    pub(crate) async fn passed(&self) {
        let mut moved = self.0.subscribe();
        loop {
            let at = *moved.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                changed = moved.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

/// Files each user is moving on this gateway.
#[derive(Default)]
pub(crate) struct Transfers {
    open: Mutex<HashMap<String, usize>>,
}

/// One transfer's place in [`Transfers`], given back when dropped (with the upload's
/// handler, or with a download's response body).
pub(crate) struct Transfer {
    table: Arc<Transfers>,
    user: String,
}

impl Transfers {
    /// A place for one more transfer of `user`, unless they already have `cap`.
    pub(crate) fn start(table: &Arc<Self>, user: &str, cap: usize) -> Option<Transfer> {
        let mut open = table.open.lock().expect("not poisoned");
        let count = open.entry(user.to_owned()).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Transfer {
            table: table.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_follows_its_moves() {
        let deadline = Deadline::new(Instant::now() + Duration::from_secs(1));
        let waiter = tokio::spawn({
            let deadline = deadline.clone();
            async move { deadline.passed().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        deadline.set(Instant::now() + Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "moved later, so not passed yet");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(waiter.is_finished());
    }

    #[test]
    fn a_user_holds_at_most_cap_transfers_and_gets_them_back() {
        let table = Arc::new(Transfers::default());
        let first = Transfers::start(&table, "ann", 2).unwrap();
        let _second = Transfers::start(&table, "ann", 2).unwrap();
        assert!(Transfers::start(&table, "ann", 2).is_none());
        assert!(Transfers::start(&table, "bob", 2).is_some(), "per user");
        drop(first);
        assert!(Transfers::start(&table, "ann", 2).is_some());
    }
}
