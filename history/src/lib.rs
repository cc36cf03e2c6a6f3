//! Message history: the long-term record (the JetStream inbox is only the delivery queue).
//!
//! - [`store`]: the ordered key-value interface and its backends (embedded redb, TiKV).
//! - [`log`]: how messages are laid out as keys, writing them, paging them, retention.

pub mod log;
pub mod store;

pub use log::{Batch, History, Page, SenderMarks, ticks};
pub use store::{Durability, Embedded, OrderedStore, Store, StoreError, Tikv};
