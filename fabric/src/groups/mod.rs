//! Groups: metadata and membership, kept in the replicated KV bucket `groups` (R3 on the
//! local cluster, one key per group id, and one key per user listing their groups).
//!
//! Why a KV bucket and not the history store: membership is read on every group send (by
//! the gateway) and every group fanout, from every process, and must survive the loss of a
//! node; JetStream KV gives that with the cluster we already run, compare-and-set updates
//! (two admins changing a group at once cannot lose each other's change), and a watch that
//! keeps cached copies current.
//!
//! - here: [`Group`] holds the rules (who may add, remove, leave; the member limit;
//!   promoting a member when the last admin leaves) as plain functions;
//! - [`store`]: [`Groups`], the bucket with a bounded cache of the groups a process used;
//! - [`cache`]: that cache, kept current by a watch of changes;
//! - [`index`]: each user's groups (`member_of.<uid>`), so "do these two share a group"
//!   reads two keys instead of scanning every group.

mod cache;
mod index;
mod store;

use std::collections::BTreeMap;

use natter_schemas::{GroupEventItem, GroupEventKind, GroupInfo, ids::check_id};
use serde::{Deserialize, Serialize};

use crate::{buckets::KvError, records::GroupEventRecord};
pub use index::MAX_GROUPS_PER_USER;
pub use store::{DEFAULT_CACHED_MEMBERS, Groups};

pub const BUCKET: &str = "groups";
/// WhatsApp's limit, and the default of `limits.max_group_members`.
pub const DEFAULT_MAX_MEMBERS: usize = 1024;
/// Longest group name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// One group as stored under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// In the order they joined (the longest-standing member is promoted first).
    pub members: Vec<String>,
    pub admins: Vec<String>,
    /// When each member joined (milliseconds since the epoch): group receipts count a
    /// member only for messages sent after they joined. Groups stored before this field
    /// existed have none (joined at 0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub since: BTreeMap<String, u64>,
}

/// Why a group change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a member of this group")]
    NotMember,
    #[error("only admins may add or remove members")]
    NotAdmin,
    #[error("a group has at most {limit} members")]
    TooMany { limit: usize },
    #[error("a group name is 1 to {MAX_NAME_CHARS} characters")]
    BadName,
    #[error("{0}")]
    BadMember(String),
    #[error("{user} is in {limit} groups already")]
    InTooManyGroups { user: String, limit: usize },
}

/// A change that concerns members' inboxes: the item, and whose inboxes get it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub item: GroupEventItem,
    pub recipients: Vec<String>,
}

impl Change {
    /// The `MSGS` record that carries this change to the fanout workers.
    pub fn record(self) -> GroupEventRecord {
        GroupEventRecord {
            event_id: uuid::Uuid::now_v7().to_string(),
            item: self.item,
            recipients: self.recipients,
        }
    }
}

