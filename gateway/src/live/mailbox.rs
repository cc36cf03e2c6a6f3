//! A socket's mailbox: what the gateway's dispatcher hands to one socket, bounded in bytes.
//!
//! The dispatcher never waits for a socket: it pushes and moves on. A mailbox that is full
//! drops what comes and remembers that it did; the socket then repairs from the inbox
//! (every stored item is there, by sequence), so a slow socket costs a read later, never a
//! lost item and never a stalled gateway. Typing and presence notices that do not fit are
//! simply gone (they are never stored anywhere).
//!
//! An idle mailbox is small: an empty queue allocates nothing, and the socket's task waits
//! on the mailbox's [`Notify`] rather than on a channel of its own.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::Notify;

/// What the dispatcher or the reconciler hands a socket.
#[derive(Debug, Clone)]
pub(crate) enum Live {
    /// A republished inbox item: its sequence, the previous sequence of the same inbox
    /// (0 for the first), and the stored item.
    Item { seq: u64, prev: u64, payload: Bytes },
    /// A typing or presence notice: a server frame, sent as it is.
    Notice(Bytes),
    /// The reconciler read the inbox's newest sequence: items up to it that the socket
    /// has not sent were republished but lost.
    Newest(u64),
}

impl Live {
    fn size(&self) -> usize {
        match self {
            Live::Item { payload, .. } | Live::Notice(payload) => payload.len(),
            Live::Newest(_) => 0,
        }
    }
}

/// Most bytes of items waiting in one mailbox. A socket that falls this far behind its
/// live traffic is repaired from the inbox instead.
pub(crate) const MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Live>,
    bytes: usize,
    /// Inbox items were dropped since the socket last drained: repair from the inbox.
    dropped: bool,
}

/// One socket's mailbox.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: Mutex<Queue>,
    ready: Notify,
    /// The newest inbox sequence the socket has sent: the reconciler compares it with the
    /// inbox's newest.
    sent: AtomicU64,
}

/// What a socket takes out of its mailbox at once.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub items: Vec<Live>,
    /// Inbox items were dropped: the socket must compare its cursor with the inbox.
    pub repair: bool,
}

impl Mailbox {
    pub fn with_sent(sent: u64) -> Self {
        Self {
            sent: AtomicU64::new(sent),
            ..Self::default()
        }
    }

    /// Hands over `live`; drops it when the mailbox is full (see the module docs).
    pub fn push(&self, live: Live) {
        {
            let mut queue = self.queue.lock().expect("mailbox lock");
            let size = live.size();
            if queue.bytes + size > MAX_BYTES {
                match live {
                    Live::Item { .. } | Live::Newest(_) => queue.dropped = true,
                    Live::Notice(_) => {}
                }
                metrics::counter!("natter_gateway_mailbox_dropped_total").increment(1);
                return;
            }
            queue.bytes += size;
            queue.items.push_back(live);
        }
        self.ready.notify_one();
    }

    /// Everything waiting, oldest first.
    pub fn drain(&self) -> Drained {
        let mut queue = self.queue.lock().expect("mailbox lock");
        queue.bytes = 0;
        Drained {
            items: Vec::from(std::mem::take(&mut queue.items)),
            repair: std::mem::take(&mut queue.dropped),
        }
    }

    /// Resolves when something was pushed since the last drain (or before the first).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn set_sent(&self, seq: u64) {
        self.sent.store(seq, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, len: usize) -> Live {
        Live::Item {
            seq,
            prev: seq - 1,
            payload: Bytes::from(vec![b'x'; len]),
        }
    }

    #[test]
    fn a_full_mailbox_drops_and_asks_for_repair_but_never_blocks() {
        let mailbox = Mailbox::default();
        mailbox.push(item(1, MAX_BYTES - 10));
        mailbox.push(Live::Notice(Bytes::from_static(b"typing, does not fit")));
        let drained = mailbox.drain();
        assert_eq!(drained.items.len(), 1);
        assert!(!drained.repair, "a lost notice needs no repair");
        mailbox.push(item(2, MAX_BYTES - 10));
        mailbox.push(item(3, 100));
        let drained = mailbox.drain();
        assert_eq!(drained.items.len(), 1);
        assert!(drained.repair, "a lost item is repaired from the inbox");
        assert!(!mailbox.drain().repair, "once");
        mailbox.push(item(4, 100));
        assert_eq!(mailbox.drain().items.len(), 1, "room again after draining");
    }

    #[tokio::test]
    async fn a_push_wakes_the_socket_even_before_it_waits() {
        let mailbox = Mailbox::default();
        mailbox.push(Live::Newest(7));
        tokio::time::timeout(std::time::Duration::from_secs(1), mailbox.ready())
            .await
            .expect("woken by a push that came first");
    }
}
