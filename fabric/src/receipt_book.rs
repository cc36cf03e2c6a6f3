//! The receipt book: per-member delivered/read state of group messages, in the replicated
//! KV bucket `receipts`, so it survives a worker restart and any worker can continue.
//!
//! Two kinds of keys:
//! - `m.<message id>`: a [`MessageState`], written by the fanout worker before the message
//!   reaches any inbox (its recipients are the members at fanout time, sender excluded),
//!   then marked by the receipts worker as members' devices ack and read. The sender asks
//!   for it as "message info".
//! - `u.<group>.<member>`: a [`MemberReads`]: how far the member has read the group, and
//!   the messages delivered to them that are not read yet. A `read` names one message (a
//!   watermark); this is how the worker finds the earlier ones it covers.
//!
//! Every change is a compare-and-set, retried when another worker changed the key first:
//! two members acking one message at once both count, and exactly one of them completes
//! the set, which is the receipt that says `all`.

use std::collections::BTreeSet;

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
    stream::StorageType,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    buckets::{lost_race, open_bucket},
    streams::INBOX_MAX_AGE,
};

pub const BUCKET: &str = "receipts";
/// Unread messages remembered per member and group; beyond it the oldest are forgotten
/// (they get no read receipt from a later watermark).
pub const MAX_UNREAD: usize = 5_000;
const CAS_ATTEMPTS: usize = 50;

/// Who a group message went to and who has it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageState {
    pub conv: String,
    pub from: String,
    pub recipients: BTreeSet<String>,
    pub delivered: BTreeSet<String>,
    pub read: BTreeSet<String>,
    /// Whose mark completed `delivered` / `read`: theirs is the receipt that says
    /// `all: true`, however often it is sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_last: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_last: Option<String>,
}

/// What one mark changed: for each status newly reached by the member, whether every
/// recipient has it now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marked {
    pub delivered: Option<bool>,
    pub read: Option<bool>,
}

impl Marked {
    /// These marks, plus the statuses `by` had already reached in `state` (for an event
    /// handled again after a worker died between marking and publishing, or handled twice
    /// at once): whether `by`'s mark was the one that completed each.
    pub fn or_reached(self, state: &MessageState, by: &str) -> Marked {
        let completed_by = |set: &BTreeSet<String>, last: &Option<String>| match last {
            Some(last) => last == by,
            // Written before the book remembered who completed a status.
            None => set.len() == state.recipients.len(),
        };
        Marked {
            delivered: self.delivered.or_else(|| {
                (state.delivered.contains(by))
                    .then(|| completed_by(&state.delivered, &state.delivered_last))
            }),
            read: self.read.or_else(|| {
                (state.read.contains(by)).then(|| completed_by(&state.read, &state.read_last))
            }),
        }
    }
}

impl MessageState {
    /// Marks `by` delivered (and read, when `read`). Reading implies delivery.
    pub fn mark(&mut self, by: &str, read: bool) -> Marked {
        let mut marked = Marked::default();
        if !self.recipients.contains(by) {
            return marked;
        }
        if self.delivered.insert(by.to_owned()) {
            let all = self.delivered.len() == self.recipients.len();
            if all {
                self.delivered_last = Some(by.to_owned());
            }
            marked.delivered = Some(all);
        }
        if read && self.read.insert(by.to_owned()) {
            let all = self.read.len() == self.recipients.len();
            if all {
                self.read_last = Some(by.to_owned());
            }
            marked.read = Some(all);
        }
        marked
    }

    /// Each recipient's furthest status: `sent`, `delivered` or `read`.
    pub fn status_of(&self, member: &str) -> &'static str {
        if self.read.contains(member) {
            "read"
        } else if self.delivered.contains(member) {
            "delivered"
        } else {
            "sent"
        }
    }
}

/// One member's reading of one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberReads {
    /// The highest message id they read up to ("" before the first read). Message ids
    /// are UUIDv7 strings, so string order is time order.
    pub read_upto: String,
    /// Delivered to them, not read yet.
    pub unread: BTreeSet<String>,
}

impl MemberReads {
    /// Records a delivery; true when the message is already covered by a read.
    pub fn delivered(&mut self, id: &str) -> bool {
        if id <= self.read_upto.as_str() {
            return true;
        }
        self.unread.insert(id.to_owned());
        while self.unread.len() > MAX_UNREAD {
            self.unread.pop_first();
        }
        false
    }

