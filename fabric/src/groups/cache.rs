//! The groups a process used lately, bounded by their total number of members, and kept
//! current by a watch of the bucket's changes.
//!
//! The watch delivers every change to every group, but only cached groups are kept: a
//! gateway no longer holds every group ever created. That leaves one race to close. A
//! group read from the bucket at revision `r` must not be cached if the watch already went
//! past a newer revision of it while it was not cached (the change was seen and dropped,
//! so the cache would keep the old members for good). The cache therefore remembers the
//! last [`IGNORED`] changes it dropped; a read is cached only when none of them is a newer
//! revision of that group and none that could be was forgotten since the read began.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use super::Group;

/// How many dropped changes are remembered (a read that overlaps more is not cached).
const IGNORED: usize = 4096;

struct Cached {
    revision: u64,
    group: Arc<Group>,
    /// When it was last used, on the cache's own clock.
    used: AtomicU64,
}

pub(super) struct Cache {
    groups: HashMap<Arc<str>, Cached>,
    /// Members of all cached groups together.
    members: usize,
    /// At most this many members are cached (a group larger than that is never cached).
    capacity: usize,
    clock: AtomicU64,
    /// The last revision the watch went past (0 before it started).
    watched: u64,
    /// Changes of groups that were not cached: (revision, group id).
    ignored: VecDeque<(u64, Arc<str>)>,
    /// The newest revision dropped from `ignored`, or below which the watch saw nothing.
    forgotten: u64,
    /// Whether a watch runs: without one, nothing is cached (it could not be kept current).
    watching: bool,
}

