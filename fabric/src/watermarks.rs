//! Group receipts as watermarks: how far each member of a group has received and read it,
//! and what each sender has been told.
//!
//! A member's device acks inbox items by sequence; the gateway turns that into a
//! [`GroupMark`]: "a device of `by` has every message of the group up to `up_to`" (the
//! newest message from someone else it acked), plus, per sender, the newest of their
//! messages it covers. A `read` frame is a mark too. Gateways collect marks for a few
//! milliseconds and publish them in one [`MarkBatch`] per partition on `rcpt.<p>`; the
//! receipts worker that owns the partition folds them into [`GroupWatermarks`] and tells
//! each sender, with one receipt saying `all: true`, how far every other member has got.
//!
//! Why watermarks and not per-message state: the previous design wrote one
//! compare-and-set per member per message to one key (1,023 writers contending on it for
//! a 1,024-member group, ~2,000 rewrites of a ~200 KB value per message). A watermark per
//! member is one comparison in memory, and a whole group's state is a small value written
//! at most once a second (the checkpoint in the KV bucket `receipts`, key `g.<group>`).
//!
//! A member who joined at time `t` cannot receive messages sent before `t` (fanout uses
//! the members at fanout time), so their watermark counts as at least the id prefix of
//! `t` (message ids are UUIDv7, ordered by time): they never hold back `all` for an older
//! message.

use std::collections::BTreeMap;

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, UpdateErrorKind},
    stream::StorageType,
};
use natter_schemas::{ReceiptStatus, ids::id_prefix_at};
use serde::{Deserialize, Serialize};

use crate::{
    buckets::{KvError, lost_race, open_bucket, read_latest},
    streams::INBOX_MAX_AGE,
};

pub const BUCKET: &str = "receipts";

/// One member's progress in one group, from one gateway's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMark {
    pub group: String,
    pub by: String,
    pub status: ReceiptStatus,
    /// A message id: every message of the group up to it is delivered to (read by) `by`.
    pub up_to: String,
    /// Delivered marks: for each sender, the newest of their messages this mark covers
    /// (how the receipts worker learns who has messages waiting for `all`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<SenderMark>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderMark {
    pub from: String,
    pub id: String,
}

/// What a gateway publishes on `rcpt.<p>`: the marks it collected for the groups of
/// partition `p`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MarkBatch {
    pub marks: Vec<GroupMark>,
}

/// Most of one sender's messages remembered while they wait for `all` (see
/// [`SenderTicks::waiting`]).
pub const MAX_WAITING: usize = 8;

/// What one sender was told so far, and which of their messages wait for `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderTicks {
    /// Ids of the sender's messages learned from marks and not yet read by everyone,
    /// ascending, at most [`MAX_WAITING`] (the newest kept: a receipt for a later message
    /// covers the earlier ones too). Receipts name only these, so every `all` receipt is
    /// about a real message of its recipient.
    #[serde(default)]
    pub waiting: Vec<String>,
    #[serde(default)]
    pub delivered_all: String,
    #[serde(default)]
    pub read_all: String,
}

impl SenderTicks {
    fn learn(&mut self, id: &str) -> bool {
        if id <= self.read_all.as_str() {
            return false;
        }
        let Err(at) = self.waiting.binary_search_by(|w| w.as_str().cmp(id)) else {
            return false;
        };
        self.waiting.insert(at, id.to_owned());
        if self.waiting.len() > MAX_WAITING {
            self.waiting.remove(0);
        }
        true
    }

    /// The newest waiting message at or below `covered` not yet told for `status`; it is
    /// remembered as told.
    fn tell(&mut self, status: ReceiptStatus, covered: &str) -> Option<String> {
        let told = match status {
            ReceiptStatus::Delivered => &self.delivered_all,
            ReceiptStatus::Read => &self.read_all,
        };
        let id = self
            .waiting
            .iter()
            .rev()
            .find(|w| w.as_str() <= covered && w.as_str() > told.as_str())?
            .clone();
        match status {
            ReceiptStatus::Delivered => raise(&mut self.delivered_all, &id),
            ReceiptStatus::Read => {
                raise(&mut self.delivered_all, &id);
                raise(&mut self.read_all, &id);
                self.waiting.retain(|w| *w > id);
                true
            }
        };
        Some(id)
    }
}

