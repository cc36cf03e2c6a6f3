//! Each user's chat list, kept by the tail reader from their inbox: which conversations
//! they have and what came last in each, so a new device gets its chat list in one
//! request instead of replaying the inbox.
//!
//! Keys:
//! - `cl/<user>/<conversation>` → the id of the latest item of that conversation in the
//!   user's inbox (a message id, or for a group change a time-ordered stand-in).
//! - `cr/<user>/<that id>` → the conversation: the list by recency is one reverse scan.
//!   When a conversation moves up, its older `cr` entry is deleted after the batch that
//!   wrote the new one; one left behind by a crash in between is skipped when read (its
//!   id no longer matches `cl`) and deleted then. `cl` only moves forward (a merge, see
//!   [`OrderedStore::put_merging`]): of two workers writing one TiKV store, the one behind
//!   cannot move a conversation back; the `cr` entry it wrote is then one of those skipped.
//!
//! Unread counts and previews are worked out from history itself when the list is read
//! (the workers' `chats.rs`).

use std::collections::BTreeMap;

use natter_schemas::ids::id_prefix_at;

use crate::{
    log::History,
    store::{Durability, Merge, OrderedStore, StoreError, forward_to},
};

fn latest_key(user: &str, conv: &str) -> Vec<u8> {
    format!("cl/{user}/{conv}").into_bytes()
}

fn recent_key(user: &str, at: &str) -> Vec<u8> {
    format!("cr/{user}/{at}").into_bytes()
}

/// A time-ordered stand-in id for an item that has none (a group change): its time, then
/// its inbox sequence. Sorts among message ids by time (UUIDv7 text starts with the same
/// time prefix).
pub fn stand_in_id(ts: u64, seq: u64) -> String {
    format!("{}-g{seq:016x}", id_prefix_at(ts))
}

/// One conversation of a user's list: its id and its latest item's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub conv: String,
    pub at: String,
}

impl<S: OrderedStore> History<S> {
    /// Moves each (user, conversation) to its item `at`, where that is newer than what
    /// the list has: `cr` entries into `entries`, `cl` as forward-only `merges`, written in
    /// one batch; returns the replaced `cr` entries, deleted after.
    pub(crate) async fn list_latest(
        &self,
        latest: Vec<(String, String, String)>,
        entries: &mut Vec<(Vec<u8>, Vec<u8>)>,
        merges: &mut Vec<(Vec<u8>, Merge)>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut newest: BTreeMap<(String, String), String> = BTreeMap::new();
        for (user, conv, at) in latest {
            let slot = newest.entry((user, conv)).or_default();
            if at > *slot {
                *slot = at;
            }
        }
        let keys = newest
            .keys()
            .map(|(user, conv)| latest_key(user, conv))
            .collect::<Vec<_>>();
        let held = self.store().get_many(keys.clone()).await?;
        let mut replaced = Vec::new();
        for ((((user, conv), at), key), held) in newest.into_iter().zip(keys).zip(held) {
            let held = held.map(|v| String::from_utf8_lossy(&v).into_owned());
            if held.as_deref().is_some_and(|held| held >= at.as_str()) {
                continue;
            }
            if let Some(held) = held {
                replaced.push(recent_key(&user, &held));
            }
            entries.push((recent_key(&user, &at), conv.into_bytes()));
            merges.push((key, forward_to(at.into_bytes())));
        }
        Ok(replaced)
    }

    /// Deletes `cr` entries a batch replaced, in one write with the batch's durability
    /// (one write per entry, each with its own fsync, cost the tail reader ~0.4 ms of CPU
    /// per one-on-one message: docs/BENCHMARKS.md, 2026-12-03).
    pub(crate) async fn forget_replaced(
        &self,
        replaced: Vec<Vec<u8>>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.store().delete_keys(replaced, durability).await
    }

    /// Up to `limit` of `user`'s conversations, most recent first, whose latest item is
    /// older than `before` (the `at` of the last one of the previous page); and whether
    /// there are more.
    ///
    /// The `cr` scan and the `cl` reads are not one snapshot: a conversation that moved up
    /// between them shows its old `cr` entry and a newer `cl`. It is listed at that newer
    /// item (if still older than `before`), not dropped.
    pub async fn conversations(
        &self,
        user: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Listed>, bool), StoreError> {
        let start = recent_key(user, "");
        let mut end = match before {
            Some(before) => recent_key(user, before),
            None => format!("cr/{user}0").into_bytes(),
        };
        let prefix = start.len();
        let (mut found, mut moved, mut stale) = (Vec::new(), BTreeMap::new(), Vec::new());
        let mut more = false;
        while !more {
            let scanned = self.store().scan(&start, &end, limit + 1, true).await?;
            let exhausted = scanned.len() <= limit;
            for (key, conv) in &scanned {
                end = key.clone();
                let at = String::from_utf8_lossy(&key[prefix..]).into_owned();
                let conv = String::from_utf8_lossy(conv).into_owned();
                let current = self.store().get(&latest_key(user, &conv)).await?;
                let current = current.map(|v| String::from_utf8_lossy(&v).into_owned());
                match current {
                    Some(current) if current == at => found.push(Listed { conv, at }),
                    Some(current) if current > at => {
                        // Replaced for good (`cl` only moves forward).
                        stale.push(key.clone());
                        if before.is_none_or(|b| *current < *b) {
                            moved.insert(conv, current);
                        }
                    }
                    _ => {}
                }
                if found.len() > limit {
                    more = true;
                    break;
                }
            }
            if exhausted {
                break;
            }
        }
        for (conv, at) in moved {
            if !found.iter().any(|listed| listed.conv == conv) {
                found.push(Listed { conv, at });
            }
        }
        found.sort_by(|a, b| b.at.cmp(&a.at));
        more |= found.len() > limit;
        found.truncate(limit);
        // Entries a writer left behind (a crash between a batch and its deletes, or, with
        // writers sharing a TiKV store, a `cl` move lost to another) go as they are read.
        if let Err(err) = self.store().delete_keys(stale, Durability::Soon).await {
            tracing::debug!(error = %err, "stale chat-list entries not deleted");
        }
        Ok((found, more))
    }

