//! History as keys: `m/<conversation>/<message id>` → the message as every member saw it
//! (the `MessageItem` JSON).
//!
//! Conversation ids (`dm:<a>:<b>`, `group:<g>`) never contain `/`, and message ids are
//! UUIDv7 strings whose byte order is time order, so one conversation is one contiguous
//! key range in time order: a page is a single bounded reverse scan (on TiKV, a walk over
//! the conversation's region), and writing a message again (a replay) rewrites the same
//! key with the same bytes.
//!
//! Other keys:
//! - `i/<message id>` → its conversation: "message info", and a gateway checking an edit,
//!   delete or reaction, find a message from its id alone. Ids are time-ordered, so
//!   retention is one range delete.
//! - `a/<conversation>/<message id>`: what changed the message since (edits, deletion,
//!   reactions; [`crate::changes`]), read with each page in one range scan.
//! - `td/<conversation>/<sender>` and `tr/<conversation>/<sender>`: how far the sender's
//!   messages got with everyone else (delivered, read). They come from the receipts in
//!   the sender's inbox, which are watermarks (one-on-one: the peer's; groups: the ones
//!   that say `all`), and only move forward; a page's ticks are two reads, however long
//!   the conversation and however large the group.
//! - `c/<reader>`: where a tail reader of the inbox stream got to, written in the same
//!   batch as what it read.

use std::collections::BTreeMap;

use natter_schemas::{InboxItem, MessageItem, ReceiptStatus, Ticks, ids::id_prefix_at};

use crate::changes::{self, Changes};

use crate::store::{Durability, Merge, OrderedStore, StoreError, forward_to};

/// Most messages one page may hold (the protocol's `limit` is 1..=100).
pub const MAX_PAGE: usize = 100;
/// Most stored bytes one page may hold. A page travels as one NATS reply and then as one
/// WebSocket frame, and the gateway refuses to buffer more than 128 KiB for a socket
/// (`max_write_buffer_size`): a page of 100 texts of 32 KiB was a reply too large for
/// NATS, and even a few of them a frame the gateway could not write. A page cut short by
/// this says `more`; its first message always fits (a stored message is at most ~65 KB:
/// the client's frame that carried it was at most 64 KiB).
pub const MAX_PAGE_BYTES: usize = 96 * 1024;

/// One page of a conversation, oldest first; `more` when older messages exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub messages: Vec<MessageItem>,
    pub more: bool,
}

pub struct History<S> {
    store: S,
}

/// How far one sender's messages in one conversation got with everyone else ("" before
/// the first receipt).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderMarks {
    pub delivered: String,
    pub read: String,
}

/// What one pass of a tail reader writes together: messages, receipt watermarks, and
/// where it got to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub messages: Vec<MessageItem>,
    /// (conversation, sender, status, message id): the sender's messages up to the id
    /// reached that status with everyone else.
    pub marks: Vec<(String, String, ReceiptStatus, String)>,
    /// (conversation, reader, message id): how far a reader read a one-on-one
    /// conversation when that read was not told to the peer (read receipts off, a block).
    pub own_reads: Vec<(String, String, String)>,
    /// Edits, deletions and reactions, in the order read (any order gives the same result).
    pub changes: Vec<InboxItem>,
    /// (user, conversation, item id): the latest item of a conversation in a user's inbox,
    /// for their chat list (`crate::conversations`).
    pub latest: Vec<(String, String, String)>,
    /// (conversation, message id, user): one-on-one messages never delivered to `user`,
    /// who had blocked their sender.
    pub withheld: Vec<(String, String, String)>,
    /// (reader name, last inbox sequence read).
    pub checkpoint: Option<(String, u64)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.marks.is_empty()
            && self.own_reads.is_empty()
            && self.changes.is_empty()
            && self.withheld.is_empty()
            && self.latest.is_empty()
            && self.checkpoint.is_none()
    }
}

/// One merge per message that `changes` (edits, deletions, reactions) or `withheld`
/// (conversation, message id, user) touch: it folds them into the message's stored
/// changes, and leaves the key alone when nothing changes.
fn changes_merges(
    changes: Vec<InboxItem>,
    withheld: Vec<(String, String, String)>,
) -> Vec<(Vec<u8>, Merge)> {
    let mut touched: BTreeMap<Vec<u8>, (Vec<InboxItem>, Option<String>)> = BTreeMap::new();
    for item in changes {
        if let Some((conv, id)) = changes::target(&item) {
            let key = changes_key(conv, id);
            touched.entry(key).or_default().0.push(item);
        }
    }
    for (conv, id, user) in withheld {
        touched.entry(changes_key(&conv, &id)).or_default().1 = Some(user);
    }
    let merge = |(items, withheld_from): (Vec<InboxItem>, Option<String>)| -> Merge {
        Box::new(move |held: Option<&[u8]>| {
            let before: Changes = held
                .and_then(|value| serde_json::from_slice(value).ok())
                .unwrap_or_default();
            let mut current = before.clone();
            items.iter().for_each(|item| current.apply(item));
            if let Some(user) = &withheld_from {
                current.withheld_from = Some(user.clone());
            }
            (current != before).then(|| serde_json::to_vec(&current).expect("changes serialize"))
        })
    };
    touched
        .into_iter()
        .map(|(key, folded)| (key, merge(folded)))
        .collect()
}

