//! Receipts of group messages: members' watermarks in, `all: true` receipts out.
//!
//! One-on-one receipts never come here: the gateway writes them straight into the other
//! side's inbox. For groups, gateways collect members' marks ("a device of `by` has the
//! group up to message X", "`by` read it up to Y") and store them per partition on
//! `rcpt.<p>` (`natter_fabric::watermarks`). One durable consumer per partition
//! (`receipts-<p>`), pinned to one process at a time like fanout's, folds them into each
//! group's [`GroupWatermarks`] in memory and tells each sender, with one receipt saying
//! `all: true`, when every other member (counted from when they joined) has their
//! messages up to some id, and when everyone has read them. A sender is told about each
//! message at most once per status; the receipt is a watermark covering their earlier
//! messages too.
//!
//! State survives a worker: each group's watermarks are checkpointed in the KV bucket
//! `receipts` at most every [`CHECKPOINT_EVERY`], and events are acked only once the
//! checkpoint that includes them is stored. A worker that dies loses nothing: its
//! successor loads the checkpoints and gets the unacked events again; marks only move
//! forward, and receipts it sends again carry the same `Nats-Msg-Id`
//! (`rall:<group>:<to>:<status>:<id>`). Two workers that briefly both hold a partition
//! merge their checkpoints (compare-and-set, then the furthest of each).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::{StreamExt, future::join_all};
use natter_fabric::{
    groups::Groups,
    now_millis, publish_durable, streams, subjects,
    watermarks::{AllReceipt, Checkpoints, GroupWatermarks, MarkBatch, Member, WatermarksError},
};
use natter_schemas::{InboxItem, ReceiptItem, ReceiptStatus};

use crate::{Pinned, Task, WorkerError};
use tokio_util::sync::CancellationToken;

/// Events handled per batch.
const BATCH: usize = 256;
/// Longest time between checkpoints (and so between an event and its ack).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Unacked events are redelivered after this; far above `CHECKPOINT_EVERY`.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// A pinned worker that stops pulling this long loses its partitions to a standby one.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);
const PINNED: Pinned = Pinned {
    group: "receipts",
    ack_wait: ACK_WAIT,
    max_ack_pending: 20_000,
    pin_timeout: PIN_TIMEOUT,
};
/// Groups whose state a partition task keeps in memory; beyond this, the ones untouched
/// longest (and checkpointed) are dropped and loaded again when needed.
const MAX_LOADED: usize = 10_000;
/// Tries to store a checkpoint another worker keeps changing.
const SAVE_ATTEMPTS: usize = 10;

/// Creates (or joins) the partition consumers and returns one task per partition.
pub async fn start(
    js: &jetstream::Context,
    groups: &Groups,
    checkpoints: &Checkpoints,
    stop: CancellationToken,
) -> Result<Vec<Task>, WorkerError> {
    let stream = js.get_stream_no_info(streams::RCPT).await?;
    let mut tasks: Vec<Task> = Vec::new();
    for p in 0..subjects::PARTITIONS {
        let name = format!("receipts-{p}");
        let consumer = PINNED.consumer(&stream, &name, subjects::rcpt(p)).await?;
        let partition = Partition {
            js: js.clone(),
            groups: groups.clone(),
            checkpoints: checkpoints.clone(),
            loaded: HashMap::new(),
            unacked: HashMap::new(),
            checkpointed: Instant::now(),
        };
        let stop = stop.clone();
        tasks.push(Box::pin(partition.run(name, consumer, stop)));
    }
    Ok(tasks)
}

/// One group's state as this task holds it.
struct Loaded {
    /// The checkpoint's revision it was loaded from or last saved as.
    revision: Option<u64>,
    state: GroupWatermarks,
    /// The members as last read: the state is cut down to them before it is saved.
    members: Vec<Member>,
    dirty: bool,
    touched: Instant,
}

struct Partition {
    js: jetstream::Context,
    groups: Groups,
    checkpoints: Checkpoints,
    loaded: HashMap<String, Loaded>,
    /// Events handled but not acked (by stream sequence): acked once their marks are
    /// checkpointed.
    unacked: HashMap<u64, jetstream::Message>,
    checkpointed: Instant,
}

