//! Each user's groups, under `member_of.<uid>` in the groups bucket (a sorted list of
//! group ids), so "do these two share a group" reads two keys and never scans the bucket.
//!
//! The index is a superset of the truth, never less: a user is listed in a group before
//! the group stores them as a member (and again after, in case a concurrent removal took
//! the entry away in between), and unlisted only after the group dropped them, and only
//! if the group, read again, still does not have them (under compare-and-set, so a
//! concurrent add is not undone). Readers check each listed group, so a stale entry (a
//! gateway died between the two writes, say) costs a read and changes no answer.

use std::collections::BTreeSet;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::{CAS_ATTEMPTS, Group, GroupsError, Refusal};
use crate::buckets::{KvError, lost_race, read_latest};

/// The most groups one user may be in: bounds the index entry (≈ 35 bytes a group).
pub const MAX_GROUPS_PER_USER: usize = 8192;

fn key(uid: &str) -> String {
    format!("member_of.{uid}")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MemberOf {
    groups: BTreeSet<String>,
}

/// `uid`'s entry and its revision (0: none yet).
async fn entry(kv: &kv::Store, uid: &str) -> Result<(u64, MemberOf), GroupsError> {
    match read_latest(kv, &key(uid))
        .await
        .map_err(GroupsError::Store)?
    {
        Some((revision, value)) => {
            let of = serde_json::from_slice(&value).map_err(|_| GroupsError::Corrupt(key(uid)))?;
            Ok((revision, of))
        }
        None => Ok((0, MemberOf::default())),
    }
}

/// The groups `uid` may be in (a superset: check each).
pub(super) async fn groups_of(kv: &kv::Store, uid: &str) -> Result<BTreeSet<String>, GroupsError> {
    Ok(entry(kv, uid).await?.1.groups)
}

/// Writes `of` as `uid`'s entry if it is still at `revision`; `false` when another writer
/// got there first.
async fn store(
    kv: &kv::Store,
    uid: &str,
    revision: u64,
    of: &MemberOf,
) -> Result<bool, GroupsError> {
    let value = serde_json::to_vec(of).expect("index serializes").into();
    let outcome = if revision == 0 {
        kv.create(key(uid), value).await.map(|_| ()).map_err(|err| {
            let raced = err.kind() == kv::CreateErrorKind::AlreadyExists;
            (
                lost_race(raced, &err),
                KvError::new(format!("listing {uid}'s groups"), err),
            )
        })
    } else {
        kv.update(key(uid), value, revision)
            .await
            .map(|_| ())
            .map_err(|err| {
                let raced = err.kind() == kv::UpdateErrorKind::WrongLastRevision;
                let what = format!("updating {uid}'s groups");
                (lost_race(raced, &err), KvError::new(what, err))
            })
    };
    match outcome {
        Ok(()) => Ok(true),
        Err((true, _)) => Ok(false),
        Err((false, err)) => Err(GroupsError::Store(err)),
    }
}

/// Lists `gid` among `uid`'s groups. Always writes, even when it is listed already: the
/// new revision makes a concurrent [`unlist`] that read the entry before start over.
pub(super) async fn list(kv: &kv::Store, uid: &str, gid: &str) -> Result<(), GroupsError> {
    let mut waits = crate::retry::after_lost_race();
    for attempt in 0..CAS_ATTEMPTS {
        if attempt > 0 {
            // Writers racing for one user's entry (many groups adding them at once) spread
            // out instead of colliding again.
            crate::retry::wait_next(&mut waits).await;
        }
        let (revision, mut of) = entry(kv, uid).await?;
        if of.groups.insert(gid.to_owned()) && of.groups.len() > MAX_GROUPS_PER_USER {
            return Err(Refusal::InTooManyGroups {
                user: uid.to_owned(),
                limit: MAX_GROUPS_PER_USER,
            }
            .into());
        }
        if store(kv, uid, revision, &of).await? {
            return Ok(());
        }
    }
    Err(GroupsError::Contended(key(uid)))
}

/// Takes `gid` out of `uid`'s groups unless the group, as stored now, has them.
pub(super) async fn unlist(kv: &kv::Store, uid: &str, gid: &str) -> Result<(), GroupsError> {
    let mut waits = crate::retry::after_lost_race();
    for attempt in 0..CAS_ATTEMPTS {
        if attempt > 0 {
            // Writers racing for one user's entry (many groups adding them at once) spread
            // out instead of colliding again.
            crate::retry::wait_next(&mut waits).await;
        }
        let (revision, mut of) = entry(kv, uid).await?;
        if !of.groups.contains(gid) {
            return Ok(());
        }
        let group = read_latest(kv, gid).await.map_err(GroupsError::Store)?;
        let member = group
            .and_then(|(_, value)| serde_json::from_slice::<Group>(&value).ok())
            .is_some_and(|group| group.is_member(uid));
        if member {
            return Ok(());
        }
        of.groups.remove(gid);
        if store(kv, uid, revision, &of).await? {
            return Ok(());
        }
    }
    Err(GroupsError::Contended(key(uid)))
}
