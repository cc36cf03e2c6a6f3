//! Where each device's push notifications go, in the replicated KV bucket `devices`: one
//! key per user holding a map of device id → [`PushTarget`]. Written by the gateway
//! (`POST /v1/devices`) with compare-and-set, read by push workers.

use std::collections::BTreeMap;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::{
    buckets::KvError,
    per_user::{ChangeError, PerUser},
};

pub const BUCKET: &str = "devices";
/// Most devices remembered per user; registering one more forgets the least recently
/// registered.
pub const MAX_DEVICES: usize = 16;

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
    Bucket(#[source] KvError),
    #[error("devices bucket: {0}")]
    Store(#[source] KvError),
    #[error("too much contention on the devices of {0}")]
    Contended(String),
}

#[derive(Clone)]
pub struct Devices {
    targets: PerUser<BTreeMap<String, PushTarget>>,
}

impl Devices {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, DevicesError> {
        let description = "Natter push targets per user and device";
        let targets = PerUser::open(js, replicas, BUCKET, description)
            .await
            .map_err(DevicesError::Bucket)?;
        Ok(Self { targets })
    }

    /// The push targets of `user`'s devices.
    pub async fn of(&self, user: &str) -> Result<BTreeMap<String, PushTarget>, DevicesError> {
        let targets = self.targets.get(user).await.map_err(DevicesError::Store)?;
        Ok((*targets).clone())
    }

    /// Sets (or replaces) where `device`'s notifications go.
    pub async fn register(
        &self,
        user: &str,
        device: &str,
        target: PushTarget,
    ) -> Result<(), DevicesError> {
        let registered = self.targets.update(user, |map| {
            map.insert(device.to_owned(), target.clone());
            while map.len() > MAX_DEVICES {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, t)| t.updated)
                    .map(|(d, _)| d.clone())
                    .expect("not empty");
                map.remove(&oldest);
            }
            Ok::<_, std::convert::Infallible>(true)
        });
        match registered.await {
            Ok(_) => Ok(()),
            Err(ChangeError::Contended(user)) => Err(DevicesError::Contended(user)),
            Err(ChangeError::Store(err)) => Err(DevicesError::Store(err)),
            Err(ChangeError::Refused(never)) => match never {},
        }
    }
}
