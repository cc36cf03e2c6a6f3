//! One socket's inbox cursor: which inbox items this device has been sent.
//!
//! Items reach a socket three ways, and the cursor makes them one ordered sequence with
//! no gap and no repeat:
//! - **catch-up**: on connect, everything after the client's `after`, by direct get;
//! - **live**: `live.<uid>` republishes, each naming the previous sequence of the same
//!   inbox (`Nats-Last-Sequence`); a previous sequence above the cursor is a gap, filled
//!   from the inbox before the live item is forwarded;
//! - **reconcile**: the inbox's newest sequence, read by the gateway's reconciler (or by
//!   the socket itself after its mailbox overflowed); items above the cursor were
//!   republished but lost, and are fetched.
//!
//! Anything at or below the cursor was already sent and is dropped.

use bytes::Bytes;
use natter_fabric::{Inbox, InboxError, StoredItem};

/// Items fetched per direct-get page during catch-up.
pub(crate) const CATCH_UP_PAGE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error("more than {0} items behind: resume with `after`")]
    TooFarBehind(usize),
}

pub(crate) struct Cursor {
    /// The newest inbox sequence handed to the socket.
    last: u64,
    max_repair: usize,
}

impl Cursor {
    pub fn new(after: u64, max_repair: u64) -> Self {
        Self {
            last: after,
            max_repair: max_repair as usize,
        }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// Given the inbox's `newest` sequence (read by a replica): a cursor beyond it (a
    /// stale device after the inbox was recreated, or a bogus `after`) would silently
    /// drop every new item, so it is moved back to the newest item. Replicas may lag, so
    /// only the leader's answer moves it.
    ///
    /// Returns where catch-up stops: anything stored later reaches the (already
    /// subscribed) socket live, and a replica that had not seen an item yet is covered by
    /// the reconcile a second after the socket opened. Knowing where to stop saves the
    /// final "nothing after this" read, which halves the reads of a device that
    /// reconnects with a short backlog (the reconnect storm).
    pub async fn clamp_to_inbox(
        &mut self,
        user: &str,
        newest: u64,
        inbox: &Inbox,
    ) -> Result<u64, InboxError> {
        if self.last == 0 || newest >= self.last {
            return Ok(newest);
        }
        let newest = inbox.last_seq_from_leader(user).await?;
        if newest < self.last {
            tracing::warn!(
                after = self.last,
                newest,
                "resume point beyond the inbox; starting from its newest item"
            );
            self.last = newest;
        }
        Ok(newest)
    }

    /// The next page of catch-up up to `newest` (from [`Self::clamp_to_inbox`]); empty
    /// when the device has everything up to it.
    pub async fn catch_up_page(
        &mut self,
        user: &str,
        inbox: &Inbox,
        newest: u64,
    ) -> Result<Vec<StoredItem>, InboxError> {
        if self.last >= newest {
            return Ok(Vec::new());
        }
        let items = inbox
            .read_after(user, self.last, newest, CATCH_UP_PAGE)
            .await?;
        self.advance(&items);
        Ok(items)
    }

    /// What to forward for one live item: nothing (already sent), or any missing items
    /// followed by this one.
    pub async fn on_live(
        &mut self,
        user: &str,
        inbox: &Inbox,
        (seq, previous, payload): (u64, u64, Bytes),
    ) -> Result<Vec<StoredItem>, DeliveryError> {
        if seq <= self.last {
            return Ok(Vec::new());
        }
        let mut items = if previous > self.last {
            self.fetch_up_to(user, inbox, previous).await?
        } else {
            Vec::new()
        };
        items.push(StoredItem { seq, payload });
        self.advance(&items);
        Ok(items)
    }

    /// Items up to `newest` stored but never seen live (republish lost), if any.
    pub async fn reconcile_to(
        &mut self,
        user: &str,
        inbox: &Inbox,
        newest: u64,
    ) -> Result<Vec<StoredItem>, DeliveryError> {
        if newest <= self.last {
            return Ok(Vec::new());
        }
        let items = self.fetch_up_to(user, inbox, newest).await?;
        if !items.is_empty() {
            tracing::info!(
                count = items.len(),
                "recovered items missing from live delivery"
            );
        }
        self.advance(&items);
        Ok(items)
    }

    async fn fetch_up_to(
        &self,
        user: &str,
        inbox: &Inbox,
        up_to: u64,
    ) -> Result<Vec<StoredItem>, DeliveryError> {
        let items = inbox
            .read_after(user, self.last, up_to, self.max_repair + 1)
            .await?;
        if items.len() > self.max_repair {
            return Err(DeliveryError::TooFarBehind(self.max_repair));
        }
        Ok(items)
    }

    fn advance(&mut self, items: &[StoredItem]) {
        if let Some(item) = items.last() {
            self.last = self.last.max(item.seq);
        }
    }
}