/// A group's receipt state: per member how far they got, per sender what they were told.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupWatermarks {
    #[serde(default)]
    pub delivered: BTreeMap<String, String>,
    #[serde(default)]
    pub read: BTreeMap<String, String>,
    #[serde(default)]
    pub senders: BTreeMap<String, SenderTicks>,
}

/// A receipt to send: `to`'s messages in the group up to `id` reached `status` with every
/// other member; `by` is the member whose mark completed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllReceipt {
    pub to: String,
    pub by: String,
    pub status: ReceiptStatus,
    pub id: String,
}

/// One member as the receipts count them: their id and when they joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: String,
    pub since_ms: u64,
}

/// Raises `slot` to `value` if that is further; whether it moved.
fn raise(slot: &mut String, value: &str) -> bool {
    if value > slot.as_str() {
        value.clone_into(slot);
        true
    } else {
        false
    }
}

fn raise_in(map: &mut BTreeMap<String, String>, key: &str, value: &str) -> bool {
    match map.get_mut(key) {
        Some(slot) => raise(slot, value),
        None => {
            map.insert(key.to_owned(), value.to_owned());
            true
        }
    }
}

impl GroupWatermarks {
    /// Folds one mark in; whether anything moved.
    pub fn apply(&mut self, mark: &GroupMark) -> bool {
        let marks = match mark.status {
            ReceiptStatus::Delivered => &mut self.delivered,
            ReceiptStatus::Read => &mut self.read,
        };
        let mut moved = raise_in(marks, &mark.by, &mark.up_to);
        for sender in &mark.senders {
            if sender.from != mark.by {
                let ticks = self.senders.entry(sender.from.clone()).or_default();
                moved |= ticks.learn(&sender.id);
            }
        }
        moved
    }

    /// Another copy of the same group's state (a second worker's checkpoint): everything
    /// only moves forward, so the merge takes the furthest of each.
    pub fn merge(&mut self, other: &GroupWatermarks) {
        for (user, id) in &other.delivered {
            raise_in(&mut self.delivered, user, id);
        }
        for (user, id) in &other.read {
            raise_in(&mut self.read, user, id);
        }
        for (user, theirs) in &other.senders {
            let ours = self.senders.entry(user.clone()).or_default();
            raise(&mut ours.delivered_all, &theirs.delivered_all);
            raise(&mut ours.read_all, &theirs.read_all);
            for id in &theirs.waiting {
                ours.learn(id);
            }
            let read_all = ours.read_all.clone();
            ours.waiting.retain(|w| *w > read_all);
        }
    }

    /// Forgets whoever is no longer a member (their marks and what waits for them): the
    /// state stays the size of the group, however many come and go.
    pub fn keep_only(&mut self, members: &[Member]) {
        let current: std::collections::HashSet<&str> =
            members.iter().map(|m| m.user.as_str()).collect();
        self.delivered
            .retain(|user, _| current.contains(user.as_str()));
        self.read.retain(|user, _| current.contains(user.as_str()));
        self.senders
            .retain(|user, _| current.contains(user.as_str()));
    }

    /// How far `member` got, counting reading as having and joining as having everything
    /// sent before.
    fn reached(&self, member: &Member, status: ReceiptStatus) -> String {
        let mut reached = id_prefix_at(member.since_ms);
        if let Some(read) = self.read.get(&member.user) {
            raise(&mut reached, read);
        }
        if status == ReceiptStatus::Delivered
            && let Some(delivered) = self.delivered.get(&member.user)
        {
            raise(&mut reached, delivered);
        }
        reached
    }

