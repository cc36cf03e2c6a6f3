//! Fanout: every group message in `MSGS` becomes one item in each member's inbox.
//! (One-on-one messages are written into both inboxes by the gateway; records of them
//! still in `MSGS` from before that change are fanned out to both sides here.)
//!
//! One durable consumer per `MSGS` partition (`fanout-<p>`). Each is a pinned-client
//! consumer (priority group `fanout`): JetStream hands a partition to one worker process at
//! a time and moves it to a standby process when that one stops pulling for
//! [`PIN_TIMEOUT`]. So a partition is processed by one task, in stream order, and adding
//! processes adds standby capacity while more partitions run in parallel.
//!
//! The task takes whatever messages are ready (up to [`BATCH`]), publishes all their inbox
//! items back to back on one connection (stored in that order), waits for every ack, and
//! then acks each message. (Not `AckPolicy::All`: one message dropped on the way to the
//! worker would be acked by its successor's ack and never fanned out.) A task that did not
//! see every earlier delivery (it just started or took over) first waits until every
//! unacked one is in its hands ([`fence`]). A publish that failed is retried with the same
//! `Nats-Msg-Id` until it is stored; during a stream leader election that retry can land
//! after items published behind it, the one case where two items may swap in an inbox.
//! Inbox items carry `Nats-Msg-Id = <message id>:<recipient>`, so a batch redelivered after
//! a worker died mid-fanout stores nothing twice. An item the inbox stream itself keeps
//! refusing (the recipient's inbox over a limit, the stream full) is retried for
//! [`Fanout::refused_patience`] and then parked in `DEAD` with the refusal
//! (`natter_fabric::dead`): one recipient's full inbox cannot stall every group of the
//! partition. A NATS outage (timeouts, elections) is waited out, never parked.
//!
//! Group messages go to the members as the `groups` bucket has them when the batch is
//! fanned out (read once per group per batch, never from a cache), and only when the
//! sender is still a member: a member removed before that gets nothing more, and a removed
//! sender's late message reaches nobody. Nothing is written before the inbox items (receipt
//! state is kept from members' watermarks, `natter_fabric::watermarks`). Group changes are
//! in the same partition as the group's messages, so members see them in the order they
//! happened.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesOrdered};
use natter_fabric::{
    dead::{self, Parked},
    groups::{Group, Groups},
    publish_durable,
    records::MsgsEntry,
    streams, subjects,
};
use natter_schemas::{Conversation, InboxItem};

use crate::{Pinned, Task, WorkerError};
use tokio_util::sync::CancellationToken;

/// Most messages fanned out per batch.
pub const BATCH: usize = 256;
/// A pinned worker that stops pulling this long loses its partitions to a standby one.
pub const PIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacked messages are redelivered after this (a batch takes milliseconds).
pub const ACK_WAIT: Duration = Duration::from_secs(10);
const PINNED: Pinned = Pinned {
    group: "fanout",
    ack_wait: ACK_WAIT,
    max_ack_pending: 2 * BATCH as i64,
    pin_timeout: PIN_TIMEOUT,
};

/// How long an inbox item the stream refuses is retried before it is parked, unless
/// configured otherwise.
pub const REFUSED_PATIENCE: Duration = Duration::from_secs(60);
/// Pause between two tries of an item the stream refused.
const REFUSED_RETRY: Duration = Duration::from_secs(1);

/// Creates (or joins) the partition consumers and returns one task per partition.
pub async fn start(
    js: &jetstream::Context,
    groups: &Groups,
    refused_patience: Duration,
    stop: CancellationToken,
) -> Result<Vec<Task>, WorkerError> {
    let stream = js.get_stream_no_info(streams::MSGS).await?;
    let mut tasks: Vec<Task> = Vec::new();
    for p in 0..subjects::PARTITIONS {
        let name = format!("fanout-{p}");
        let consumer = PINNED
            .consumer(&stream, &name, subjects::msg_partition(p))
            .await?;
        let fanout = Fanout {
            js: js.clone(),
            groups: groups.clone(),
            refused_patience,
        };
        let stop = stop.clone();
        tasks.push(Box::pin(async move {
            partition(fanout, name, consumer, stop).await
        }));
    }
    Ok(tasks)
}

