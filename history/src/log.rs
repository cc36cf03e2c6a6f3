//! History as keys: `m/<conversation>/<message id>` → the message as every member saw it
//! (the `MessageItem` JSON).
//!
//! Conversation ids (`dm:<a>:<b>`, `group:<g>`) never contain `/`, and message ids are
//! UUIDv7 strings whose byte order is time order, so one conversation is one contiguous
//! key range in time order: a page is a single bounded reverse scan (on TiKV, a walk over
//! the conversation's region), and writing a message again (a redelivery) rewrites the same
//! key with the same bytes.
//!
//! Receipt state lives next to the messages as two watermarks per member and conversation:
//! `d/<conversation>/<user>` (the newest message delivered to one of their devices) and
//! `r/<conversation>/<user>` (the newest they read). Both only move forward, and a message
//! is delivered to (read by) a member when their watermark reached its id, so a page's
//! ticks come from two reads per other member, however long the conversation.

use natter_schemas::{MessageItem, Ticks};

use crate::store::{OrderedStore, StoreError};

/// Most messages one page may hold (the protocol's `limit` is 1..=100).
pub const MAX_PAGE: usize = 100;

/// One page of a conversation, oldest first; `more` when older messages exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub messages: Vec<MessageItem>,
    pub more: bool,
}

pub struct History<S> {
    store: S,
}

/// One member's watermarks in one conversation ("" before the first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    pub delivered: String,
    pub read: String,
}

/// Which watermark an event moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Delivered,
    Read,
}

fn mark_key(mark: Mark, conv: &str, user: &str) -> Vec<u8> {
    let kind = match mark {
        Mark::Delivered => 'd',
        Mark::Read => 'r',
    };
    format!("{kind}/{conv}/{user}").into_bytes()
}

/// The ticks of a message with id `id`, given the watermarks of every member but its
/// sender: blue when all read it, double grey when all have it (reading implies having).
pub fn ticks(id: &str, others: &[Marks]) -> Ticks {
    if others.iter().all(|m| m.read.as_str() >= id) {
        Ticks::Read
    } else if others
        .iter()
        .all(|m| m.delivered.as_str() >= id || m.read.as_str() >= id)
    {
        Ticks::Delivered
    } else {
        Ticks::Sent
    }
}

fn message_key(conv: &str, id: &str) -> Vec<u8> {
    format!("m/{conv}/{id}").into_bytes()
}

/// The key range of one conversation: `m/<conv>/` up to (not including) `m/<conv>0`
/// (`'0'` follows `'/'`).
fn conversation_range(conv: &str) -> (Vec<u8>, Vec<u8>) {
    (
        format!("m/{conv}/").into_bytes(),
        format!("m/{conv}0").into_bytes(),
    )
}

/// The prefix every UUIDv7 made at `ms` (milliseconds since the epoch) starts with:
/// `tttttttt-tttt`, 48 bits of time in lowercase hex. Ids made earlier sort below it.
pub fn id_prefix_at(ms: u64) -> String {
    let hex = format!("{:012x}", ms & 0xFFFF_FFFF_FFFF);
    format!("{}-{}", &hex[..8], &hex[8..])
}

impl<S: OrderedStore> History<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Writes messages (idempotent: the same message always makes the same entry).
    pub async fn record(&self, messages: &[MessageItem]) -> Result<(), StoreError> {
        let entries = messages
            .iter()
            .map(|m| {
                let value = serde_json::to_vec(m).expect("messages serialize");
                (message_key(&m.conv, &m.id), value)
            })
            .collect();
        self.store.put_batch(entries).await
    }

    /// Up to `limit` messages of `conv` older than message `before` (the newest when
    /// `None`), oldest first.
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
        let more = found.len() > limit;
        found.truncate(limit);
        found.reverse();
        let messages = found
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        Ok(Page { messages, more })
    }

    /// Moves `user`'s watermark in `conv` to `id` unless it is already there or further.
    /// (One writer per store: each history worker handles receipt events in order.)
    pub async fn advance(
        &self,
        mark: Mark,
        conv: &str,
        user: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        let key = mark_key(mark, conv, user);
        let current = self.store.get(&key).await?;
        if current.as_deref().is_some_and(|c| c >= id.as_bytes()) {
            return Ok(false);
        }
        self.store
            .put_batch(vec![(key, id.as_bytes().to_vec())])
            .await?;
        Ok(true)
    }

    /// `user`'s watermarks in `conv`.
    pub async fn marks(&self, conv: &str, user: &str) -> Result<Marks, StoreError> {
        let read = |mark| async move {
            let value = self.store.get(&mark_key(mark, conv, user)).await?;
            Ok::<_, StoreError>(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        };
        Ok(Marks {
            delivered: read(Mark::Delivered).await?.unwrap_or_default(),
            read: read(Mark::Read).await?.unwrap_or_default(),
        })
    }

    /// Deletes every message made before `cutoff_ms`, conversation by conversation (one
    /// range delete each). Returns how many conversations it visited.
    pub async fn forget_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let cutoff = id_prefix_at(cutoff_ms);
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
            visited += 1;
            next = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_prefixes_order_like_uuid_v7_ids() {
        let id = "01a2244d-5569-756b-bd19-44adcb231731";
        let ms = 0x01a2244d5569;
        assert!(id_prefix_at(ms).as_str() <= id);
        assert!(id_prefix_at(ms + 1).as_str() > id);
        assert_eq!(id_prefix_at(ms), "01a2244d-5569");
    }

    #[test]
    fn ticks_need_every_other_member() {
        let marks = |d: &str, r: &str| Marks {
            delivered: d.into(),
            read: r.into(),
        };
        assert_eq!(ticks("05", &[marks("04", "")]), Ticks::Sent);
        assert_eq!(ticks("05", &[marks("05", "")]), Ticks::Delivered);
        assert_eq!(
            ticks("05", &[marks("", "07")]),
            Ticks::Read,
            "read implies delivered"
        );
        assert_eq!(
            ticks("05", &[marks("09", "09"), marks("05", "03")]),
            Ticks::Delivered
        );
        assert_eq!(
            ticks("05", &[marks("09", "09"), marks("", "")]),
            Ticks::Sent
        );
        assert_eq!(ticks("05", &[]), Ticks::Read, "notes to yourself");
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
