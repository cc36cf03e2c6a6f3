//! Messages deleted for everyone in the last hour, in the replicated KV bucket
//! `deletions`: one key per message id, written before the deletion is sent on.
//!
//! Why: history is what tells a gateway that a message was deleted, and history applies a
//! deletion a moment after it was stored (the tail reader, a group commit). In that moment
//! a member who already saw the deletion could still edit or react to the message, and the
//! change would reach every device after the tombstone. The gateway marks the message here
//! before storing the deletion and reads the mark (from the bucket's leader) before any
//! change, so "nothing changes a deleted message" holds from the moment `changed`
//! answers the deletion. Marks expire after [`KEPT`], long after history has caught up.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::StorageType};
use bytes::Bytes;

use crate::buckets::{KvError, open_bucket, read_latest};

pub const BUCKET: &str = "deletions";
/// How long a mark is kept: history applies a deletion within seconds, even after a
/// worker's failover.
pub const KEPT: Duration = Duration::from_secs(3_600);

#[derive(Debug, thiserror::Error)]
pub enum DeletionsError {
    #[error("cannot open the deletions bucket: {0}")]
    Bucket(#[source] KvError),
    #[error("deletions bucket: {0}")]
    Store(#[source] KvError),
}

#[derive(Clone)]
pub struct Deletions {
    kv: kv::Store,
}

impl Deletions {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, DeletionsError> {
        let config = kv::Config {
            bucket: BUCKET.to_owned(),
            description: "Natter: messages deleted for everyone in the last hour".to_owned(),
            history: 1,
            max_age: KEPT,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = open_bucket(js, config)
            .await
            .map_err(DeletionsError::Bucket)?;
        Ok(Self { kv })
    }

    /// Marks message `id` deleted; durable (replicated) once this returns.
    pub async fn mark(&self, id: &str) -> Result<(), DeletionsError> {
        self.kv
            .put(id, Bytes::new())
            .await
            .map(drop)
            .map_err(|e| DeletionsError::Store(KvError::new(format!("marking {id} deleted"), e)))
    }

    /// Whether message `id` was marked deleted in the last [`KEPT`].
    pub async fn marked(&self, id: &str) -> Result<bool, DeletionsError> {
        read_latest(&self.kv, id)
            .await
            .map(|found| found.is_some())
            .map_err(DeletionsError::Store)
    }
}
