//! [`Groups`]: the `groups` bucket, with a bounded cache of the groups this process used
//! and each user's index of groups.

use std::{
    collections::BTreeSet,
    sync::{Arc, RwLock},
};

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
    stream::StorageType,
};
use futures_util::{StreamExt, TryStreamExt, stream};
use natter_schemas::ids::check_id;

use super::{BUCKET, CAS_ATTEMPTS, Group, GroupsError, Refusal, cache::Cache, index};
use crate::buckets::{KvError, lost_race, open_bucket, read_latest};
use tokio_util::sync::CancellationToken;

/// Members of cached groups a process holds at most by default (≈ 100 bytes each).
pub const DEFAULT_CACHED_MEMBERS: usize = 1 << 20;
/// Index entries written at once when a change adds or drops many members.
const INDEX_WRITES_AT_ONCE: usize = 32;

/// The `groups` bucket, with a cache of the groups this process used lately.
///
/// The cache only ever answers "yes, a member" quickly: anything else is read from the
/// bucket. A process that runs [`Groups::watch`] keeps cached groups current (so a removed
/// member stops passing within milliseconds); without the watch nothing is cached.
/// Entries carry their revision, so a slow read cannot overwrite a newer watched value.
#[derive(Clone)]
pub struct Groups {
    kv: kv::Store,
    cache: Arc<RwLock<Cache>>,
}

