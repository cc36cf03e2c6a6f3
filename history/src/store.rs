//! The ordered key-value interface history is written against, and its two backends:
//! [`Embedded`] (redb, one file under the data dir: the single-machine default) and
//! [`Tikv`] (a TiKV cluster through its PD endpoints, for more than one machine).
//!
//! Why redb for the embedded store: one file, pure Rust, ACID transactions with a durable
//! commit per batch, and ordered range scans in both directions, which is all history
//! needs; fjall (an LSM tree) would write faster but brings compaction threads and a
//! directory of files for no gain at one machine's message rates.
//!
//! Writes come in batches with a [`Durability`]: the embedded store commits a batch marked
//! `Soon` without an fsync (redb's `Durability::None`), so a steady stream of small
//! batches costs one fsync a second instead of one each.
//!
//! The TiKV backend uses the raw API (no transactions: history writes are idempotent puts
//! of immutable messages, so last-writer-wins is exact).

use std::{future::Future, path::Path, sync::Arc};

use redb::{ReadableDatabase, TableDefinition};

/// One key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

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
            Self::Tikv(s) => s.put_batch(entries, durability).await,
        }
    }
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Embedded(s) => s.get(key).await,
            Self::Tikv(s) => s.get(key).await,
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
            Self::Tikv(s) => s.scan(start, end, limit, reverse).await,
        }
    }
    async fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<(), StoreError> {
        match self {
            Self::Embedded(s) => s.delete_range(start, end).await,
            Self::Tikv(s) => s.delete_range(start, end).await,
        }
    }
    fn atomic_batches(&self) -> bool {
        match self {
            Self::Embedded(s) => s.atomic_batches(),
            Self::Tikv(s) => s.atomic_batches(),
        }
    }
}

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");

fn embedded(err: impl std::fmt::Display) -> StoreError {
    StoreError::Embedded(err.to_string())
}

/// redb in one file. Calls run on the blocking pool; redb serializes writers itself.
#[derive(Clone)]
pub struct Embedded {
    db: Arc<redb::Database>,
}

impl Embedded {
    /// Opens (or creates) the store in `dir/history.redb`. One process at a time: a second
    /// opener gets an error, not a corrupted file.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(embedded)?;
        let db = redb::Database::create(dir.join("history.redb")).map_err(embedded)?;
        let tx = db.begin_write().map_err(embedded)?;
        tx.open_table(TABLE).map_err(embedded)?;
        tx.commit().map_err(embedded)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(embedded)?
    }
}

impl OrderedStore for Embedded {
    async fn put_batch(
        &self,
        entries: Vec<Entry>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let mut tx = db.begin_write().map_err(embedded)?;
            if durability == Durability::Soon {
                tx.set_durability(redb::Durability::None)
                    .map_err(embedded)?;
            }
            {
                let mut table = tx.open_table(TABLE).map_err(embedded)?;
                for (key, value) in &entries {
                    table
                        .insert(key.as_slice(), value.as_slice())
                        .map_err(embedded)?;
                }
            }
            tx.commit().map_err(embedded)
        })
        .await
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(embedded)?;
            let table = tx.open_table(TABLE).map_err(embedded)?;
            Ok(table
                .get(key.as_slice())
                .map_err(embedded)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let (start, end) = (start.to_vec(), end.to_vec());
        self.blocking(move |db| {
            if start >= end {
                return Ok(Vec::new());
            }
            let tx = db.begin_read().map_err(embedded)?;
            let table = tx.open_table(TABLE).map_err(embedded)?;
            let range = table
                .range(start.as_slice()..end.as_slice())
                .map_err(embedded)?;
            let owned = |(key, value): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>)| {
                (key.value().to_vec(), value.value().to_vec())
            };
            let mut entries = Vec::new();
            if reverse {
                for item in range.rev().take(limit) {
                    entries.push(owned(item.map_err(embedded)?));
                }
            } else {
                for item in range.take(limit) {
                    entries.push(owned(item.map_err(embedded)?));
                }
            }
            Ok(entries)
        })
        .await
    }

    async fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<(), StoreError> {
        let (start, end) = (start.to_vec(), end.to_vec());
        self.blocking(move |db| {
            if start >= end {
                return Ok(());
            }
            let tx = db.begin_write().map_err(embedded)?;
            {
                let mut table = tx.open_table(TABLE).map_err(embedded)?;
                table
                    .retain_in(start.as_slice()..end.as_slice(), |_, _| false)
                    .map_err(embedded)?;
            }
            tx.commit().map_err(embedded)
        })
        .await
    }
}

fn tikv(err: impl std::fmt::Display) -> StoreError {
    StoreError::Tikv(err.to_string())
}

/// A TiKV cluster, through the raw key-value API.
#[derive(Clone)]
pub struct Tikv {
    client: Arc<tikv_client::RawClient>,
}

impl Tikv {
    /// Connects through the cluster's PD endpoints (`host:port`, all of them if possible).
    pub async fn connect(pd_endpoints: Vec<String>) -> Result<Self, StoreError> {
        let client = tikv_client::RawClient::new(pd_endpoints)
            .await
            .map_err(tikv)?;
        Ok(Self {
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
        self.client.batch_put(pairs).await.map_err(tikv)
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.client.get(key.to_vec()).await.map_err(tikv)
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
