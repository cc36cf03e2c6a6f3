//! Where each device's push notifications go, in the replicated KV bucket `devices`: one
//! key per user holding a map of device id → [`PushTarget`]. Written by the gateway
//! (`POST /v1/devices`) with compare-and-set, read by push workers.

use std::collections::BTreeMap;

use async_nats::jetstream::{
    self,
    kv::{self, UpdateErrorKind},
    stream::StorageType,
};
use serde::{Deserialize, Serialize};

use crate::buckets::{lost_race, open_bucket, read_latest};

pub const BUCKET: &str = "devices";
/// Most devices remembered per user; registering one more forgets the least recently
/// registered.
pub const MAX_DEVICES: usize = 16;
const CAS_ATTEMPTS: usize = 20;

/// One device's push destination: the provider (`kind`) and its address for the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTarget {
    pub kind: String,
    pub token: String,
    /// When it was registered (ms since the epoch).
    pub updated: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("cannot open the devices bucket: {0}")]
    Bucket(String),
    #[error("devices bucket: {0}")]
    Store(String),
    #[error("too much contention on the devices of {0}")]
    Contended(String),
}

#[derive(Clone)]
pub struct Devices {
    kv: kv::Store,
}

impl Devices {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, DevicesError> {
        let kv = open_bucket(
            js,
            kv::Config {
                bucket: BUCKET.to_owned(),
                description: "Natter push targets per user and device".to_owned(),
                history: 1,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(DevicesError::Bucket)?;
        Ok(Self { kv })
    }

    /// The push targets of `user`'s devices.
    pub async fn of(&self, user: &str) -> Result<BTreeMap<String, PushTarget>, DevicesError> {
        Ok(self
            .entry(user)
            .await?
            .map(|(_, map)| map)
            .unwrap_or_default())
    }

    /// Sets (or replaces) where `device`'s notifications go.
    pub async fn register(
        &self,
        user: &str,
        device: &str,
        target: PushTarget,
    ) -> Result<(), DevicesError> {
        for _ in 0..CAS_ATTEMPTS {
            let (revision, mut map) = self.entry(user).await?.unwrap_or_default();
            map.insert(device.to_owned(), target.clone());
            while map.len() > MAX_DEVICES {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, t)| t.updated)
                    .map(|(d, _)| d.clone())
                    .expect("not empty");
                map.remove(&oldest);
            }
            let value = serde_json::to_vec(&map).expect("targets serialize");
            let written = if revision == 0 {
                self.kv.create(user, value.into()).await.map_err(|e| {
                    let lost = lost_race(e.kind() == kv::CreateErrorKind::AlreadyExists, &e);
                    (lost, e.to_string())
                })
            } else {
                self.kv
                    .update(user, value.into(), revision)
                    .await
                    .map_err(|e| {
                        let lost = lost_race(e.kind() == UpdateErrorKind::WrongLastRevision, &e);
                        (lost, e.to_string())
                    })
            };
            match written {
                Ok(_) => return Ok(()),
                Err((true, _)) => continue,
                Err((false, err)) => return Err(DevicesError::Store(err)),
            }
        }
        Err(DevicesError::Contended(user.to_owned()))
    }

    async fn entry(
        &self,
        user: &str,
    ) -> Result<Option<(u64, BTreeMap<String, PushTarget>)>, DevicesError> {
        let Some((revision, value)) = read_latest(&self.kv, user)
            .await
            .map_err(DevicesError::Store)?
        else {
            return Ok(None);
        };
        let map = serde_json::from_slice(&value)
            .map_err(|e| DevicesError::Store(format!("unreadable targets of {user}: {e}")))?;
        Ok(Some((revision, map)))
    }
}