/// What a partition task writes to.
#[derive(Clone)]
pub struct Fanout {
    pub js: jetstream::Context,
    pub groups: Groups,
    /// How long an item the inbox stream refuses is retried before it is parked.
    pub refused_patience: Duration,
}

async fn partition(
    fanout: Fanout,
    name: String,
    consumer: jetstream::consumer::PullConsumer,
    stop: CancellationToken,
) -> Result<(), WorkerError> {
    let messages = consumer
        .stream()
        .group(PINNED.group)
        .max_messages_per_batch(BATCH)
        .expires(PIN_TIMEOUT / 4)
        .messages()
        .await?;
    let mut batches = messages.ready_chunks(BATCH);
    // The consumer sequence of the last delivery this task handled.
    let mut last_delivery: Option<u64> = None;
    loop {
        let batch = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = batches.next() => match next {
                Some(batch) => batch,
                None => return Err(WorkerError::ConsumerEnded(name)),
            },
        };
        let started = std::time::Instant::now();
        let mut messages = pulled(&name, batch);
        if messages.is_empty() {
            continue;
        }
        let first = messages[0].info().map(|i| i.consumer_sequence).unwrap_or(0);
        if last_delivery.is_none_or(|last| first > last + 1) {
            messages = fence(&consumer, &name, &mut batches, messages).await;
        }
        last_delivery = messages
            .iter()
            .filter_map(|m| m.info().ok().map(|i| i.consumer_sequence))
            .max()
            .or(last_delivery);
        let entries: Vec<MsgsEntry> = messages
            .iter()
            .filter_map(|m| match serde_json::from_slice(&m.payload) {
                Ok(record) => Some(record),
                Err(err) => {
                    tracing::error!(error = %err, subject = %m.subject, "unreadable MSGS record; dropped");
                    None
                }
            })
            .collect();
        // A big batch (many messages to big groups) can take longer than the ack wait:
        // tell the server it is in progress, or it hands the batch out again meanwhile.
        let fanned = fanout.fan_out(&entries);
        tokio::pin!(fanned);
        let mut progress =
            tokio::time::interval_at(tokio::time::Instant::now() + ACK_WAIT / 2, ACK_WAIT / 2);
        loop {
            tokio::select! {
                () = &mut fanned => break,
                _ = progress.tick() => {
                    for message in &messages {
                        let _ = message.ack_with(jetstream::AckKind::Progress).await;
                    }
                }
            }
        }
        for message in &messages {
            if let Err(err) = message.ack().await {
                tracing::warn!(error = %err, "ack failed; the message will be redelivered");
            }
        }
        metrics::histogram!("natter_fanout_batch_seconds").record(started.elapsed().as_secs_f64());
    }
}

type Batches = futures_util::stream::ReadyChunks<jetstream::consumer::pull::Stream>;

/// The messages of a pulled batch (pull status errors are logged).
fn pulled(
    name: &str,
    batch: Vec<Result<jetstream::Message, jetstream::consumer::pull::MessagesError>>,
) -> Vec<jetstream::Message> {
    batch
        .into_iter()
        .filter_map(|next| {
            next.map_err(|err| tracing::warn!(consumer = %name, error = %err, "fanout pull status"))
                .ok()
        })
        .collect()
}

