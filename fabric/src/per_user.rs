//! A KV bucket holding one small JSON value per user (block lists, settings), changed by
//! compare-and-set and read on hot paths, so a process may keep a copy of all of it in
//! memory ([`PerUser::watch`]: the bucket replayed, then followed).
//!
//! A process's own writes apply to its copy before they return; other processes see them
//! as their watch delivers them (milliseconds). Until the copy is complete, and whenever
//! the watch is broken, reads go to the bucket (the stream leader's copy), so nothing is
//! missed for want of a watch. A process that does not run the watch always reads.
//! Memory grows with the users who have a value (only they have a key).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use async_nats::jetstream::{
    self,
    kv::{self, Operation, UpdateErrorKind},
    stream::StorageType,
};
use futures_util::StreamExt;
use serde::{Serialize, de::DeserializeOwned};

use crate::buckets::{KvError, lost_race, open_bucket, read_latest};
use crate::retry;
use tokio_util::sync::CancellationToken;

const CAS_ATTEMPTS: usize = 20;

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError<E> {
    #[error(transparent)]
    Refused(E),
    #[error(transparent)]
    Store(#[from] KvError),
    #[error("too much contention on the value of {0}")]
    Contended(String),
}

type Copy<T> = HashMap<String, (u64, Arc<T>)>;

pub struct PerUser<T> {
    kv: kv::Store,
    copy: Arc<RwLock<Option<Copy<T>>>>,
}

impl<T> Clone for PerUser<T> {
    fn clone(&self) -> Self {
        Self {
            kv: self.kv.clone(),
            copy: self.copy.clone(),
        }
    }
}

impl<T> PerUser<T>
where
    T: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    /// Opens bucket `bucket` (R`replicas`, one value per key), creating it on first use.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        bucket: &str,
        description: &str,
    ) -> Result<Self, KvError> {
        let kv = open_bucket(
            js,
            kv::Config {
                bucket: bucket.to_owned(),
                description: description.to_owned(),
                history: 1,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self {
            kv,
            copy: Arc::default(),
        })
    }

    /// `user`'s value (the default when they have none).
    pub async fn get(&self, user: &str) -> Result<Arc<T>, KvError> {
        if let Some(copy) = self.copy.read().expect("copy lock").as_ref() {
            return Ok(copy.get(user).map(|(_, v)| v.clone()).unwrap_or_default());
        }
        Ok(Arc::new(
            self.entry(user).await?.map(|(_, v)| v).unwrap_or_default(),
        ))
    }

    /// Changes `user`'s value with `change` (which says whether it changed anything, or
    /// refuses), compare-and-set; the value after.
    pub async fn update<E>(
        &self,
        user: &str,
        mut change: impl FnMut(&mut T) -> Result<bool, E>,
    ) -> Result<Arc<T>, ChangeError<E>> {
        let mut waits = retry::after_lost_race();
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                // The last round was lost to another writer: they spread out before the next.
                retry::wait_next(&mut waits).await;
            }
            let (revision, mut value) = self
                .entry(user)
                .await
                .map_err(ChangeError::Store)?
                .unwrap_or_default();
            if !change(&mut value).map_err(ChangeError::Refused)? {
                return Ok(Arc::new(value));
            }
            let bytes = serde_json::to_vec(&value).expect("values serialize");
            let written = if revision == 0 {
                self.kv.create(user, bytes.into()).await.map_err(|e| {
                    let lost = lost_race(e.kind() == kv::CreateErrorKind::AlreadyExists, &e);
                    (
                        lost,
                        KvError::new(format!("creating {user} in {}", self.kv.name), e),
                    )
                })
            } else {
                self.kv
                    .update(user, bytes.into(), revision)
                    .await
                    .map_err(|e| {
                        let lost = lost_race(e.kind() == UpdateErrorKind::WrongLastRevision, &e);
                        (
                            lost,
                            KvError::new(format!("updating {user} in {}", self.kv.name), e),
                        )
                    })
            };
            match written {
                Ok(revision) => {
                    let value = Arc::new(value);
                    if let Some(copy) = self.copy.write().expect("copy lock").as_mut() {
                        apply(copy, user.to_owned(), revision, Some(value.clone()));
                    }
                    return Ok(value);
                }
                Err((true, _)) => continue,
                Err((false, err)) => return Err(ChangeError::Store(err)),
            }
        }
        Err(ChangeError::Contended(user.to_owned()))
    }

    /// Keeps this process's copy of every value current until `stop`: replays the
    /// bucket, then applies each change; made again after a jittered wait of about a
    /// second when the watch breaks (reads go to the bucket meanwhile).
    pub async fn watch(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ended = self.follow() => {
                    tracing::warn!(bucket = %self.kv.name, error = %ended, "bucket watch interrupted");
                }
            }
            *self.copy.write().expect("copy lock") = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry::before_rewatch()) => {}
            }
        }
    }

    /// Replays and follows the bucket; returns why it stopped.
    async fn follow(&self) -> String {
        let empty = match self.kv.status().await {
            Ok(status) => status.values() == 0,
            Err(err) => return err.to_string(),
        };
        let mut updates = match self.kv.watch_with_history("*").await {
            Ok(updates) => updates,
            Err(err) => return err.to_string(),
        };
        let mut replay: Option<Copy<T>> = Some(Copy::new());
        if empty {
            *self.copy.write().expect("copy lock") = replay.take();
        }
        while let Some(next) = updates.next().await {
            let entry = match next {
                Ok(entry) => entry,
                Err(err) => return err.to_string(),
            };
            let value = match entry.operation {
                Operation::Put => serde_json::from_slice(&entry.value).ok().map(Arc::new),
                Operation::Delete | Operation::Purge => None,
            };
            match replay.as_mut() {
                Some(copy) => {
                    apply(copy, entry.key, entry.revision, value);
                    if entry.delta == 0 {
                        *self.copy.write().expect("copy lock") = replay.take();
                    }
                }
                None => {
                    if let Some(copy) = self.copy.write().expect("copy lock").as_mut() {
                        apply(copy, entry.key, entry.revision, value);
                    }
                }
            }
        }
        "the watch ended".to_owned()
    }

    async fn entry(&self, user: &str) -> Result<Option<(u64, T)>, KvError> {
        let Some((revision, bytes)) = read_latest(&self.kv, user).await? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            KvError::new(format!("unreadable value of {user} in {}", self.kv.name), e)
        })?;
        Ok(Some((revision, value)))
    }
}

/// Puts `user`'s value at `revision` into `copy`, unless it holds a newer one already.
fn apply<T: Default>(copy: &mut Copy<T>, user: String, revision: u64, value: Option<Arc<T>>) {
    if copy.get(&user).is_some_and(|(held, _)| *held >= revision) {
        return;
    }
    copy.insert(user, (revision, value.unwrap_or_default()));
}
