//! The embedded store: redb in one file.
//!
//! Why redb: one file, pure Rust, ACID transactions with a durable commit per batch, and
//! ordered range scans in both directions, which is all history needs; fjall (an LSM
//! tree) would write faster but brings compaction threads and a directory of files for
//! no gain at one machine's message rates. A batch marked [`Durability::Soon`] commits
//! without an fsync (redb's `Durability::None`), so a steady stream of small batches costs
//! one fsync a second instead of one each.

use std::{path::Path, sync::Arc};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::store::{Durability, Entry, Merge, OrderedStore, StoreError};

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

    /// One write transaction on the history table, committed with `durability`.
    async fn write(
        &self,
        durability: Durability,
        change: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let mut tx = db.begin_write().map_err(embedded)?;
            if durability == Durability::Soon {
                tx.set_durability(redb::Durability::None)
                    .map_err(embedded)?;
            }
            change(&mut tx.open_table(TABLE).map_err(embedded)?)?;
            tx.commit().map_err(embedded)
        })
        .await
    }
}

impl OrderedStore for Embedded {
    async fn put_batch(
        &self,
        entries: Vec<Entry>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.put_merging(entries, Vec::new(), durability).await
    }

    /// Merges read and write in the one write transaction (redb has one writer at a time).
    async fn put_merging(
        &self,
        entries: Vec<Entry>,
        merges: Vec<(Vec<u8>, Merge)>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.write(durability, move |table| {
            for (key, value) in &entries {
                table
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(embedded)?;
            }
            for (key, merge) in &merges {
                let held = table.get(key.as_slice()).map_err(embedded)?;
                let merged = merge(held.as_ref().map(|v| v.value()));
                drop(held);
                if let Some(value) = merged {
                    table
                        .insert(key.as_slice(), value.as_slice())
                        .map_err(embedded)?;
                }
            }
            Ok(())
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

    async fn get_many(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(embedded)?;
            let table = tx.open_table(TABLE).map_err(embedded)?;
            keys.iter()
                .map(|key| {
                    let value = table.get(key.as_slice()).map_err(embedded)?;
                    Ok(value.map(|v| v.value().to_vec()))
                })
                .collect()
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

    async fn delete_keys(
        &self,
        keys: Vec<Vec<u8>>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(durability, move |table| {
            for key in &keys {
                table.remove(key.as_slice()).map_err(embedded)?;
            }
            Ok(())
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
