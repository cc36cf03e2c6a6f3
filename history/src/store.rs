//! The ordered key-value interface history is written against, and the configured
//! backend: [`Embedded`] (redb, one file under the data dir: the single-machine default,
//! `crate::embedded`) or [`Tikv`] (a TiKV cluster through its PD endpoints, for more than
//! one machine, `crate::tikv`, behind the `tikv` cargo feature).
//!
//! Writes come in batches with a [`Durability`]. The values several writers fold into
//! (watermarks, a message's changes, chat-list positions) are merged with
//! [`OrderedStore::put_merging`], so writers sharing a store never undo each other.

use std::future::Future;

pub use crate::embedded::Embedded;
#[cfg(feature = "tikv")]
pub use crate::tikv::Tikv;

/// One key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A key's new value computed from its value at the time of writing (`None`: leave it).
pub type Merge = Box<dyn Fn(Option<&[u8]>) -> Option<Vec<u8>> + Send + Sync>;

/// The merge of a value that only moves forward (a watermark): `value` unless the key
/// holds it or a later one (byte order).
pub fn forward_to(value: Vec<u8>) -> Merge {
    Box::new(move |held| {
        held.is_none_or(|held| held < value.as_slice())
            .then(|| value.clone())
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("TiKV: {0}")]
    Tikv(String),
}

/// When a batch must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before `put_batch` returns.
    Now,
    /// With the next [`Durability::Now`] batch: visible to readers at once, lost with
    /// the process until then. History writes a batch this way at most a second before a
    /// durable one; the tail reader's checkpoint is in the same batches, so a crash
    /// replays from the last durable checkpoint and rewrites the same keys.
    Soon,
}

/// What history needs from a store: batched puts, point reads, bounded range scans in
/// either direction, and range deletes (retention).
pub trait OrderedStore: Send + Sync + 'static {
    /// Stores every entry, atomically where the backend can.
    fn put_batch(
        &self,
        entries: Vec<Entry>,
        durability: Durability,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Stores `entries` and applies each merge to its key's value at the time of writing,
    /// atomically per key against other writers of the store: writers that read the same
    /// inbox (every TiKV worker does) never undo each other, whatever their pace. In one
    /// write with `entries` where the backend can.
    fn put_merging(
        &self,
        entries: Vec<Entry>,
        merges: Vec<(Vec<u8>, Merge)>,
        durability: Durability,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The values of `keys`, in their order, read together (one read where the backend
    /// can: a batch of the tail reader reads a few keys per message).
    fn get_many(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, StoreError>> + Send;
    /// Entries with `start <= key < end`, ascending (descending when `reverse`), at most
    /// `limit`.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> impl Future<Output = Result<Vec<Entry>, StoreError>> + Send;
    /// Whether a batch is stored all or nothing (else a caller that must not record
    /// progress before the data stores them in two steps).
    fn atomic_batches(&self) -> bool {
        true
    }
    /// Removes each of `keys` (absent ones are no-ops), in one write where the backend
    /// can.
    fn delete_keys(
        &self,
        keys: Vec<Vec<u8>>,
        durability: Durability,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Removes every key with `start <= key < end`.
    fn delete_range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The configured backend.
#[derive(Clone)]
pub enum Store {
    Embedded(Embedded),
    #[cfg(feature = "tikv")]
    Tikv(Tikv),
}

impl OrderedStore for Store {
    async fn put_batch(
        &self,
        entries: Vec<Entry>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        match self {
            Self::Embedded(s) => s.put_batch(entries, durability).await,
            #[cfg(feature = "tikv")]
            Self::Tikv(s) => s.put_batch(entries, durability).await,
        }
    }
    async fn put_merging(
        &self,
        entries: Vec<Entry>,
        merges: Vec<(Vec<u8>, Merge)>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        match self {
            Self::Embedded(s) => s.put_merging(entries, merges, durability).await,
            #[cfg(feature = "tikv")]
            Self::Tikv(s) => s.put_merging(entries, merges, durability).await,
        }
    }
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Embedded(s) => s.get(key).await,
            #[cfg(feature = "tikv")]
            Self::Tikv(s) => s.get(key).await,
        }
    }
    async fn get_many(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        match self {
            Self::Embedded(s) => s.get_many(keys).await,
            #[cfg(feature = "tikv")]
            Self::Tikv(s) => s.get_many(keys).await,
        }
    }
    async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        match self {
            Self::Embedded(s) => s.scan(start, end, limit, reverse).await,
            #[cfg(feature = "tikv")]
            Self::Tikv(s) => s.scan(start, end, limit, reverse).await,
        }
    }
    async fn delete_keys(
        &self,
        keys: Vec<Vec<u8>>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        match self {
            Self::Embedded(s) => s.delete_keys(keys, durability).await,
            #[cfg(feature = "tikv")]
            Self::Tikv(s) => s.delete_keys(keys, durability).await,
        }
    }
    async fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<(), StoreError> {
        match self {
            Self::Embedded(s) => s.delete_range(start, end).await,
            #[cfg(feature = "tikv")]
            Self::Tikv(s) => s.delete_range(start, end).await,
        }
    }
    fn atomic_batches(&self) -> bool {
        match self {
            Self::Embedded(s) => s.atomic_batches(),
            #[cfg(feature = "tikv")]
            Self::Tikv(s) => s.atomic_batches(),
        }
    }
}
