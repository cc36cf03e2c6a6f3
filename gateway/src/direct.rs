//! One-on-one messages, stored by the gateway straight into both inboxes.
//!
//! A one-on-one message needs two durable copies: the recipient's inbox item and the
//! sender's (for their other devices). Going through `MSGS` and a fanout worker cost a
//! third stored write and a replicated consumer delivery and ack per message, in series
//! (../shared/NATS-NOTES.md: each R3 explicit-ack delivery is a Raft round of its own since
//! nats-server 2.12). Here the gateway writes the two inbox items itself and answers `sent`
//! once both are stored; group messages still go through `MSGS` and fanout.
//!
//! The copies are written one after the other, the recipient's first, each with its own
//! `Nats-Msg-Id` (`<sender>:<client id>` and `<sender>:<client id>:own`), so a retry
//! stores nothing twice.
//! The sender's copy carries whatever the recipient's stored copy says: when a client
//! re-sends an id whose first attempt stored only the recipient's copy (its gateway died
//! in between), the duplicate ack names that copy's sequence, the gateway reads it back
//! and writes the same message (same id and time) into the sender's inbox. Written in the
//! other order, or both at once, such a retry could leave two different ids for one
//! message. The recipient sees the message after one write; only `sent` waits for two.
//! (ARCHITECTURE.md has the measurements behind this choice.)

use bytes::Bytes;
use natter_fabric::{
    InboxError, PublishFailed, WITHHELD, publish_durable, publish_durable_with, records::MsgRecord,
    subjects,
};
use natter_schemas::{InboxItem, MessageItem};

use crate::App;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DirectError {
    #[error(transparent)]
    Publish(#[from] PublishFailed),
    #[error("reading the stored original: {0}")]
    Original(#[from] InboxError),
    #[error("the stored original at {0} is not a message")]
    NotAMessage(u64),
}

/// Stores `record` (a one-on-one message from `record.from` to `peer`) in both inboxes and
/// returns the message as stored: the first attempt's when `client_id` was sent before (a
/// client id is the sender's: reused for another conversation within the duplicate window,
/// it answers with the first message, as for any re-send).
pub(crate) async fn store(
    app: &App,
    record: &MsgRecord,
    peer: &str,
    client_id: &str,
) -> Result<MessageItem, DirectError> {
    let sender = record.from.as_str();
    let payload = Bytes::from(InboxItem::Msg(record.to_item()).to_json());
    let first = timed("recipient", async {
        let msg_id = format!("{sender}:{client_id}");
        publish_durable(&app.js, &subjects::inbox(peer), &msg_id, payload.clone()).await
    })
    .await?;
    let (item, payload) = if first.duplicate {
        original(app, first.sequence).await?
    } else {
        (record.to_item(), payload)
    };
    // A note to oneself has one copy.
    if item.conv != format!("dm:{sender}:{sender}") {
        timed("sender", async {
            let msg_id = format!("{sender}:{client_id}:own");
            publish_durable(&app.js, &subjects::inbox(sender), &msg_id, payload).await
        })
        .await?;
    }
    Ok(item)
}

/// Stores a one-on-one message whose recipient blocked its sender: only the sender's own
/// copy, marked (header [`WITHHELD`], never shown to clients) so history keeps it from the
/// recipient's pages. The sender gets `sent` as usual and never more: one tick for good,
/// as WhatsApp does. A re-sent client id answers with the stored copy.
pub(crate) async fn store_withheld(
    app: &App,
    record: &MsgRecord,
    peer: &str,
    client_id: &str,
) -> Result<MessageItem, DirectError> {
    let sender = record.from.as_str();
    let payload = Bytes::from(InboxItem::Msg(record.to_item()).to_json());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{sender}:{client_id}:own").as_str(),
    );
    headers.insert(WITHHELD, peer);
    let stored = publish_durable_with(&app.js, &subjects::inbox(sender), headers, payload).await?;
    if stored.duplicate {
        return Ok(original(app, stored.sequence).await?.0);
    }
    Ok(record.to_item())
}

/// Stores a change (edit, delete, reaction) `sender` made to a one-on-one message with
/// `peer` in both inboxes, the recipient's first, like the message itself. `rev` is new
/// for each change, so a retry of these writes stores nothing twice.
pub(crate) async fn store_change(
    app: &App,
    change: &InboxItem,
    peer: &str,
    sender: &str,
    rev: &str,
) -> Result<(), PublishFailed> {
    let payload = Bytes::from(change.to_json());
    let msg_id = format!("{sender}:{rev}");
    publish_durable(&app.js, &subjects::inbox(peer), &msg_id, payload.clone()).await?;
    if peer != sender {
        let msg_id = format!("{sender}:{rev}:own");
        publish_durable(&app.js, &subjects::inbox(sender), &msg_id, payload).await?;
    }
    Ok(())
}

/// A store, timed in `natter_gateway_direct_store_seconds{copy}`.
async fn timed<T>(copy: &'static str, store: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let stored = store.await;
    metrics::histogram!("natter_gateway_direct_store_seconds", "copy" => copy)
        .record(started.elapsed().as_secs_f64());
    stored
}

/// The message stored at `seq` and its bytes.
async fn original(app: &App, seq: u64) -> Result<(MessageItem, Bytes), DirectError> {
    let stored = app.inbox.get(seq).await?;
    match serde_json::from_slice::<InboxItem>(&stored.payload) {
        Ok(InboxItem::Msg(item)) => Ok((item, stored.payload)),
        _ => Err(DirectError::NotAMessage(seq)),
    }
}