impl Groups {
    /// Opens the bucket, creating it on first use; at most `cached_members` members of
    /// cached groups are kept.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        cached_members: usize,
    ) -> Result<Self, GroupsError> {
        let kv = open_bucket(
            js,
            kv::Config {
                bucket: BUCKET.to_owned(),
                description: "Natter group metadata and membership".to_owned(),
                history: 1,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(GroupsError::Bucket)?;
        Ok(Self {
            kv,
            cache: Arc::new(RwLock::new(Cache::new(cached_members))),
        })
    }

    /// The group as stored now (not from the cache).
    pub async fn get(&self, gid: &str) -> Result<Option<Arc<Group>>, GroupsError> {
        Ok(self.entry(gid).await?.map(|(_, group)| group))
    }

    /// Whether `uid` is a member of `gid`: from the cache when it says so, else from the
    /// bucket.
    pub async fn is_member(&self, gid: &str, uid: &str) -> Result<bool, GroupsError> {
        if let Some(group) = self.cached(gid)
            && group.is_member(uid)
        {
            return Ok(true);
        }
        Ok(self
            .entry(gid)
            .await?
            .is_some_and(|(_, group)| group.is_member(uid)))
    }

    /// The groups `uid` may be in, as their index lists them (a superset: pass it to
    /// [`Groups::share_a_group`], which checks).
    pub async fn groups_of(&self, uid: &str) -> Result<BTreeSet<String>, GroupsError> {
        index::groups_of(&self.kv, uid).await
    }

    /// Whether `a`, whose index listed `of_a` ([`Groups::groups_of`]), and `b` are members
    /// of one group: each group both indexes list is checked (from the cache when it says
    /// so, else from the bucket).
    pub async fn share_a_group(
        &self,
        a: &str,
        of_a: &BTreeSet<String>,
        b: &str,
    ) -> Result<bool, GroupsError> {
        let of_b = index::groups_of(&self.kv, b).await?;
        for gid in of_a.intersection(&of_b) {
            if self.is_member(gid, a).await? && self.is_member(gid, b).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// How many members `gid` has, if it is cached.
    pub fn cached_size(&self, gid: &str) -> Option<usize> {
        self.cached(gid).map(|group| group.members.len())
    }

    /// Stores a new group (its id is fresh, so it cannot exist yet), its members listed in
    /// their indexes first.
    pub async fn create(&self, group: &Group) -> Result<(), GroupsError> {
        let members: Vec<&String> = group.members.iter().collect();
        self.list(&group.id, &members).await?;
        let value = serde_json::to_vec(group).expect("groups serialize");
        self.kv.create(&group.id, value.into()).await.map_err(|e| {
            GroupsError::Store(KvError::new(format!("creating group {}", group.id), e))
        })?;
        Ok(())
    }

    /// Applies `change` to the stored group with compare-and-set, retrying when another
    /// writer changed it in between. A change the rules refuse is refused before anything
    /// is written; members it adds are listed in their indexes before the group is
    /// stored, members it drops unlisted after.
    pub async fn update<T>(
        &self,
        gid: &str,
        mut change: impl FnMut(&mut Group) -> Result<T, Refusal>,
    ) -> Result<(Group, T), GroupsError> {
        let Some((_, current)) = self.entry(gid).await? else {
            return Err(Refusal::NotMember.into());
        };
        let mut planned = (*current).clone();
        change(&mut planned)?;
        let joining = newcomers(&current, &planned);
        self.list(gid, &joining.iter().collect::<Vec<_>>()).await?;
        let (before, after, outcome) = self.compare_and_set(gid, change).await?;
        let joined = newcomers(&before, &after);
        self.list(gid, &joined.iter().collect::<Vec<_>>()).await?;
        let mut gone = newcomers(&after, &before);
        gone.extend(joining.into_iter().filter(|uid| !after.is_member(uid)));
        self.unlist(gid, &gone.iter().collect::<Vec<_>>()).await?;
        Ok((after, outcome))
    }

    /// The compare-and-set loop of [`Groups::update`]: the group before and after, and
    /// what `change` said.
    async fn compare_and_set<T>(
        &self,
        gid: &str,
        mut change: impl FnMut(&mut Group) -> Result<T, Refusal>,
    ) -> Result<(Arc<Group>, Group, T), GroupsError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((revision, stored)) = self.entry(gid).await? else {
                return Err(Refusal::NotMember.into());
            };
            let mut group = (*stored).clone();
            let outcome = change(&mut group)?;
            if group == *stored {
                return Ok((stored, group, outcome));
            }
            let value = serde_json::to_vec(&group).expect("groups serialize");
            let watched = self.watched();
            match self.kv.update(gid, value.into(), revision).await {
                Ok(revision) => {
                    self.remember(revision, Arc::new(group.clone()), watched);
                    return Ok((stored, group, outcome));
                }
                Err(err)
                    if lost_race(err.kind() == kv::UpdateErrorKind::WrongLastRevision, &err) =>
                {
                    continue;
                }
                Err(err) => {
                    let what = format!("updating group {gid}");
                    return Err(GroupsError::Store(KvError::new(what, err)));
                }
            }
        }
        Err(GroupsError::Contended(gid.to_owned()))
    }

    /// Lists `gid` in each of `users`' indexes.
    async fn list(&self, gid: &str, users: &[&String]) -> Result<(), GroupsError> {
        let writes = users.iter().map(|uid| index::list(&self.kv, uid, gid));
        at_most_some_at_once(writes.collect()).await
    }

    /// Takes `gid` out of each of `users`' indexes, unless the group has them.
    async fn unlist(&self, gid: &str, users: &[&String]) -> Result<(), GroupsError> {
        let writes = users.iter().map(|uid| index::unlist(&self.kv, uid, gid));
        at_most_some_at_once(writes.collect()).await
    }

    /// Keeps cached groups current until `stop`: from the bucket's next revision (no
    /// replay of the groups stored so far), re-watching after an interruption.
    pub async fn watch(self, stop: CancellationToken) {
        loop {
            match self.watch_from_now().await {
                Ok(mut updates) => loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        next = updates.next() => match next {
                            Some(Ok(entry)) => self.apply(entry),
                            Some(Err(err)) => {
                                tracing::warn!(error = %err, "group watch interrupted");
                                break;
                            }
                            None => break,
                        },
                    }
                },
                Err(err) => tracing::warn!(error = %err, "cannot watch groups"),
            }
            // Whatever changes while not watching is unknown: cache nothing meanwhile.
            self.cache.write().expect("cache lock").stop();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(crate::retry::before_rewatch()) => {}
            }
        }
    }

    /// A watch of the groups (not the indexes) from the bucket's next revision.
    async fn watch_from_now(&self) -> Result<kv::Watch, KvError> {
        let info = self.kv.stream.get_info().await;
        let info = info.map_err(|e| KvError::new("reading the groups bucket's state", e))?;
        let next = info.state.last_sequence + 1;
        let updates = self
            .kv
            .watch_from_revision("*", next)
            .await
            .map_err(|e| KvError::new("watching the groups bucket", e))?;
        self.cache.write().expect("cache lock").restart(next);
        Ok(updates)
    }

    fn apply(&self, entry: kv::Entry) {
        let group = match entry.operation {
            Operation::Put => serde_json::from_slice::<Group>(&entry.value)
                .ok()
                .map(Arc::new),
            Operation::Delete | Operation::Purge => None,
        };
        let mut cache = self.cache.write().expect("cache lock");
        cache.changed(entry.revision, &entry.key, group);
    }

    fn cached(&self, gid: &str) -> Option<Arc<Group>> {
        let cache = self.cache.read().expect("cache lock");
        cache.get(gid).map(|(_, group)| group)
    }

    /// The revision the watch has applied up to, taken before a read or a write.
    fn watched(&self) -> u64 {
        self.cache.read().expect("cache lock").watched()
    }

    /// Caches a group read (or written) at `revision` by a request that began when the
    /// watch had applied up to `watched`.
    fn remember(&self, revision: u64, group: Arc<Group>, watched: u64) {
        let mut cache = self.cache.write().expect("cache lock");
        cache.read(revision, group, watched);
    }

    async fn entry(&self, gid: &str) -> Result<Option<(u64, Arc<Group>)>, GroupsError> {
        check_id(gid, "group id").map_err(|_| Refusal::NotMember)?;
        let watched = self.watched();
        let Some((revision, value)) = read_latest(&self.kv, gid)
            .await
            .map_err(GroupsError::Store)?
        else {
            return Ok(None);
        };
        let group: Group =
            serde_json::from_slice(&value).map_err(|_| GroupsError::Corrupt(gid.into()))?;
        let group = Arc::new(group);
        self.remember(revision, group.clone(), watched);
        Ok(Some((revision, group)))
    }
}

/// Runs index writes, [`INDEX_WRITES_AT_ONCE`] at a time; the first failure ends it.
async fn at_most_some_at_once(
    writes: Vec<impl Future<Output = Result<(), GroupsError>>>,
) -> Result<(), GroupsError> {
    stream::iter(writes)
        .buffer_unordered(INDEX_WRITES_AT_ONCE)
        .try_collect()
        .await
}

/// Members of `after` who are not in `before`.
fn newcomers(before: &Group, after: &Group) -> BTreeSet<String> {
    after
        .members
        .iter()
        .filter(|uid| !before.is_member(uid))
        .cloned()
        .collect()
}
