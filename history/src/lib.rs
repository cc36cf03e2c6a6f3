//! Message history: the long-term record (the JetStream inbox is only the delivery queue).
//!
//! - [`store`]: the ordered key-value interface and the configured backend: embedded
//!   redb, or TiKV (cargo feature `tikv`, on by default).
//! - [`changes`]: edits, deletions and reactions, kept beside the messages they change.
//! - [`conversations`]: each user's chat list, by recency.
//! - [`log`]: how messages are laid out as keys, writing them, paging them, retention.

pub mod changes;
pub mod conversations;
mod embedded;
pub mod log;
pub mod store;
#[cfg(feature = "tikv")]
mod tikv;

pub use changes::Changes;
pub use log::{Batch, History, Page, SenderMarks, ticks};
#[cfg(feature = "tikv")]
pub use store::Tikv;
pub use store::{Durability, Embedded, OrderedStore, Store, StoreError};
