//! Natter's NATS layout, shared by the gateway and the workers.
//!
//! - [`subjects`]: every subject name, built only from validated ids.
//! - [`streams`]: the JetStream streams (`MSGS`, `INBOX`, `RCPT`) and their settings,
//!   created idempotently by whichever process starts first.
//! - [`records`]: what the gateway writes to `MSGS`, and its requests to history workers.
//! - [`publish`]: publishing that survives a stream leader election.
//! - [`groups`]: group membership in the `groups` KV bucket, with its rules.
//! - [`watermarks`]: group receipts: members' delivered/read watermarks, checkpointed.
//! - [`devices`]: where each device's push notifications go.
//! - [`media`]: uploaded files (object store `media`) and who may fetch them.
//! - [`inbox`]: reading a user's inbox by direct get (catch-up, gap repair, receipts).
//! - [`connect`]: one NATS connection with the options every process needs.
//! - [`telemetry`]: the Prometheus exporter every process runs.
//! - [`process`]: logging set-up and the shutdown signal of every binary.

pub mod blocks;
mod buckets;
pub mod connect;
pub mod dead;
pub mod deletions;
pub mod devices;
pub mod groups;
pub mod inbox;
pub mod media;
pub mod per_user;
pub mod process;
pub mod publish;
pub mod records;
pub mod retry;
pub mod settings;
pub mod streams;
pub mod subjects;
pub mod telemetry;
pub mod watermarks;

pub use buckets::KvError;
pub use connect::{ConnectFailed, NatsSettings, connect};
pub use inbox::{Inbox, InboxError, StoredItem};
pub use publish::{PublishFailed, publish_durable, publish_durable_with};

/// Header on a one-on-one message stored only in its sender's inbox because the recipient
/// blocked the sender: names the recipient, so history keeps the message out of their
/// pages. Headers never reach clients.
pub const WITHHELD: &str = "Natter-Withheld";

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