#[derive(Debug, thiserror::Error)]
enum ReceiptError {
    #[error(transparent)]
    Watermarks(#[from] WatermarksError),
    #[error("group store: {0}")]
    Groups(#[from] natter_fabric::groups::GroupsError),
}

impl Partition {
    async fn run(
        mut self,
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
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                next = batches.next() => match next {
                    Some(batch) => {
                        let messages = batch
                            .into_iter()
                            .filter_map(|next| {
                                next.map_err(|err| {
                                    tracing::warn!(consumer = %name, error = %err, "receipts pull status");
                                })
                                .ok()
                            })
                            .collect();
                        self.handle(messages).await;
                    }
                    None => return Err(WorkerError::ConsumerEnded(name)),
                },
            }
            if self.checkpointed.elapsed() >= CHECKPOINT_EVERY && !self.unacked.is_empty() {
                self.checkpoint().await;
            }
        }
    }

    /// Folds a batch of events in and sends the receipts they make due (worked out once
    /// per group per batch: a 1,024-member group's acks arrive as a few hundred marks).
    async fn handle(&mut self, messages: Vec<jetstream::Message>) {
        let mut members: HashMap<String, Vec<Member>> = HashMap::new();
        // Groups whose state moved, and whose mark moved it last.
        let mut moved: HashMap<String, String> = HashMap::new();
        let mut failed = Vec::new();
        for message in messages {
            let batch: MarkBatch = match serde_json::from_slice(&message.payload) {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::error!(error = %err, "unreadable receipt marks; dropped");
                    self.hold(message);
                    continue;
                }
            };
            metrics::counter!("natter_receipts_marks_total").increment(batch.marks.len() as u64);
            match self.fold(batch, &mut members, &mut moved).await {
                Ok(()) => self.hold(message),
                Err(err) => {
                    tracing::warn!(error = %err, "receipt marks not applied; redelivered");
                    failed.push(message);
                }
            }
        }
        let mut receipts = Vec::new();
        for (gid, by) in moved {
            if let (Some(loaded), Some(members)) = (self.loaded.get_mut(&gid), members.get(&gid)) {
                for due in loaded.state.due(members, &by) {
                    receipts.push((gid.clone(), due));
                }
            }
        }
        let unsent = send(&self.js, receipts).await;
        if !unsent.is_empty() {
            // Those groups go back to their checkpoint and every event since comes again,
            // so the receipts are worked out and sent again.
            for gid in &unsent {
                self.loaded.remove(gid);
            }
            failed.extend(self.unacked.drain().map(|(_, m)| m));
        }
        for message in failed {
            let nak = jetstream::AckKind::Nak(Some(Duration::from_secs(1)));
            if let Err(err) = message.ack_with(nak).await {
                tracing::debug!(error = %err, "nak failed; the event comes back after the ack wait");
            }
        }
    }

    async fn fold(
        &mut self,
        batch: MarkBatch,
        members: &mut HashMap<String, Vec<Member>>,
        moved: &mut HashMap<String, String>,
    ) -> Result<(), ReceiptError> {
        for mark in batch.marks {
            if !members.contains_key(&mark.group) {
                let group = self.groups.get(&mark.group).await?;
                let list = group
                    .iter()
                    .flat_map(|g| {
                        g.members.iter().map(|user| Member {
                            user: user.clone(),
                            since_ms: g.member_since(user),
                        })
                    })
                    .collect();
                members.insert(mark.group.clone(), list);
            }
            let group_members = members[&mark.group].clone();
            let loaded = self.load(&mark.group).await?;
            loaded.touched = Instant::now();
            loaded.members = group_members;
            if loaded.state.apply(&mark) {
                loaded.dirty = true;
                moved.insert(mark.group.clone(), mark.by.clone());
            }
        }
        Ok(())
    }

    /// Keeps an event to ack after the next checkpoint; an event delivered again (its ack
    /// wait passed while a checkpoint kept failing) is held once, as its newest delivery.
    fn hold(&mut self, message: jetstream::Message) {
        let seq = message.info().map_or(0, |i| i.stream_sequence);
        self.unacked.insert(seq, message);
    }

    async fn load(&mut self, gid: &str) -> Result<&mut Loaded, ReceiptError> {
        if !self.loaded.contains_key(gid) {
            let (revision, state) = self.checkpoints.load(gid).await?;
            self.loaded.insert(
                gid.to_owned(),
                Loaded {
                    revision,
                    state,
                    members: Vec::new(),
                    dirty: false,
                    touched: Instant::now(),
                },
            );
        }
        Ok(self.loaded.get_mut(gid).expect("inserted above"))
    }

    /// Stores every changed group's state, then acks the events it includes. A group
    /// that cannot be stored keeps its events unacked (they come back after the ack wait).
    async fn checkpoint(&mut self) {
        self.checkpointed = Instant::now();
        let mut all_saved = true;
        for (gid, loaded) in self.loaded.iter_mut().filter(|(_, l)| l.dirty) {
            match save(&self.checkpoints, gid, loaded).await {
                Ok(()) => loaded.dirty = false,
                Err(err) => {
                    all_saved = false;
                    tracing::warn!(error = %err, group = %gid, "receipt checkpoint not stored");
                }
            }
        }
        if !all_saved {
            return;
        }
        for (_, message) in self.unacked.drain() {
            if let Err(err) = message.ack().await {
                tracing::debug!(error = %err, "ack failed; the event comes back and changes nothing");
            }
        }
        if self.loaded.len() > MAX_LOADED {
            let mut touched: Vec<Instant> = self.loaded.values().map(|l| l.touched).collect();
            touched.sort_unstable();
            let cutoff = touched[self.loaded.len() - MAX_LOADED];
            self.loaded.retain(|_, l| l.dirty || l.touched >= cutoff);
        }
    }
}

