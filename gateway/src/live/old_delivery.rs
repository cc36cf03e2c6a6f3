//! One socket's inbox cursor: which inbox items this device has been sent.
//!
//! Items reach a socket three ways, and the cursor makes them one ordered sequence with
//! no gap and no repeat:
//! - **catch-up**: on connect, everything after the client's `after`, by direct get;
//! - **live**: `live.<uid>` republishes, each naming the previous sequence of the same
//!   inbox (`Nats-Last-Sequence`); a previous sequence above the cursor is a gap, filled
//!   from the inbox before the live item is forwarded;
//! - **reconcile**: the inbox's newest sequence, checked on a timer and on resync; items
//!   above the cursor were republished but lost, and are fetched.
//!
//! Anything at or below the cursor was already sent and is dropped.

use async_nats::Message;
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
    user: String,
    /// The newest inbox sequence handed to the socket.
    last: u64,
    max_repair: usize,
}

impl Cursor {
    pub fn new(user: &str, after: u64, max_repair: u64) -> Self {
        Self {
            user: user.to_owned(),
            last: after,
            max_repair: max_repair as usize,
        }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// A cursor beyond the inbox's newest item (a stale device after the inbox was
    /// recreated, or a bogus `after`) would silently drop every new item: it is moved back
    /// to the newest item. Replicas may lag, so only the leader's answer moves it.
    ///
    /// Returns the inbox's newest sequence: catch-up reads up to it and no further, since
    /// anything stored later reaches the (already subscribed) socket live, and a replica
    /// that had not seen an item yet is covered by the first reconcile. Knowing where to
    /// stop saves the final "nothing after this" read, which halves the reads of a device
    /// that reconnects with a short backlog (the reconnect storm).
    pub async fn clamp_to_inbox(&mut self, inbox: &Inbox) -> Result<u64, InboxError> {
        let newest = inbox.last_seq(&self.user).await?;
        if self.last == 0 || newest >= self.last {
            return Ok(newest);
        }
        let newest = inbox.last_seq_from_leader(&self.user).await?;
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
        inbox: &Inbox,
        newest: u64,
    ) -> Result<Vec<StoredItem>, InboxError> {
        if self.last >= newest {
            return Ok(Vec::new());
        }
        let items = inbox
            .read_after(&self.user, self.last, newest, CATCH_UP_PAGE)
            .await?;
        self.advance(&items);
        Ok(items)
    }

    /// What to forward for one live item: nothing (already sent), or any missing items
    /// followed by this one.
    pub async fn on_live(
        &mut self,
        inbox: &Inbox,
        message: Message,
    ) -> Result<Vec<StoredItem>, DeliveryError> {
        let Some((seq, previous)) = sequences(&message) else {
            tracing::warn!(subject = %message.subject, "live item without sequence headers");
            return Ok(Vec::new());
        };
        if seq <= self.last {
            return Ok(Vec::new());
        }
        let mut items = if previous > self.last {
            self.fetch_up_to(inbox, previous).await?
        } else {
            Vec::new()
        };
        items.push(StoredItem {
            seq,
            payload: message.payload,
        });
        self.advance(&items);
        Ok(items)
    }

    /// Items stored but never seen live (republish lost), if any.
    pub async fn reconcile(&mut self, inbox: &Inbox) -> Result<Vec<StoredItem>, DeliveryError> {
        let newest = inbox.last_seq(&self.user).await?;
        if newest <= self.last {
            return Ok(Vec::new());
        }
        let items = self.fetch_up_to(inbox, newest).await?;
        if !items.is_empty() {
            tracing::info!(user = %self.user, count = items.len(), "recovered items missing from live delivery");
        }
        self.advance(&items);
        Ok(items)
    }

    async fn fetch_up_to(
        &self,
        inbox: &Inbox,
        up_to: u64,
    ) -> Result<Vec<StoredItem>, DeliveryError> {
        let items = inbox
            .read_after(&self.user, self.last, up_to, self.max_repair + 1)
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

/// `Nats-Sequence` and `Nats-Last-Sequence` of a republished item.
fn sequences(message: &Message) -> Option<(u64, u64)> {
    let headers = message.headers.as_ref()?;
    let number = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
    Some((
        number("Nats-Sequence")?,
        number("Nats-Last-Sequence").unwrap_or(0),
    ))
}