    /// The unread messages a read up to `up_to` covers.
    pub fn covered_by(&self, up_to: &str) -> Vec<String> {
        self.unread
            .iter()
            .take_while(|id| id.as_str() <= up_to)
            .cloned()
            .collect()
    }

    /// Moves the watermark to `up_to` and forgets the unread messages in `done`.
    pub fn read(&mut self, up_to: &str, done: &BTreeSet<String>) {
        if up_to > self.read_upto.as_str() {
            self.read_upto = up_to.to_owned();
        }
        self.unread.retain(|id| !done.contains(id));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("receipt bucket unavailable: {0}")]
    Bucket(String),
    #[error("receipt store: {0}")]
    Store(String),
    #[error("stored receipt state {0} is unreadable")]
    Corrupt(String),
    #[error("receipt state {0} kept changing under us")]
    Contended(String),
}

#[derive(Clone)]
pub struct ReceiptBook {
    kv: kv::Store,
}

fn message_key(id: &str) -> String {
    format!("m.{id}")
}

fn member_key(gid: &str, uid: &str) -> String {
    format!("u.{gid}.{uid}")
}

impl ReceiptBook {
    /// Opens the bucket, creating it on first use. Entries expire with the inbox.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, BookError> {
        let kv = open_bucket(
            js,
            kv::Config {
                bucket: BUCKET.to_owned(),
                description: "Natter per-member receipt state of group messages".to_owned(),
                history: 1,
                max_age: INBOX_MAX_AGE,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(BookError::Bucket)?;
        Ok(Self { kv })
    }

    /// Records who a group message goes to. A second call (a redelivered fanout) keeps
    /// the first record and whatever was marked since.
    pub async fn record_message(&self, id: &str, state: &MessageState) -> Result<(), BookError> {
        let value = serde_json::to_vec(state).expect("receipt state serializes");
        match self.kv.create(message_key(id), value.into()).await {
            Ok(_) => Ok(()),
            Err(err) if lost_race(err.kind() == CreateErrorKind::AlreadyExists, &err) => Ok(()),
            Err(err) => Err(BookError::Store(err.to_string())),
        }
    }

    /// A group message's state, for "message info".
    pub async fn message(&self, id: &str) -> Result<Option<MessageState>, BookError> {
        Ok(self
            .read::<MessageState>(&message_key(id))
            .await?
            .map(|(_, s)| s))
    }

    /// Marks `by` delivered (and read) on message `id`. `None` when the book does not
    /// know the message (not a group message).
    pub async fn mark(
        &self,
        id: &str,
        by: &str,
        read: bool,
    ) -> Result<Option<(MessageState, Marked)>, BookError> {
        self.change(&message_key(id), false, |state: &mut MessageState| {
            let marked = state.mark(by, read);
            (state.clone(), marked)
        })
        .await
    }

    /// Records that `id` reached `uid`; true when their reading already covers it.
    pub async fn delivered_to(&self, gid: &str, uid: &str, id: &str) -> Result<bool, BookError> {
        let covered = self
            .change(&member_key(gid, uid), true, |reads: &mut MemberReads| {
                reads.delivered(id)
            })
            .await?;
        Ok(covered.unwrap_or(false))
    }

    /// The member's reading of a group as stored now.
    pub async fn member(&self, gid: &str, uid: &str) -> Result<MemberReads, BookError> {
        Ok(self
            .read::<MemberReads>(&member_key(gid, uid))
            .await?
            .map(|(_, r)| r)
            .unwrap_or_default())
    }

    /// Moves the member's watermark to `up_to`, forgetting the unread messages in `done`;
    /// returns the unread ones covered by `up_to` that are not in `done` (delivered while
    /// the caller was marking), which the caller marks and passes back in.
    pub async fn finish_read(
        &self,
        gid: &str,
        uid: &str,
        up_to: &str,
        done: &BTreeSet<String>,
    ) -> Result<Vec<String>, BookError> {
        let missed = self
            .change(&member_key(gid, uid), true, |reads: &mut MemberReads| {
                let missed: Vec<String> = reads
                    .covered_by(up_to)
                    .into_iter()
                    .filter(|id| !done.contains(id))
                    .collect();
                if missed.is_empty() {
                    reads.read(up_to, done);
                }
                missed
            })
            .await?;
        Ok(missed.unwrap_or_default())
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(u64, T)>, BookError> {
        let Some(entry) = self
            .kv
            .entry(key)
            .await
            .map_err(|e| BookError::Store(e.to_string()))?
        else {
            return Ok(None);
        };
        if entry.operation != Operation::Put {
            return Ok(None);
        }
        let value =
            serde_json::from_slice(&entry.value).map_err(|_| BookError::Corrupt(key.into()))?;
        Ok(Some((entry.revision, value)))
    }

    /// Compare-and-set on one key. A missing key starts from `T::default()` when `create`,
    /// else the change is skipped (`None`).
    async fn change<T, R>(
        &self,
        key: &str,
        create: bool,
        mut change: impl FnMut(&mut T) -> R,
    ) -> Result<Option<R>, BookError>
    where
        T: Serialize + DeserializeOwned + Default + Clone + PartialEq,
    {
        for _ in 0..CAS_ATTEMPTS {
            let (revision, stored) = match self.read::<T>(key).await? {
                Some((revision, value)) => (Some(revision), value),
                None if create => (None, T::default()),
                None => return Ok(None),
            };
            let mut value = stored.clone();
            let outcome = change(&mut value);
            if value == stored {
                return Ok(Some(outcome));
            }
            let bytes = serde_json::to_vec(&value).expect("receipt state serializes");
            let stored = match revision {
                Some(revision) => match self.kv.update(key, bytes.into(), revision).await {
                    Ok(_) => true,
                    Err(err)
                        if lost_race(err.kind() == UpdateErrorKind::WrongLastRevision, &err) =>
                    {
                        false
                    }
                    Err(err) => return Err(BookError::Store(err.to_string())),
                },
                None => match self.kv.create(key, bytes.into()).await {
                    Ok(_) => true,
                    Err(err) if lost_race(err.kind() == CreateErrorKind::AlreadyExists, &err) => {
                        false
                    }
                    Err(err) => return Err(BookError::Store(err.to_string())),
                },
            };
            if stored {
                return Ok(Some(outcome));
            }
        }
        Err(BookError::Contended(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MessageState {
        MessageState {
            conv: "group:g".into(),
            from: "amy".into(),
            recipients: ["bob", "cat"].map(String::from).into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_last_member_to_reach_a_status_completes_it() {
        let mut s = state();
        assert_eq!(
            s.mark("bob", false),
            Marked {
                delivered: Some(false),
                read: None
            }
        );
        assert_eq!(s.mark("bob", false), Marked::default(), "counted once");
        assert_eq!(s.mark("eve", true), Marked::default(), "not a recipient");
        assert_eq!(
            s.mark("cat", true),
            Marked {
                delivered: Some(true),
                read: Some(false)
            },
            "reading implies delivery"
        );
        assert_eq!(s.mark("bob", true).read, Some(true));
        assert_eq!(s.status_of("bob"), "read");
    }

    #[test]
    fn a_receipt_sent_again_says_all_only_for_the_member_who_completed_the_set() {
        let mut s = state();
        s.mark("bob", false);
        s.mark("cat", false);
        // Bob's event handled again after cat completed the set: bob's receipt is re-sent
        // as it was first (not all); cat's says all.
        assert_eq!(
            Marked::default().or_reached(&s, "bob").delivered,
            Some(false)
        );
        assert_eq!(
            Marked::default().or_reached(&s, "cat").delivered,
            Some(true)
        );
        assert_eq!(
            Marked::default().or_reached(&s, "cat").read,
            None,
            "not read"
        );
        // A state stored before the book remembered who completed it.
        s.delivered_last = None;
        assert_eq!(
            Marked::default().or_reached(&s, "bob").delivered,
            Some(true)
        );
    }

    #[test]
    fn a_read_watermark_covers_earlier_deliveries_and_later_ones_below_it() {
        let mut r = MemberReads::default();
        assert!(!r.delivered("0001"));
        assert!(!r.delivered("0003"));
        assert_eq!(r.covered_by("0002"), ["0001"]);
        r.read("0002", &["0001".to_owned()].into());
        assert_eq!(r.read_upto, "0002");
        assert_eq!(r.unread, ["0003".to_owned()].into());
        assert!(
            r.delivered("0002"),
            "a late delivery below the watermark is read"
        );
        r.read("0001", &BTreeSet::new());
        assert_eq!(r.read_upto, "0002", "the watermark never moves back");
    }
}
