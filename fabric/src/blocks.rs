//! Who blocked whom, in the replicated KV bucket `blocks`: one key per user holding the
//! sorted list of the users they blocked. Written by the gateway (`block`, `unblock`) with
//! compare-and-set, read wherever a block must be honoured: a one-on-one send, typing,
//! presence, read receipts and group adds. The checks sit on the one-on-one send path, so
//! gateways keep every list in memory ([`Blocks::watch`], `crate::per_user`): a check is a
//! map lookup, not two reads per message.

use std::{collections::BTreeSet, sync::Arc};

use async_nats::jetstream;

use crate::{
    buckets::KvError,
    per_user::{ChangeError, PerUser},
};
use tokio_util::sync::CancellationToken;

pub const BUCKET: &str = "blocks";
/// Most users one user may block.
pub const MAX_BLOCKED: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error("cannot open the blocks bucket: {0}")]
    Bucket(#[source] KvError),
    #[error("blocks bucket: {0}")]
    Store(#[source] KvError),
    #[error("too much contention on the blocks of {0}")]
    Contended(String),
    #[error("a user may block at most {MAX_BLOCKED} users")]
    TooMany,
}

#[derive(Clone)]
pub struct Blocks {
    lists: PerUser<BTreeSet<String>>,
}

impl Blocks {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, BlocksError> {
        let description = "Natter: the users each user blocked";
        let lists = PerUser::open(js, replicas, BUCKET, description)
            .await
            .map_err(BlocksError::Bucket)?;
        Ok(Self { lists })
    }

    /// The users `user` blocked.
    pub async fn of(&self, user: &str) -> Result<Arc<BTreeSet<String>>, BlocksError> {
        self.lists.get(user).await.map_err(BlocksError::Store)
    }

    /// Whether `a` blocked `b` and whether `b` blocked `a`.
    pub async fn between(&self, a: &str, b: &str) -> Result<(bool, bool), BlocksError> {
        let (of_a, of_b) = tokio::try_join!(self.of(a), self.of(b))?;
        Ok((of_a.contains(b), of_b.contains(a)))
    }

    /// Whether either of `a` and `b` blocked the other.
    pub async fn either(&self, a: &str, b: &str) -> Result<bool, BlocksError> {
        let (a_blocked, b_blocked) = self.between(a, b).await?;
        Ok(a_blocked || b_blocked)
    }

    /// Adds (`block`) or removes `other` from the users `user` blocked; the list after.
    pub async fn set(
        &self,
        user: &str,
        other: &str,
        block: bool,
    ) -> Result<Arc<BTreeSet<String>>, BlocksError> {
        let changed = self.lists.update(user, |set| {
            let changed = if block {
                set.insert(other.to_owned())
            } else {
                set.remove(other)
            };
            if set.len() > MAX_BLOCKED {
                return Err(BlocksError::TooMany);
            }
            Ok(changed)
        });
        changed.await.map_err(|err| match err {
            ChangeError::Refused(refused) => refused,
            ChangeError::Store(err) => BlocksError::Store(err),
            ChangeError::Contended(user) => BlocksError::Contended(user),
        })
    }

    /// Keeps this process's copy of every list current until `stop`.
    pub async fn watch(self, stop: CancellationToken) {
        self.lists.watch(stop).await
    }
}
