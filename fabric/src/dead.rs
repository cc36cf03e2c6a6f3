//! Parking what a worker could not store: the `DEAD` stream.
//!
//! A worker that retried an item for as long as it may (the stream kept refusing it: a
//! user's inbox over its limit, a full stream) parks it on `dead.<worker>` with where it
//! was going and why, and moves on, so one item cannot stall everything behind it. Each
//! parked item is counted (`natter_dead_letters_total`, alert `NatterDeadLetters`) and kept
//! for [`DEAD_MAX_AGE`](crate::streams::DEAD_MAX_AGE); replaying it is publishing its payload
//! to its `Natter-Dead-Subject` with its `Natter-Dead-Msg-Id` (the target's dedup makes a
//! replay of something stored meanwhile a no-op).

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;

use crate::publish::{PublishFailed, publish_durable_with};

/// Header: the subject the item was for.
pub const SUBJECT: &str = "Natter-Dead-Subject";
/// Header: the item's `Nats-Msg-Id` on that subject.
pub const MSG_ID: &str = "Natter-Dead-Msg-Id";
/// Header: why it was parked (the stream's refusal).
pub const REASON: &str = "Natter-Dead-Reason";

/// What could not be stored, and why.
pub struct Parked<'a> {
    pub subject: &'a str,
    pub msg_id: &'a str,
    pub payload: Bytes,
    pub reason: &'a str,
}

/// Parks `item` on `dead.<worker>`; counted once it is stored.
pub async fn park(
    js: &jetstream::Context,
    worker: &str,
    item: Parked<'_>,
) -> Result<(), PublishFailed> {
    let mut headers = HeaderMap::new();
    let dedup = format!("dead:{}", item.msg_id);
    headers.insert(async_nats::header::NATS_MESSAGE_ID, dedup.as_str());
    headers.insert(SUBJECT, item.subject);
    headers.insert(MSG_ID, item.msg_id);
    // Header values are one line.
    headers.insert(REASON, item.reason.replace(['\r', '\n'], " ").as_str());
    let subject = format!("dead.{worker}");
    publish_durable_with(js, &subject, headers, item.payload).await?;
    metrics::counter!("natter_dead_letters_total", "worker" => worker.to_owned()).increment(1);
    tracing::error!(
        worker,
        subject = item.subject,
        msg_id = item.msg_id,
        reason = item.reason,
        "item parked in DEAD"
    );
    Ok(())
}