fn mark_key(status: ReceiptStatus, conv: &str, sender: &str) -> Vec<u8> {
    let kind = match status {
        ReceiptStatus::Delivered => "td",
        ReceiptStatus::Read => "tr",
    };
    format!("{kind}/{conv}/{sender}").into_bytes()
}

fn own_read_key(conv: &str, reader: &str) -> Vec<u8> {
    format!("or/{conv}/{reader}").into_bytes()
}

fn index_key(id: &str) -> Vec<u8> {
    format!("i/{id}").into_bytes()
}

fn checkpoint_key(reader: &str) -> Vec<u8> {
    format!("c/{reader}").into_bytes()
}

/// The ticks of its sender's message `id`: blue when everyone else read it, double grey
/// when everyone else has it (reading implies having).
pub fn ticks(id: &str, marks: &SenderMarks) -> Ticks {
    if marks.read.as_str() >= id {
        Ticks::Read
    } else if marks.delivered.as_str() >= id {
        Ticks::Delivered
    } else {
        Ticks::Sent
    }
}

pub(crate) fn message_key(conv: &str, id: &str) -> Vec<u8> {
    format!("m/{conv}/{id}").into_bytes()
}

fn changes_key(conv: &str, id: &str) -> Vec<u8> {
    format!("a/{conv}/{id}").into_bytes()
}

/// The key range of one conversation: `m/<conv>/` up to (not including) `m/<conv>0`
/// (`'0'` follows `'/'`).
pub(crate) fn conversation_range(conv: &str) -> (Vec<u8>, Vec<u8>) {
    (
        format!("m/{conv}/").into_bytes(),
        format!("m/{conv}0").into_bytes(),
    )
}