/// Stores one group's state; on a conflict (another worker held the partition a moment)
/// merges the stored state in and tries again.
async fn save(
    checkpoints: &Checkpoints,
    gid: &str,
    loaded: &mut Loaded,
) -> Result<(), ReceiptError> {
    let mut waits = natter_fabric::retry::after_lost_race();
    for attempt in 0..SAVE_ATTEMPTS {
        if attempt > 0 {
            natter_fabric::retry::wait_next(&mut waits).await;
        }
        match checkpoints.save(gid, &loaded.state, loaded.revision).await {
            Ok(revision) => {
                loaded.revision = Some(revision);
                return Ok(());
            }
            Err(WatermarksError::Conflict(_)) => {
                metrics::counter!("natter_receipts_checkpoint_conflicts_total").increment(1);
                let (revision, stored) = checkpoints.load(gid).await?;
                loaded.state.merge(&stored);
                loaded.state.keep_only(&loaded.members);
                loaded.revision = revision;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(WatermarksError::Conflict(gid.to_owned()).into())
}

/// Stores each receipt in its sender's inbox; returns the groups some receipt of which
/// could not be stored.
async fn send(js: &jetstream::Context, receipts: Vec<(String, AllReceipt)>) -> Vec<String> {
    let ts = now_millis();
    let stores = receipts.into_iter().map(|(gid, due)| async move {
        let status = match due.status {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Read => "read",
        };
        let msg_id = format!("rall:{gid}:{}:{status}:{}", due.to, due.id);
        let item = InboxItem::Receipt(ReceiptItem {
            conv: format!("group:{gid}"),
            id: due.id,
            by: due.by,
            status: due.status,
            ts,
            all: Some(true),
        });
        let payload = Bytes::from(item.to_json());
        match publish_durable(js, &subjects::inbox(&due.to), &msg_id, payload).await {
            Ok(_) => {
                metrics::counter!("natter_receipts_sent_total", "status" => status).increment(1);
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "group receipt not stored; its events come again");
                Some(gid)
            }
        }
    });
    let mut unsent: Vec<String> = join_all(stores).await.into_iter().flatten().collect();
    unsent.sort();
    unsent.dedup();
    unsent
}
