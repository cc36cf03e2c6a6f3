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

/// The two reads of one user's inbox the cursor makes. The gateway's is the `INBOX`
/// stream ([`Inbox`]); the tests below use an inbox in memory, so the cursor's rules are
/// checked in milliseconds over many interleavings (the e2e tests check the real one).
pub(crate) trait InboxReads {
    /// Items of `user` with `after < seq <= up_to`, oldest first, at most one `page`.
    fn read_after(
        &self,
        user: &str,
        after: u64,
        up_to: u64,
        page: Page,
    ) -> impl Future<Output = Result<Vec<StoredItem>, InboxError>> + Send;
    /// The sequence of `user`'s newest item as the stream leader has it (0: none).
    fn last_seq_from_leader(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<u64, InboxError>> + Send;
}

impl InboxReads for Inbox {
    async fn read_after(
        &self,
        user: &str,
        after: u64,
        up_to: u64,
        page: Page,
    ) -> Result<Vec<StoredItem>, InboxError> {
        Inbox::read_after(self, user, after, up_to, page).await
    }

    async fn last_seq_from_leader(&self, user: &str) -> Result<u64, InboxError> {
        Inbox::last_seq_from_leader(self, user).await
    }
}

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
        inbox: &impl InboxReads,
    ) -> Result<u64, InboxError> {
        if self.last == 0 || newest >= self.last {
            return Ok(newest);
        }
        let newest = inbox.last_seq_from_leader(user).await?;
        if newest < self.last {
            // `after=latest` (u64::MAX) asks for exactly this: no warning.
            if self.last != u64::MAX {
                tracing::warn!(
                    after = self.last,
                    newest,
                    "resume point beyond the inbox; starting from its newest item"
                );
            }
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
        inbox: &impl InboxReads,
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
        inbox: &impl InboxReads,
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

    /// Runs a test's future (the in-memory inbox needs no I/O or timers).
    fn block_on<F: Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread().build();
        runtime.expect("a runtime").block_on(future)
    }

    /// One user's inbox in memory: sequence → item.
    #[derive(Default)]
    struct MemoryInbox {
        items: std::sync::Mutex<std::collections::BTreeMap<u64, Bytes>>,
    }

    impl InboxReads for MemoryInbox {
        async fn read_after(
            &self,
            _: &str,
            after: u64,
            up_to: u64,
            page: Page,
        ) -> Result<Vec<StoredItem>, InboxError> {
            let items = self.items.lock().unwrap();
            Ok(items
                .range(after.saturating_add(1)..=up_to)
                .take(page.items)
                .map(|(seq, payload)| StoredItem {
                    seq: *seq,
                    payload: payload.clone(),
                })
                .collect())
        }

        async fn last_seq_from_leader(&self, _: &str) -> Result<u64, InboxError> {
            Ok(self
                .items
                .lock()
                .unwrap()
                .keys()
                .last()
                .copied()
                .unwrap_or(0))
        }
    }

    /// What happens next to one socket and its user's inbox.
    #[derive(Debug, Clone)]
    enum Event {
        /// An item is stored `gap` sequences after the last (other users' items in
        /// between); its republish is lost or queued (republishes keep their order).
        Store { gap: u64, republish_lost: bool },
        /// Up to `n` queued republishes arrive.
        Arrive(usize),
        /// The reconciler reads the inbox's newest sequence.
        Reconcile,
        /// The socket reads one page of what it owes.
        Repair,
        /// The inbox's `n` oldest items expire.
        Expire(usize),
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..3, proptest::bool::weighted(0.2))
                .prop_map(|(gap, republish_lost)| Event::Store { gap, republish_lost }),
            3 => (1usize..4).prop_map(Event::Arrive),
            1 => Just(Event::Reconcile),
            2 => Just(Event::Repair),
            1 => (1usize..3).prop_map(Event::Expire),
        ]
    }

    /// Runs a socket that resumes after `stored_before` items, through `events`, then
    /// lets every republish arrive and reconciles and repairs until nothing is owed.
    /// Returns what the socket was handed, what the inbox holds at the end, and what it
    /// ever held after the resume point.
    async fn run(stored_before: u64, events: Vec<Event>) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
        let inbox = MemoryInbox::default();
        let mut last_stored = 0;
        for _ in 0..stored_before {
            last_stored += 1;
            inbox
                .items
                .lock()
                .unwrap()
                .insert(last_stored, Bytes::new());
        }
        let after = stored_before / 2;
        let mut cursor = Cursor::new(after, 1_000_000);
        let mut handed = Vec::new();
        // Catch-up, as a socket does on connect.
        let newest = inbox.last_seq_from_leader("u").await.unwrap();
        let newest = cursor.clamp_to_inbox("u", newest, &inbox).await.unwrap();
        loop {
            let page = cursor.catch_up_page("u", &inbox, newest).await.unwrap();
            if page.is_empty() {
                break;
            }
            handed.extend(page.iter().map(|item| item.seq));
        }
        let mut ever: Vec<u64> = (after + 1..=stored_before).collect();
        let mut queue = std::collections::VecDeque::new();
        let mut previous = stored_before;
        for event in events {
            match event {
                Event::Store {
                    gap,
                    republish_lost,
                } => {
                    last_stored += 1 + gap;
                    inbox
                        .items
                        .lock()
                        .unwrap()
                        .insert(last_stored, Bytes::new());
                    ever.push(last_stored);
                    if !republish_lost {
                        queue.push_back((last_stored, previous));
                    }
                    previous = last_stored;
                }
                Event::Arrive(n) => {
                    for (seq, previous) in queue.drain(..n.min(queue.len())) {
                        let live = (seq, previous, Bytes::new());
                        handed.extend(cursor.on_live(live).map(|item| item.seq));
                    }
                }
                Event::Reconcile => {
                    let newest = inbox.last_seq_from_leader("u").await.unwrap();
                    cursor.note_newest(newest);
                }
                Event::Repair if cursor.owes() => {
                    let page = cursor.repair_page("u", &inbox).await.unwrap();
                    handed.extend(page.iter().map(|item| item.seq));
                }
                Event::Repair => {}
                Event::Expire(n) => {
                    let mut items = inbox.items.lock().unwrap();
                    for _ in 0..n {
                        items.pop_first();
                    }
                }
            }
        }
        for (seq, previous) in queue.drain(..) {
            handed.extend(
                cursor
                    .on_live((seq, previous, Bytes::new()))
                    .map(|item| item.seq),
            );
        }
        cursor.note_newest(inbox.last_seq_from_leader("u").await.unwrap());
        while cursor.owes() {
            let page = cursor.repair_page("u", &inbox).await.unwrap();
            handed.extend(page.iter().map(|item| item.seq));
        }
        let held = inbox.items.lock().unwrap().keys().copied().collect();
        (handed, held, ever)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]
        /// Whatever the interleaving of stores, lost and late republishes, reconciles,
        /// repairs and expiry: the socket gets items in inbox order, each once, only
        /// items that were stored after its resume point, and every one of them the inbox
        /// still holds.
        #[test]
        fn a_socket_gets_every_item_once_in_order_whatever_the_interleaving(
            stored_before in 0u64..6,
            events in proptest::collection::vec(event(), 0..60),
        ) {
            let (handed, held, ever) = block_on(run(stored_before, events));
            proptest::prop_assert!(
                handed.windows(2).all(|w| w[0] < w[1]),
                "out of order or repeated: {:?}", handed
            );
            proptest::prop_assert!(
                handed.iter().all(|seq| ever.contains(seq)),
                "handed {:?}, stored {:?}", handed, ever
            );
            let missing: Vec<u64> = ever
                .iter()
                .filter(|seq| held.contains(seq) && !handed.contains(seq))
                .copied()
                .collect();
            proptest::prop_assert!(missing.is_empty(), "never handed: {:?} of {:?}", missing, ever);
        }
    }

    #[test]
    fn a_resume_point_beyond_the_inbox_moves_back_to_its_newest_item() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let inbox = MemoryInbox::default();
            for seq in [3, 5] {
                inbox.items.lock().unwrap().insert(seq, Bytes::new());
            }
            let mut cursor = Cursor::new(40, 1_000);
            // A replica that says 2 is not believed; the leader's 5 is.
            assert_eq!(cursor.clamp_to_inbox("u", 2, &inbox).await.unwrap(), 5);
            assert_eq!(cursor.last(), 5);
            inbox.items.lock().unwrap().insert(6, Bytes::new());
            assert!(cursor.on_live(live(6, 5)).is_some(), "new items flow again");
        });
    }

    #[test]
    fn a_repair_longer_than_allowed_asks_the_socket_to_resume() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let inbox = MemoryInbox::default();
            for seq in 1..=600 {
                inbox.items.lock().unwrap().insert(seq, Bytes::new());
            }
            let mut cursor = Cursor::new(0, 300);
            cursor.note_newest(600);
            assert_eq!(cursor.repair_page("u", &inbox).await.unwrap().len(), 256);
            let refused = cursor.repair_page("u", &inbox).await;
            assert!(matches!(refused, Err(DeliveryError::TooFarBehind(300))));
        });
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