impl Group {
    /// A new group with `creator` as its admin and first member.
    pub fn create(
        id: String,
        name: &str,
        creator: &str,
        members: &[String],
        limit: usize,
        ts: u64,
    ) -> Result<(Self, Change), Refusal> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(Refusal::BadName);
        }
        let mut group = Self {
            id,
            name: name.to_owned(),
            members: vec![creator.to_owned()],
            admins: vec![creator.to_owned()],
            since: BTreeMap::from([(creator.to_owned(), ts)]),
        };
        group.join(members, limit, ts)?;
        let change = Change {
            item: group.event(GroupEventKind::Created, group.members.clone(), creator, ts),
            recipients: group.members.clone(),
        };
        Ok((group, change))
    }

    pub fn is_member(&self, uid: &str) -> bool {
        self.members.iter().any(|m| m == uid)
    }

    pub fn is_admin(&self, uid: &str) -> bool {
        self.admins.iter().any(|m| m == uid)
    }

    /// An admin adds members; those already in are ignored (`None`: nothing changed).
    pub fn add(
        &mut self,
        by: &str,
        members: &[String],
        limit: usize,
        ts: u64,
    ) -> Result<Option<Change>, Refusal> {
        self.require_admin(by)?;
        let added = self.join(members, limit, ts)?;
        if added.is_empty() {
            return Ok(None);
        }
        Ok(Some(Change {
            item: self.event(GroupEventKind::Added, added, by, ts),
            recipients: self.members.clone(),
        }))
    }

    /// An admin removes members; those not in are ignored. The removed members get the
    /// event too: it is the last item of this group their devices see.
    pub fn remove(
        &mut self,
        by: &str,
        members: &[String],
        ts: u64,
    ) -> Result<Option<Change>, Refusal> {
        self.require_admin(by)?;
        for member in members {
            check_id(member, "member").map_err(|e| Refusal::BadMember(e.to_string()))?;
        }
        let removed: Vec<String> = self
            .members
            .iter()
            .filter(|m| members.contains(m))
            .cloned()
            .collect();
        if removed.is_empty() {
            return Ok(None);
        }
        let mut recipients = self.members.clone();
        self.members.retain(|m| !removed.contains(m));
        self.admins.retain(|m| !removed.contains(m));
        self.since.retain(|m, _| !removed.contains(m));
        let mut item = self.event(GroupEventKind::Removed, removed, by, ts);
        item.admins = self.promote_if_leaderless();
        recipients.sort();
        recipients.dedup();
        Ok(Some(Change { item, recipients }))
    }

    /// A member leaves. When the last admin leaves, the longest-standing member becomes
    /// admin, so a group is never left without one.
    pub fn leave(&mut self, by: &str, ts: u64) -> Result<Change, Refusal> {
        if !self.is_member(by) {
            return Err(Refusal::NotMember);
        }
        let recipients = self.members.clone();
        self.members.retain(|m| m != by);
        self.admins.retain(|m| m != by);
        self.since.remove(by);
        let mut item = self.event(GroupEventKind::Left, vec![by.to_owned()], by, ts);
        item.admins = self.promote_if_leaderless();
        Ok(Change { item, recipients })
    }

    pub fn info(&self, reference: Option<String>) -> GroupInfo {
        GroupInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            members: self.members.clone(),
            admins: self.admins.clone(),
            r#ref: reference,
        }
    }

    fn require_admin(&self, by: &str) -> Result<(), Refusal> {
        if !self.is_member(by) {
            Err(Refusal::NotMember)
        } else if !self.is_admin(by) {
            Err(Refusal::NotAdmin)
        } else {
            Ok(())
        }
    }

    /// When `uid` joined (0 when not recorded).
    pub fn member_since(&self, uid: &str) -> u64 {
        self.since.get(uid).copied().unwrap_or(0)
    }

    /// Adds the members not in yet, checking ids and the limit first. Returns them.
    fn join(&mut self, members: &[String], limit: usize, ts: u64) -> Result<Vec<String>, Refusal> {
        let mut added: Vec<String> = Vec::new();
        for member in members {
            check_id(member, "member").map_err(|e| Refusal::BadMember(e.to_string()))?;
            if !self.is_member(member) && !added.contains(member) {
                added.push(member.clone());
            }
        }
        if self.members.len() + added.len() > limit {
            return Err(Refusal::TooMany { limit });
        }
        self.members.extend(added.iter().cloned());
        self.since.extend(added.iter().map(|m| (m.clone(), ts)));
        Ok(added)
    }

    fn promote_if_leaderless(&mut self) -> Option<Vec<String>> {
        if !self.admins.is_empty() {
            return None;
        }
        let first = self.members.first()?.clone();
        self.admins.push(first);
        Some(self.admins.clone())
    }

    fn event(
        &self,
        event: GroupEventKind,
        members: Vec<String>,
        by: &str,
        ts: u64,
    ) -> GroupEventItem {
        GroupEventItem {
            group: self.id.clone(),
            event,
            members,
            by: by.to_owned(),
            ts,
            name: Some(self.name.clone()),
            admins: (event == GroupEventKind::Created).then(|| self.admins.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    #[error("group bucket unavailable: {0}")]
    Bucket(#[source] KvError),
    #[error("group store: {0}")]
    Store(#[source] KvError),
    #[error("stored group {0} is unreadable")]
    Corrupt(String),
    #[error("group {0} kept changing under us; try again")]
    Contended(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// How often a compare-and-set update is retried when another writer got there first.
const CAS_ATTEMPTS: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn group() -> Group {
        Group::create(
            "g".into(),
            " Friends ",
            "amy",
            &ids(&["bob", "cat", "bob"]),
            10,
            1,
        )
        .unwrap()
        .0
    }

    #[test]
    fn the_creator_is_the_first_member_and_admin() {
        let (g, change) =
            Group::create("g".into(), "Friends", "amy", &ids(&["bob", "cat"]), 10, 1).unwrap();
        assert_eq!(g.name, "Friends");
        assert_eq!(g.members, ids(&["amy", "bob", "cat"]));
        assert_eq!(g.admins, ids(&["amy"]));
        assert_eq!(change.item.event, GroupEventKind::Created);
        assert_eq!(change.recipients, ids(&["amy", "bob", "cat"]));
        assert_eq!(
            group().members,
            ids(&["amy", "bob", "cat"]),
            "duplicates dropped"
        );
    }

    #[test]
    fn names_and_member_ids_are_checked() {
        assert_eq!(
            Group::create("g".into(), "  ", "amy", &[], 10, 1).unwrap_err(),
            Refusal::BadName
        );
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert!(Group::create("g".into(), &long, "amy", &[], 10, 1).is_err());
        assert!(matches!(
            Group::create("g".into(), "n", "amy", &ids(&["bad.id"]), 10, 1),
            Err(Refusal::BadMember(_))
        ));
    }

    #[test]
    fn the_member_limit_counts_the_creator() {
        let members: Vec<String> = (0..3).map(|i| format!("u{i}")).collect();
        assert_eq!(
            Group::create("g".into(), "n", "amy", &members, 3, 1).unwrap_err(),
            Refusal::TooMany { limit: 3 }
        );
        let mut g = Group::create("g".into(), "n", "amy", &members[..2], 3, 1)
            .unwrap()
            .0;
        assert_eq!(
            g.add("amy", &ids(&["dan"]), 3, 2).unwrap_err(),
            Refusal::TooMany { limit: 3 }
        );
        assert_eq!(g.add("amy", &ids(&["u0"]), 3, 2), Ok(None), "already in");
    }

    #[test]
    fn only_admins_add_and_remove() {
        let mut g = group();
        assert_eq!(g.add("bob", &ids(&["dan"]), 10, 2), Err(Refusal::NotAdmin));
        assert_eq!(g.remove("bob", &ids(&["cat"]), 2), Err(Refusal::NotAdmin));
        assert_eq!(g.add("eve", &ids(&["dan"]), 10, 2), Err(Refusal::NotMember));
        let added = g.add("amy", &ids(&["dan"]), 10, 2).unwrap().unwrap();
        assert_eq!(added.item.members, ids(&["dan"]));
        assert_eq!(added.recipients, ids(&["amy", "bob", "cat", "dan"]));
        let removed = g.remove("amy", &ids(&["cat", "zed"]), 3).unwrap().unwrap();
        assert_eq!(removed.item.members, ids(&["cat"]));
        assert!(
            removed.recipients.contains(&"cat".to_owned()),
            "the removed are told"
        );
        assert_eq!(g.members, ids(&["amy", "bob", "dan"]));
    }

    #[test]
    fn a_member_is_counted_from_when_they_joined() {
        let mut g = group();
        g.add("amy", &ids(&["dan"]), 10, 5).unwrap();
        assert_eq!((g.member_since("amy"), g.member_since("dan")), (1, 5));
        g.remove("amy", &ids(&["dan"]), 6).unwrap();
        g.leave("bob", 7).unwrap();
        assert_eq!(g.member_since("dan"), 0, "forgotten when removed");
        assert!(!g.since.contains_key("bob"), "forgotten when they leave");
        let old: Group =
            serde_json::from_str(r#"{"id":"g","name":"n","members":["a"],"admins":["a"]}"#)
                .unwrap();
        assert_eq!(
            old.member_since("a"),
            0,
            "groups stored before `since` existed"
        );
    }

    #[test]
    fn the_last_admin_leaving_promotes_the_longest_standing_member() {
        let mut g = group();
        let left = g.leave("amy", 2).unwrap();
        assert_eq!(left.item.event, GroupEventKind::Left);
        assert_eq!(left.recipients, ids(&["amy", "bob", "cat"]));
        assert_eq!(g.admins, ids(&["bob"]));
        assert_eq!(left.item.admins, Some(ids(&["bob"])));
        assert_eq!(g.leave("amy", 3), Err(Refusal::NotMember));
        g.leave("bob", 4).unwrap();
        g.leave("cat", 5).unwrap();
        assert!(g.members.is_empty() && g.admins.is_empty());
    }
}