/// Keeps a partition in order when this task did not see every delivery before `held`
/// (it just started, or took the partition over from a process that died, or a pull
/// went astray): deliveries it did not handle and nobody acked come back after their ack
/// wait, and they are older than what it holds. So it waits until every unacked delivery
/// of the consumer is in its hands, then handles them all in stream order.
async fn fence(
    consumer: &jetstream::consumer::PullConsumer,
    name: &str,
    batches: &mut Batches,
    mut held: Vec<jetstream::Message>,
) -> Vec<jetstream::Message> {
    let deadline = tokio::time::Instant::now() + 2 * ACK_WAIT;
    let by_sequence = |m: &jetstream::Message| m.info().map(|i| i.stream_sequence).unwrap_or(0);
    loop {
        // Our own deliveries can come again too while we wait: count each message once,
        // keeping its newest delivery (the one whose ack counts).
        held.sort_by_key(|m| {
            let info = m.info().ok();
            (
                info.as_ref().map_or(0, |i| i.stream_sequence),
                std::cmp::Reverse(info.map_or(0, |i| i.consumer_sequence)),
            )
        });
        held.dedup_by_key(|m| by_sequence(m));
        match consumer.get_info().await {
            Ok(info) if info.num_ack_pending <= held.len() => break,
            Ok(info) => tracing::info!(
                consumer = %name,
                pending = info.num_ack_pending,
                held = held.len(),
                "waiting for another process's unacked deliveries before going on"
            ),
            Err(err) => tracing::warn!(consumer = %name, error = %err, "consumer info failed"),
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(consumer = %name, "unacked deliveries did not come back; going on");
            break;
        }
        if let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(1), batches.next()).await
        {
            held.extend(pulled(name, batch));
        }
    }
    metrics::counter!("natter_fanout_fences_total").increment(1);
    held.sort_by_key(by_sequence);
    held.dedup_by_key(|m| by_sequence(m));
    held
}

/// Items a partition keeps published and not yet acked (a sliding window: the next item
/// goes out as the oldest one's ack comes back). Partitions × this stays below the 5,000
/// unacked publishes async-nats allows a connection, so a partition never waits for a
/// slot that another partition holds.
pub const WINDOW: usize = 256;

impl Fanout {
    /// Puts every entry into every recipient's inbox, in order, and returns once all are
    /// stored. Publishes go out back to back on one connection (so they are stored in that
    /// order) with up to [`WINDOW`] awaiting their acks; a failed one is retried until it
    /// is stored, when its ack comes back.
    pub async fn fan_out(&self, entries: &[MsgsEntry]) {
        let now = natter_fabric::now_millis();
        let mut groups: HashMap<String, Option<Arc<Group>>> = HashMap::new();
        let mut items = Vec::new();
        let mut messages = 0;
        for entry in entries {
            let (id, recipients, item) = match entry {
                MsgsEntry::Message(record) => {
                    messages += 1;
                    metrics::histogram!("natter_fanout_lag_seconds")
                        .record(now.saturating_sub(record.ts) as f64 / 1000.0);
                    let recipients = self
                        .recipients(&record.conv, &record.from, &mut groups)
                        .await;
                    if recipients.is_empty() {
                        metrics::counter!("natter_fanout_refused_total").increment(1);
                        tracing::warn!(conv = %record.conv, from = %record.from, "sender not in the conversation; message reaches nobody");
                        continue;
                    }
                    let item = InboxItem::Msg(record.to_item());
                    (&record.id, recipients, item)
                }
                MsgsEntry::GroupEvent(event) => {
                    let item = InboxItem::GroupEvent(event.item.clone());
                    (&event.event_id, event.recipients.clone(), item)
                }
                MsgsEntry::Change(change) => {
                    let Some((conv, from)) = change.conv_and_from() else {
                        tracing::warn!(rev = %change.rev, "a change record that is no change");
                        continue;
                    };
                    let recipients = self.recipients(conv, from, &mut groups).await;
                    if recipients.is_empty() {
                        metrics::counter!("natter_fanout_refused_total").increment(1);
                        continue;
                    }
                    (&change.rev, recipients, change.change.clone())
                }
            };
            let item = Bytes::from(item.to_json());
            for uid in recipients {
                items.push((subjects::inbox(&uid), format!("{id}:{uid}"), item.clone()));
            }
        }
        metrics::counter!("natter_fanout_messages_total").increment(messages);
        metrics::counter!("natter_fanout_items_total").increment(items.len() as u64);
        let mut acks = FuturesOrdered::new();
        for (i, (subject, msg_id, item)) in items.iter().enumerate() {
            if acks.len() >= WINDOW
                && let Some((j, stored)) = acks.next().await
            {
                self.retry_unless(stored, &items[j]).await;
            }
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, item.clone())
                .await;
            acks.push_back(async move {
                let stored = match ack {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                (i, stored)
            });
        }
        while let Some((j, stored)) = acks.next().await {
            self.retry_unless(stored, &items[j]).await;
        }
    }