impl<S: OrderedStore> History<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Writes a batch (idempotent: the same messages always make the same entries).
    /// Watermarks only move forward and changes fold into what the store holds when they
    /// are written ([`OrderedStore::put_merging`]), so several writers may share a store.
    pub async fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        let mut entries = Vec::with_capacity(batch.messages.len() * 2 + batch.marks.len() + 1);
        for m in &batch.messages {
            let value = serde_json::to_vec(m).expect("messages serialize");
            entries.push((message_key(&m.conv, &m.id), value));
            entries.push((index_key(&m.id), m.conv.clone().into_bytes()));
        }
        let mut merges = changes_merges(batch.changes, batch.withheld);
        let mut furthest: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        let marks = batch
            .marks
            .into_iter()
            .map(|(conv, sender, status, id)| (mark_key(status, &conv, &sender), id));
        let own_reads = batch
            .own_reads
            .into_iter()
            .map(|(conv, reader, id)| (own_read_key(&conv, &reader), id));
        for (key, id) in marks.chain(own_reads) {
            let slot = furthest.entry(key).or_default();
            if id > *slot {
                *slot = id;
            }
        }
        let forward = |(key, id): (Vec<u8>, String)| (key, forward_to(id.into_bytes()));
        merges.extend(furthest.into_iter().map(forward));
        let replaced = self
            .list_latest(batch.latest, &mut entries, &mut merges)
            .await?;
        let checkpoint = batch
            .checkpoint
            .map(|(reader, seq)| (checkpoint_key(&reader), seq.to_string().into_bytes()));
        match checkpoint {
            // Where a batch is not all or nothing, progress is recorded after what it covers.
            Some(checkpoint) if !self.store.atomic_batches() => {
                let store = &self.store;
                store.put_merging(entries, merges, durability).await?;
                store.put_batch(vec![checkpoint], durability).await?;
            }
            Some(checkpoint) => {
                entries.push(checkpoint);
                let store = &self.store;
                store.put_merging(entries, merges, durability).await?;
            }
            None => {
                let store = &self.store;
                store.put_merging(entries, merges, durability).await?;
            }
        }
        self.forget_replaced(replaced, durability).await
    }

    /// The last inbox sequence `reader` wrote (0 before its first batch).
    pub async fn checkpoint(&self, reader: &str) -> Result<u64, StoreError> {
        Ok(self
            .store
            .get(&checkpoint_key(reader))
            .await?
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// A message by its id alone, as sent.
    pub async fn message(&self, id: &str) -> Result<Option<MessageItem>, StoreError> {
        let Some(conv) = self.store.get(&index_key(id)).await? else {
            return Ok(None);
        };
        let conv = String::from_utf8_lossy(&conv).into_owned();
        Ok(self
            .store
            .get(&message_key(&conv, id))
            .await?
            .and_then(|value| serde_json::from_slice(&value).ok()))
    }

    /// Up to `limit` messages of `conv` older than message `before` (the newest when
    /// `None`), oldest first, and fewer when they would hold more than [`MAX_PAGE_BYTES`].
    pub async fn page(
        &self,
        conv: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let (start, mut end) = conversation_range(conv);
        if let Some(before) = before {
            end = message_key(conv, before);
        }
        let mut found = self.store.scan(&start, &end, limit + 1, true).await?;
        let mut bytes = 0;
        let fit = found
            .iter()
            .take(limit)
            .take_while(|(_, value)| {
                bytes += value.len();
                bytes <= MAX_PAGE_BYTES
            })
            .count()
            .max(1);
        let more = found.len() > fit;
        found.truncate(fit);
        found.reverse();
        let messages = found
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        Ok(Page { messages, more })
    }

    /// What changed the messages of `conv` from `oldest` to `newest` (ids, both included),
    /// by message id: one range scan.
    pub async fn changes(
        &self,
        conv: &str,
        oldest: &str,
        newest: &str,
    ) -> Result<BTreeMap<String, Changes>, StoreError> {
        self.changes_up_to(conv, oldest, newest, MAX_PAGE).await
    }

    /// [`History::changes`] of at most `limit` messages.
    pub async fn changes_up_to(
        &self,
        conv: &str,
        oldest: &str,
        newest: &str,
        limit: usize,
    ) -> Result<BTreeMap<String, Changes>, StoreError> {
        let start = changes_key(conv, oldest);
        let mut end = changes_key(conv, newest);
        end.push(0);
        let prefix = changes_key(conv, "").len();
        let found = self.store.scan(&start, &end, limit, false).await?;
        Ok(found
            .into_iter()
            .filter_map(|(key, value)| {
                let id = String::from_utf8(key.get(prefix..)?.to_vec()).ok()?;
                Some((id, serde_json::from_slice(&value).ok()?))
            })
            .collect())
    }

    /// How far `sender`'s messages in `conv` got with everyone else.
    pub async fn marks(&self, conv: &str, sender: &str) -> Result<SenderMarks, StoreError> {
        let read = |status| async move {
            let value = self.store.get(&mark_key(status, conv, sender)).await?;
            Ok::<_, StoreError>(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        };
        Ok(SenderMarks {
            delivered: read(ReceiptStatus::Delivered).await?.unwrap_or_default(),
            read: read(ReceiptStatus::Read).await?.unwrap_or_default(),
        })
    }

    /// How far `reader` read `conv` without telling the peer (see [`Batch::own_reads`]);
    /// "" when never.
    pub async fn own_read(&self, conv: &str, reader: &str) -> Result<String, StoreError> {
        let value = self.store.get(&own_read_key(conv, reader)).await?;
        Ok(value
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default())
    }

    /// Deletes every message made before `cutoff_ms`, conversation by conversation (one
    /// range delete each), and their index entries. Returns how many conversations it
    /// visited.
    pub async fn forget_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let cutoff = id_prefix_at(cutoff_ms);
        self.store.delete_range(b"i/", &index_key(&cutoff)).await?;
        let mut next = b"m/".to_vec();
        let mut visited = 0;
        loop {
            let Some((key, _)) = self
                .store
                .scan(&next, b"m0", 1, false)
                .await?
                .into_iter()
                .next()
            else {
                return Ok(visited);
            };
            let text = String::from_utf8_lossy(&key);
            let Some(conv) = text
                .strip_prefix("m/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(conv, _)| conv.to_owned())
            else {
                return Ok(visited);
            };
            let (start, end) = conversation_range(&conv);
            let old_end = message_key(&conv, &cutoff);
            self.store.delete_range(&start, &old_end).await?;
            let (changes_start, changes_end) =
                (changes_key(&conv, ""), changes_key(&conv, &cutoff));
            self.store
                .delete_range(&changes_start, &changes_end)
                .await?;
            visited += 1;
            next = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_come_from_the_sender_s_watermarks() {
        let marks = |d: &str, r: &str| SenderMarks {
            delivered: d.into(),
            read: r.into(),
        };
        assert_eq!(ticks("05", &marks("04", "")), Ticks::Sent);
        assert_eq!(ticks("05", &marks("05", "")), Ticks::Delivered);
        assert_eq!(
            ticks("05", &marks("", "07")),
            Ticks::Read,
            "read implies delivered"
        );
        assert_eq!(ticks("05", &marks("09", "03")), Ticks::Delivered);
    }

    #[test]
    fn a_conversation_range_holds_its_keys_only() {
        let (start, end) = conversation_range("dm:a:b");
        let inside = message_key("dm:a:b", "0190");
        let other = message_key("dm:a:bc", "0190");
        assert!(start <= inside && inside < end);
        assert!(!(start <= other && other < end));
    }
}
