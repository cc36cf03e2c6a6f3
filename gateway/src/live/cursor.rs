//! One socket's inbox cursor: which inbox items this device has been sent.
//!
//! Items reach a socket three ways, and the cursor makes them one ordered sequence with
//! no gap and no repeat:
//! - **catch-up**: on connect, everything after the client's `after`, by direct get;
//! - **live**: `live.<uid>` republishes, each naming the previous sequence of the same
//!   inbox (`Nats-Last-Sequence`); a live item right after the cursor is forwarded as it
//!   is, one after a gap makes the cursor *owe* everything up to it;
//! - **reconcile**: the inbox's newest sequence, read by the gateway's reconciler (or by
//!   the socket itself after its mailbox overflowed); items above the cursor were
//!   republished but lost, and are owed too.
//!
//! What is owed is read from the inbox a [`PAGE`] at a time (bounded in bytes as well as
//! items), each page written before the next is read: a socket however far behind costs
//! the gateway one page, never its whole backlog. Anything at or below the cursor was
//! already sent and is dropped.

use bytes::Bytes;
use natter_fabric::{Inbox, InboxError, StoredItem, inbox::Page};

/// One read of the inbox for a socket (catch-up or repair): at most 256 items or 256 KiB
/// (the mailbox's bound), whichever comes first.
pub(crate) const PAGE: Page = Page {
    items: 256,
    bytes: 256 * 1024,
};

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
    /// The newest sequence known to be in the inbox: above `last`, items are owed.
    owed: u64,
    /// Items read from the inbox since the cursor last caught up with `owed`.
    repaired: usize,
    max_repair: usize,
}
impl Cursor {
    pub fn new(after: u64, max_repair: u64) -> Self {
        Self {
            last: after,
            owed: after,
            repaired: 0,
            max_repair: usize::try_from(max_repair).unwrap_or(usize::MAX),
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
            self.owed = newest;
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
        let items = inbox.read_after(user, self.last, newest, PAGE).await?;
        self.advance(&items);
        Ok(items)
    }

    /// A live item: forwarded when it comes right after the cursor (and nothing is owed),
    /// otherwise dropped, and owed when it is new: it is read from the inbox in order.
    pub fn on_live(&mut self, (seq, previous, payload): (u64, u64, Bytes)) -> Option<StoredItem> {
        if seq <= self.last {
            return None;
        }
        if previous > self.last || self.owes() {
            self.owed = self.owed.max(seq);
            return None;
        }
        self.last = seq;
        self.owed = self.owed.max(seq);
        Some(StoredItem { seq, payload })
    }

    /// The inbox holds items up to `newest`: those above the cursor are owed.
    pub fn note_newest(&mut self, newest: u64) {
        self.owed = self.owed.max(newest);
    }

    /// Whether items are owed (read them with [`Self::repair_page`]).
    pub fn owes(&self) -> bool {
        self.owed > self.last
    }

    /// The next page of what is owed. Empty when the inbox has nothing more up to what
    /// was owed (items expired, say): the debt is dropped. More than `max_repair` items in
    /// one repair, and the socket is better off resuming with `after`.
    pub async fn repair_page(
        &mut self,
        user: &str,
        inbox: &Inbox,
    ) -> Result<Vec<StoredItem>, DeliveryError> {
        let items = inbox.read_after(user, self.last, self.owed, PAGE).await?;
        self.repaired += items.len();
        if self.repaired > self.max_repair {
            return Err(DeliveryError::TooFarBehind(self.max_repair));
        }
        if items.is_empty() {
            self.owed = self.last;
        }
        self.advance(&items);
        if !items.is_empty() {
            tracing::info!(
                count = items.len(),
                "recovered items missing from live delivery"
            );
        }
        Ok(items)
    }

    fn advance(&mut self, items: &[StoredItem]) {
        if let Some(item) = items.last() {
            self.last = self.last.max(item.seq);
            self.owed = self.owed.max(self.last);
        }
        if !self.owes() {
            self.repaired = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(seq: u64, previous: u64) -> (u64, u64, Bytes) {
        (seq, previous, Bytes::from_static(b"{}"))
    }

    #[test]
    fn live_items_after_a_gap_are_owed_until_repaired_in_order() {
        let mut cursor = Cursor::new(10, 1_000);
        assert!(
            cursor.on_live(live(11, 10)).is_some(),
            "right after the cursor"
        );
        assert!(cursor.on_live(live(11, 10)).is_none(), "never twice");
        assert!(!cursor.owes());
        assert!(cursor.on_live(live(15, 13)).is_none(), "after a gap");
        assert!(cursor.owes());
        // Nothing jumps the queue while items are owed, even what follows its previous.
        assert!(cursor.on_live(live(16, 15)).is_none());
        assert_eq!((cursor.last(), cursor.owed), (11, 16));
        cursor.advance(&[StoredItem {
            seq: 16,
            payload: Bytes::new(),
        }]);
        assert!(!cursor.owes());
        assert!(cursor.on_live(live(17, 16)).is_some());
    }

    #[test]
    fn a_newer_newest_is_owed_and_an_older_one_is_not() {
        let mut cursor = Cursor::new(10, 1_000);
        cursor.note_newest(9);
        assert!(!cursor.owes());
        cursor.note_newest(12);
        assert!(cursor.owes());
    }
}