    /// `member`'s status for message `id` ("sent", "delivered", "read"), for message info.
    pub fn status_of(&self, member: &Member, id: &str) -> &'static str {
        if self.reached(member, ReceiptStatus::Read).as_str() >= id {
            "read"
        } else if self.reached(member, ReceiptStatus::Delivered).as_str() >= id {
            "delivered"
        } else {
            "sent"
        }
    }

    /// The `all` receipts now due, given the group's members; each is remembered as sent.
    /// `by` names the member whose mark is being applied.
    pub fn due(&mut self, members: &[Member], by: &str) -> Vec<AllReceipt> {
        let mut receipts = Vec::new();
        for status in [ReceiptStatus::Delivered, ReceiptStatus::Read] {
            // How far each member got, lowest first: a sender's messages need everyone
            // but the sender, so the lowest member other than them decides.
            let mut reached: Vec<(String, &str)> = members
                .iter()
                .map(|m| (self.reached(m, status), m.user.as_str()))
                .collect();
            reached.sort_unstable();
            for (sender, ticks) in &mut self.senders {
                let everyone_else = reached
                    .iter()
                    .find(|(_, user)| *user != sender.as_str())
                    .map_or("\u{10FFFF}", |(id, _)| id.as_str());
                if let Some(id) = ticks.tell(status, everyone_else) {
                    receipts.push(AllReceipt {
                        to: sender.clone(),
                        by: by.to_owned(),
                        status,
                        id,
                    });
                }
            }
        }
        receipts
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatermarksError {
    #[error("receipts bucket unavailable: {0}")]
    Bucket(#[source] KvError),
    #[error("receipts store: {0}")]
    Store(#[source] KvError),
    #[error("stored receipt state of {0} is unreadable")]
    Corrupt(String),
    #[error("another worker changed the receipt state of {0} first")]
    Conflict(String),
}

/// The checkpoints of group receipt state, in the KV bucket `receipts`.
#[derive(Clone)]
pub struct Checkpoints {
    kv: kv::Store,
}

fn key(gid: &str) -> String {
    format!("g.{gid}")
}

impl Checkpoints {
    /// Opens the bucket, creating it on first use. A group's state is kept as long as the
    /// inbox keeps messages.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, WatermarksError> {
        let kv = open_bucket(
            js,
            kv::Config {
                bucket: BUCKET.to_owned(),
                description: "Natter group receipt watermarks".to_owned(),
                history: 1,
                max_age: INBOX_MAX_AGE,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(WatermarksError::Bucket)?;
        Ok(Self { kv })
    }

    /// A group's state and its revision (`None` before the first save).
    pub async fn load(&self, gid: &str) -> Result<(Option<u64>, GroupWatermarks), WatermarksError> {
        match read_latest(&self.kv, &key(gid))
            .await
            .map_err(WatermarksError::Store)?
        {
            Some((revision, bytes)) => {
                let state = serde_json::from_slice(&bytes)
                    .map_err(|_| WatermarksError::Corrupt(gid.to_owned()))?;
                Ok((Some(revision), state))
            }
            None => Ok((None, GroupWatermarks::default())),
        }
    }

    /// Saves `state` if the stored one is still at `revision`; the new revision.
    pub async fn save(
        &self,
        gid: &str,
        state: &GroupWatermarks,
        revision: Option<u64>,
    ) -> Result<u64, WatermarksError> {
        let value = serde_json::to_vec(state).expect("watermarks serialize");
        let conflict = || WatermarksError::Conflict(gid.to_owned());
        match revision {
            None => self.kv.create(key(gid), value.into()).await.map_err(|err| {
                if lost_race(err.kind() == CreateErrorKind::AlreadyExists, &err) {
                    conflict()
                } else {
                    WatermarksError::Store(KvError::new(format!("creating {gid}'s state"), err))
                }
            }),
            Some(revision) => self
                .kv
                .update(key(gid), value.into(), revision)
                .await
                .map_err(|err| {
                    if lost_race(err.kind() == UpdateErrorKind::WrongLastRevision, &err) {
                        conflict()
                    } else {
                        WatermarksError::Store(KvError::new(format!("saving {gid}'s state"), err))
                    }
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str) -> Member {
        Member {
            user: user.into(),
            since_ms: 0,
        }
    }

    fn delivered(by: &str, up_to: &str, senders: &[(&str, &str)]) -> GroupMark {
        GroupMark {
            group: "g".into(),
            by: by.into(),
            status: ReceiptStatus::Delivered,
            up_to: up_to.into(),
            senders: senders
                .iter()
                .map(|(from, id)| SenderMark {
                    from: (*from).into(),
                    id: (*id).into(),
                })
                .collect(),
        }
    }

    fn read(by: &str, up_to: &str) -> GroupMark {
        GroupMark {
            status: ReceiptStatus::Read,
            ..delivered(by, up_to, &[])
        }
    }

    #[test]
    fn all_comes_once_every_other_member_passed_the_message() {
        let members = [member("amy"), member("bob"), member("cat")];
        let mut g = GroupWatermarks::default();
        g.apply(&delivered("bob", "05", &[("amy", "05")]));
        assert_eq!(g.due(&members, "bob"), vec![], "cat has nothing yet");
        g.apply(&delivered("cat", "07", &[("amy", "05"), ("bob", "07")]));
        let due = g.due(&members, "cat");
        assert_eq!(
            due,
            vec![AllReceipt {
                to: "amy".into(),
                by: "cat".into(),
                status: ReceiptStatus::Delivered,
                id: "05".into()
            }],
            "bob's 07 still waits for amy"
        );
        assert_eq!(g.due(&members, "cat"), vec![], "told once");
        g.apply(&read("amy", "07"));
        g.apply(&read("bob", "07"));
        g.apply(&read("cat", "07"));
        let due = g.due(&members, "cat");
        assert!(due.contains(&AllReceipt {
            to: "bob".into(),
            by: "cat".into(),
            status: ReceiptStatus::Delivered,
            id: "07".into()
        }));
        assert!(due.contains(&AllReceipt {
            to: "amy".into(),
            by: "cat".into(),
            status: ReceiptStatus::Read,
            id: "05".into()
        }));
        assert_eq!(due.len(), 3, "amy was told delivered before: {due:?}");
        assert!(
            g.senders["amy"].waiting.is_empty(),
            "read by all: forgotten"
        );
    }

    #[test]
    fn a_member_who_joined_later_does_not_hold_back_older_messages() {
        let ms = 0x0190_0000_0000;
        let old = format!("{}-7000-8000-000000000000", id_prefix_at(ms - 10));
        let members = [
            member("amy"),
            member("bob"),
            Member {
                user: "new".into(),
                since_ms: ms,
            },
        ];
        let mut g = GroupWatermarks::default();
        g.apply(&delivered("bob", &old, &[("amy", &old)]));
        let due = g.due(&members, "bob");
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(
            g.status_of(&members[2], &old),
            "read",
            "joined after it: counts as having read it (listed nowhere: message info only lists members from before)"
        );
        assert_eq!(g.status_of(&members[1], &old), "delivered");
        assert_eq!(g.status_of(&members[0], &old), "sent");
    }

    #[test]
    fn those_who_left_are_forgotten() {
        let mut g = GroupWatermarks::default();
        g.apply(&delivered("bob", "05", &[("amy", "05")]));
        g.apply(&read("gone", "05"));
        g.apply(&delivered("gone", "06", &[("left", "06")]));
        g.keep_only(&[member("amy"), member("bob")]);
        assert_eq!(g.delivered.keys().collect::<Vec<_>>(), ["bob"]);
        assert!(g.read.is_empty());
        assert_eq!(g.senders.keys().collect::<Vec<_>>(), ["amy"]);
    }

    #[test]
    fn only_the_newest_waiting_messages_are_remembered() {
        let mut t = SenderTicks::default();
        for i in 0..20 {
            t.learn(&format!("{i:02}"));
        }
        assert_eq!(t.waiting.len(), MAX_WAITING);
        assert_eq!(t.waiting.first().map(String::as_str), Some("12"));
        assert_eq!(t.tell(ReceiptStatus::Read, "15").as_deref(), Some("15"));
        assert_eq!(t.waiting, ["16", "17", "18", "19"]);
        assert!(!t.learn("14"), "already read by everyone");
    }

    #[test]
    fn marks_and_merges_only_move_forward() {
        let mut a = GroupWatermarks::default();
        assert!(a.apply(&delivered("bob", "09", &[])));
        assert!(!a.apply(&delivered("bob", "03", &[])), "an older mark");
        let mut b = GroupWatermarks::default();
        b.apply(&delivered("bob", "04", &[("amy", "04")]));
        b.apply(&read("cat", "02"));
        a.merge(&b);
        assert_eq!(a.delivered["bob"], "09");
        assert_eq!(a.read["cat"], "02");
        assert_eq!(a.senders["amy"].waiting, ["04"]);
        assert_eq!(
            a.status_of(&member("cat"), "02"),
            "read",
            "read implies delivered"
        );
    }
}