    /// Writes chat list entries alone (tests; the tail reader writes them with its batch).
    pub async fn write_latest(
        &self,
        latest: Vec<(String, String, String)>,
    ) -> Result<(), StoreError> {
        let (mut entries, mut merges) = (Vec::new(), Vec::new());
        let replaced = self.list_latest(latest, &mut entries, &mut merges).await?;
        let store = self.store();
        store.put_merging(entries, merges, Durability::Soon).await?;
        self.forget_replaced(replaced, Durability::Soon).await
    }
}

/// Most unread messages counted per conversation (a client shows "999+").
pub const MAX_UNREAD: usize = 999;

impl<S: OrderedStore> History<S> {
    /// The newest message of `conv` up to item `at` that `reader` may see, as it is now
    /// (edits, deletion applied).
    pub async fn latest_message(
        &self,
        conv: &str,
        at: &str,
        reader: &str,
    ) -> Result<Option<natter_schemas::HistoryMessage>, StoreError> {
        let (start, _) = crate::log::conversation_range(conv);
        let mut end = crate::log::message_key(conv, at);
        end.push(0);
        let found = self.store().scan(&start, &end, 20, true).await?;
        let messages: Vec<natter_schemas::MessageItem> = found
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        let (Some(newest), Some(oldest)) = (messages.first(), messages.last()) else {
            return Ok(None);
        };
        let changes = self.changes(conv, &oldest.id, &newest.id).await?;
        Ok(messages
            .into_iter()
            .find_map(|message| match changes.get(&message.id) {
                Some(c) if !c.visible_to(reader) => None,
                Some(c) => Some(c.show(message, reader)),
                None => Some(natter_schemas::HistoryMessage::plain(message)),
            }))
    }

    /// How many messages of `conv` after `read` (a message id; "" for none) up to item
    /// `at` came from others and are there for `reader` (not withheld, not deleted); at
    /// most [`MAX_UNREAD`].
    pub async fn unread(
        &self,
        conv: &str,
        read: &str,
        at: &str,
        reader: &str,
    ) -> Result<usize, StoreError> {
        let mut start = crate::log::message_key(conv, read);
        start.push(0);
        let mut end = crate::log::message_key(conv, at);
        end.push(0);
        let found = self
            .store()
            .scan(&start, &end, MAX_UNREAD * 2, false)
            .await?;
        let messages: Vec<natter_schemas::MessageItem> = found
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .filter(|m: &natter_schemas::MessageItem| m.from != reader)
            .collect();
        let (Some(oldest), Some(newest)) = (messages.first(), messages.last()) else {
            return Ok(0);
        };
        let changes = self
            .changes_up_to(conv, &oldest.id, &newest.id, MAX_UNREAD * 2)
            .await?;
        let unread = messages
            .iter()
            .filter(|m| {
                changes
                    .get(&m.id)
                    .is_none_or(|c| c.visible_to(reader) && c.deleted.is_none())
            })
            .count();
        Ok(unread.min(MAX_UNREAD))
    }
}

/// Longest quoted text, in characters.
pub const QUOTE_CHARS: usize = 100;

impl<S: OrderedStore> History<S> {
    /// A short quote of message `id` of `conv` as `reader` sees it now (`None` when it is
    /// not there for them).
    pub async fn quote(
        &self,
        conv: &str,
        id: &str,
        reader: &str,
    ) -> Result<Option<natter_schemas::Quote>, StoreError> {
        let Some(value) = self.store().get(&crate::log::message_key(conv, id)).await? else {
            return Ok(None);
        };
        let Ok(message) = serde_json::from_slice::<natter_schemas::MessageItem>(&value) else {
            return Ok(None);
        };
        let shown = match self.changes(conv, id, id).await?.remove(id) {
            Some(c) if !c.visible_to(reader) => return Ok(None),
            Some(c) => c.show(message, reader),
            None => natter_schemas::HistoryMessage::plain(message),
        };
        Ok(Some(natter_schemas::Quote {
            id: shown.message.id,
            from: shown.message.from,
            body: shown.message.body.shortened(QUOTE_CHARS),
        }))
    }
}
