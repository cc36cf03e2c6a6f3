//! The TiKV store, through the raw key-value API (no transactions: history writes are
//! idempotent puts of immutable messages, so last-writer-wins is exact; the values
//! several workers fold into are merged by compare-and-swap). Behind the `tikv` cargo
//! feature, which brings TiKV's gRPC client.

use std::sync::Arc;

use crate::store::{Durability, Entry, Merge, OrderedStore, StoreError};

fn tikv(err: impl std::fmt::Display) -> StoreError {
    StoreError::Tikv(err.to_string())
}

/// A TiKV cluster, through the raw key-value API.
///
/// Writes go through a client in TiKV's atomic mode, which compare-and-swap needs from
/// every writer of a key it swaps; that mode has no batch or range delete, so deletes use
/// a plain client. They touch chat-list `cr` entries (never merged) and, in retention,
/// the ranges of messages older than the cutoff, their merged `a/` changes among them: a
/// merge racing that delete may leave one such entry behind, which the next hourly sweep
/// removes. Every worker sharing a store must run this version (an older one wrote the
/// merged keys with plain puts).
#[derive(Clone)]
pub struct Tikv {
    client: Arc<tikv_client::RawClient>,
    atomic: Arc<tikv_client::RawClient>,
}

/// Most compare-and-swap rounds one merge makes before giving up: each lost round means
/// another writer changed the key in between, which a handful of workers cannot keep
/// doing for long.
const TIKV_MERGE_ROUNDS: usize = 64;

impl Tikv {
    /// Connects through the cluster's PD endpoints (`host:port`, all of them if possible).
    pub async fn connect(pd_endpoints: Vec<String>) -> Result<Self, StoreError> {
        let client = tikv_client::RawClient::new(pd_endpoints)
            .await
            .map_err(tikv)?;
        Ok(Self {
            atomic: Arc::new(client.with_atomic_for_cas()),
            client: Arc::new(client),
        })
    }
}

/// Most entries one TiKV raw scan returns (the server's own limit is 10,240).
const TIKV_SCAN_MAX: usize = 10_240;

impl OrderedStore for Tikv {
    /// A raw batch put spans regions: not all or nothing.
    fn atomic_batches(&self) -> bool {
        false
    }

    /// Every raw put is durable when it returns.
    async fn put_batch(&self, entries: Vec<Entry>, _: Durability) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let pairs = entries
            .into_iter()
            .map(|(key, value)| tikv_client::KvPair(key.into(), value));
        self.atomic.batch_put(pairs).await.map_err(tikv)
    }

    /// Puts the entries, then merges each key by compare-and-swap (several keys at once).
    async fn put_merging(
        &self,
        entries: Vec<Entry>,
        merges: Vec<(Vec<u8>, Merge)>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.put_batch(entries, durability).await?;
        let merged = merges.into_iter().map(|(key, merge)| async move {
            for _ in 0..TIKV_MERGE_ROUNDS {
                let held = self.atomic.get(key.clone()).await.map_err(tikv)?;
                let Some(value) = merge(held.as_deref()) else {
                    return Ok(());
                };
                let (_, swapped) = self
                    .atomic
                    .compare_and_swap(key.clone(), held, value)
                    .await
                    .map_err(tikv)?;
                if swapped {
                    return Ok(());
                }
            }
            Err(StoreError::Tikv(format!(
                "other writers changed a key through {TIKV_MERGE_ROUNDS} compare-and-swap rounds"
            )))
        });
        futures_util::future::try_join_all(merged).await?;
        Ok(())
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.client.get(key.to_vec()).await.map_err(tikv)
    }

    async fn get_many(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.client.batch_get(keys.clone()).await.map_err(tikv)?;
        let mut by_key: std::collections::HashMap<Vec<u8>, Vec<u8>> = found
            .into_iter()
            .map(|pair| (Vec::<u8>::from(pair.0), pair.1))
            .collect();
        Ok(keys.iter().map(|key| by_key.remove(key)).collect())
    }

    async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let range = start.to_vec()..end.to_vec();
        let limit = limit.min(TIKV_SCAN_MAX) as u32;
        let pairs = if reverse {
            self.client.scan_reverse(range, limit).await
        } else {
            self.client.scan(range, limit).await
        }
        .map_err(tikv)?;
        Ok(pairs
            .into_iter()
            .map(|pair| (Vec::<u8>::from(pair.0), pair.1))
            .collect())
    }

    /// Every raw delete is durable when it returns.
    async fn delete_keys(&self, keys: Vec<Vec<u8>>, _: Durability) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.client.batch_delete(keys).await.map_err(tikv)
    }

    async fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<(), StoreError> {
        if start >= end {
            return Ok(());
        }
        self.client
            .delete_range(start.to_vec()..end.to_vec())
            .await
            .map_err(tikv)
    }
}