    async fn retry_unless(&self, stored: bool, (subject, msg_id, item): &(String, String, Bytes)) {
        if !stored {
            metrics::counter!("natter_fanout_retries_total").increment(1);
            self.store_or_park(subject, msg_id, item.clone()).await;
        }
    }

    /// Retries one inbox publish until it is stored: the partition cannot move past it.
    /// What the stream keeps refusing for `refused_patience` (or can never take) is
    /// parked in `DEAD` instead; what cannot be parked either is retried on.
    async fn store_or_park(&self, subject: &str, msg_id: &str, item: Bytes) {
        let mut refused_since = None;
        loop {
            let err = match publish_durable(&self.js, subject, msg_id, item.clone()).await {
                Ok(_) => return,
                Err(err) => err,
            };
            let refusal = err.refusal();
            let since = match refusal {
                Some(_) => *refused_since.get_or_insert_with(tokio::time::Instant::now),
                None => {
                    refused_since = None;
                    tokio::time::Instant::now()
                }
            };
            if err.is_permanent() || since.elapsed() >= self.refused_patience {
                let reason = refusal.clone().unwrap_or_else(|| err.to_string());
                let parked = Parked {
                    subject,
                    msg_id,
                    payload: item.clone(),
                    reason: &reason,
                };
                match dead::park(&self.js, "fanout", parked).await {
                    Ok(()) => return,
                    Err(park) => tracing::warn!(error = %park, "cannot park the item; retrying it"),
                }
            }
            tracing::warn!(error = %err, "inbox item not stored; fanout of this partition waits");
            if refusal.is_some() {
                tokio::time::sleep(REFUSED_RETRY).await;
            }
        }
    }

    /// Who gets a message (or a change to one) `from` sent in `conv`: both sides of a
    /// one-on-one conversation, or every member of a group (the sender too, for their
    /// other devices). Nobody when the sender is not part of the conversation.
    async fn recipients(
        &self,
        conv: &str,
        from: &str,
        groups: &mut HashMap<String, Option<Arc<Group>>>,
    ) -> Vec<String> {
        let gid = match Conversation::parse(conv) {
            Ok(Conversation::Group(gid)) => gid,
            _ => return direct_recipients(conv, from),
        };
        if !groups.contains_key(&gid) {
            let group = until_done("read group", || self.groups.get(&gid)).await;
            groups.insert(gid.clone(), group);
        }
        let Some(group) = groups.get(&gid).cloned().flatten() else {
            return Vec::new();
        };
        if !group.is_member(from) {
            return Vec::new();
        }
        group.members.clone()
    }
}

/// Retries a store call until it succeeds: the partition cannot move past it, and
/// skipping it would drop or misdirect a message.
async fn until_done<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut waits = natter_fabric::retry::waits(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(err) => {
                metrics::counter!("natter_fanout_retries_total").increment(1);
                tracing::warn!(error = %err, "{what} failed; fanout of this partition waits");
                natter_fabric::retry::wait_next(&mut waits).await;
            }
        }
    }
}

/// Both sides of a one-on-one conversation (the sender for their other devices); nobody
/// when the record's sender is not one of them.
fn direct_recipients(conv: &str, from: &str) -> Vec<String> {
    match Conversation::parse(conv) {
        Ok(conv @ Conversation::Direct { .. }) if conv.peer_of(from).is_some() => {
            let Conversation::Direct { a, b } = conv else {
                unreachable!()
            };
            if a == b { vec![a] } else { vec![a, b] }
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_message_goes_to_both_sides_once() {
        assert_eq!(direct_recipients("dm:amy:bob", "amy"), ["amy", "bob"]);
        assert_eq!(direct_recipients("dm:amy:amy", "amy"), ["amy"]);
    }

    #[test]
    fn a_sender_outside_the_conversation_reaches_nobody() {
        assert!(direct_recipients("dm:amy:bob", "eve").is_empty());
        assert!(direct_recipients("nonsense", "amy").is_empty());
    }
}