impl Cache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            groups: HashMap::new(),
            members: 0,
            capacity,
            clock: AtomicU64::new(0),
            watched: 0,
            ignored: VecDeque::new(),
            forgotten: 0,
            watching: false,
        }
    }

    /// The cached group and its revision; counts as a use.
    pub(super) fn get(&self, gid: &str) -> Option<(u64, Arc<Group>)> {
        let cached = self.groups.get(gid)?;
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        cached.used.store(now, Ordering::Relaxed);
        Some((cached.revision, cached.group.clone()))
    }

    /// The revision the watch has applied up to: pass it to [`Cache::read`] for a read
    /// that starts now.
    pub(super) fn watched(&self) -> u64 {
        self.watched
    }

    /// The watch starts (again) from `revision`: what was cached may have changed unseen.
    pub(super) fn restart(&mut self, revision: u64) {
        self.groups.clear();
        self.members = 0;
        self.ignored.clear();
        self.watched = revision.saturating_sub(1);
        self.forgotten = self.watched;
        self.watching = true;
    }

    /// The watch stopped: nothing cached can be trusted until it restarts.
    pub(super) fn stop(&mut self) {
        self.restart(self.watched + 1);
        self.watching = false;
    }

    /// A change the watch saw: `group` is `None` when the key was deleted or unreadable.
    pub(super) fn changed(&mut self, revision: u64, gid: &str, group: Option<Arc<Group>>) {
        self.watched = self.watched.max(revision);
        let newer = self.groups.get(gid).map(|c| c.revision < revision);
        match (newer, group) {
            (Some(true), Some(group)) => self.insert(revision, group),
            (Some(true), None) => self.remove(gid),
            (Some(false), _) => {}
            (None, _) => {
                if self.ignored.len() == IGNORED
                    && let Some((dropped, _)) = self.ignored.pop_front()
                {
                    self.forgotten = self.forgotten.max(dropped);
                }
                self.ignored.push_back((revision, Arc::from(gid)));
            }
        }
    }

    /// A group read from the bucket at `revision`, by a read that began when the watch
    /// had applied up to `watched` ([`Cache::watched`]).
    pub(super) fn read(&mut self, revision: u64, group: Arc<Group>, watched: u64) {
        if self
            .groups
            .get(group.id.as_str())
            .is_some_and(|c| c.revision >= revision)
        {
            return;
        }
        let seen_newer = self
            .ignored
            .iter()
            .any(|(r, gid)| *r > revision && **gid == *group.id);
        if !self.watching || seen_newer || self.forgotten > watched {
            return;
        }
        self.insert(revision, group);
    }

    fn insert(&mut self, revision: u64, group: Arc<Group>) {
        self.remove(&group.id);
        let size = group.members.len().max(1);
        if size > self.capacity {
            return;
        }
        if self.members + size > self.capacity {
            self.evict(self.capacity - size);
        }
        self.members += size;
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        self.groups.insert(
            Arc::from(group.id.as_str()),
            Cached {
                revision,
                group,
                used: AtomicU64::new(now),
            },
        );
    }

    fn remove(&mut self, gid: &str) {
        if let Some(old) = self.groups.remove(gid) {
            self.members -= old.group.members.len().max(1);
        }
    }

    /// Drops the least recently used groups until at most `room` members are left, and
    /// an eighth of the capacity more, so evictions are rare.
    fn evict(&mut self, room: usize) {
        let target = room.saturating_sub(self.capacity / 8);
        let mut by_use: Vec<(u64, Arc<str>)> = self
            .groups
            .iter()
            .map(|(gid, c)| (c.used.load(Ordering::Relaxed), gid.clone()))
            .collect();
        by_use.sort_unstable();
        for (_, gid) in by_use {
            if self.members <= target {
                break;
            }
            self.remove(&gid);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::{Cache, IGNORED};
    use crate::groups::Group;

    fn group(id: &str, members: &[&str]) -> Arc<Group> {
        Arc::new(Group {
            id: id.into(),
            name: id.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            admins: vec![members[0].to_string()],
            since: BTreeMap::new(),
        })
    }

    #[test]
    fn the_least_recently_used_groups_go_when_members_exceed_the_capacity() {
        let mut cache = Cache::new(16);
        cache.restart(1);
        cache.read(1, group("a", &["u1", "u2", "u3", "u4"]), 0);
        cache.read(2, group("b", &["u1", "u2", "u3", "u4"]), 0);
        cache.read(3, group("c", &["u1", "u2", "u3", "u4"]), 0);
        cache.read(4, group("d", &["u1", "u2", "u3", "u4"]), 0);
        assert!(cache.get("a").is_some(), "a used: b is now the oldest");
        cache.read(5, group("e", &["u1", "u2"]), 0);
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some() && cache.get("e").is_some());
        assert!(cache.members <= 16, "{}", cache.members);
        let huge: Vec<String> = (0..17).map(|i| format!("m{i}")).collect();
        let huge: Vec<&str> = huge.iter().map(String::as_str).collect();
        cache.read(6, group("huge", &huge), 0);
        assert!(cache.get("huge").is_none(), "larger than the whole cache");
    }

    #[test]
    fn watched_changes_keep_cached_groups_current_and_newer_reads_win() {
        let mut cache = Cache::new(100);
        cache.restart(10);
        let watched = cache.watched();
        cache.read(5, group("g", &["a", "b"]), watched);
        cache.changed(11, "g", Some(group("g", &["a"])));
        assert_eq!(cache.get("g").unwrap().1.members, ["a"]);
        cache.read(5, group("g", &["a", "b"]), cache.watched());
        assert_eq!(
            cache.get("g").unwrap().0,
            11,
            "an older read changes nothing"
        );
        cache.changed(12, "g", None);
        assert!(cache.get("g").is_none(), "deleted");
    }

    #[test]
    fn a_read_older_than_a_change_the_watch_dropped_is_not_cached() {
        let mut cache = Cache::new(100);
        cache.restart(1);
        let watched = cache.watched();
        // The read returned revision 3; the watch meanwhile saw revision 4 of the group,
        // uncached then, and dropped it.
        cache.changed(4, "g", Some(group("g", &["a"])));
        cache.read(3, group("g", &["a", "b"]), watched);
        assert!(
            cache.get("g").is_none(),
            "would keep b as a member for good"
        );
        cache.read(4, group("g", &["a"]), cache.watched());
        assert!(cache.get("g").is_some());
    }

    #[test]
    fn a_read_that_overlaps_forgotten_changes_is_not_cached() {
        let mut cache = Cache::new(100);
        cache.restart(1);
        let watched = cache.watched();
        for r in 0..=IGNORED as u64 {
            cache.changed(2 + r, &format!("other{r}"), None);
        }
        cache.read(1, group("g", &["a"]), watched);
        assert_eq!(cache.len(), 0, "a change of g may have been forgotten");
        cache.read(1, group("g", &["a"]), cache.watched());
        assert_eq!(cache.len(), 1, "a read begun after them is fine");
    }

    #[test]
    fn nothing_is_cached_without_a_watch_nor_read_from_before_it_restarted() {
        let mut cache = Cache::new(100);
        cache.read(7, group("g", &["a"]), 0);
        assert_eq!(cache.len(), 0, "not watching");
        cache.restart(10);
        let before = cache.watched();
        cache.stop();
        cache.read(7, group("g", &["a"]), before);
        assert_eq!(cache.len(), 0, "stopped");
        cache.restart(50);
        cache.read(7, group("g", &["a"]), before);
        assert_eq!(cache.len(), 0);
    }
}
