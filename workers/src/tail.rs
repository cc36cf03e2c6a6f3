//! The tail reader: one consumer that reads the whole `INBOX` stream in order and feeds
//! history and push.
//!
//! Everything history needs passes through inboxes: every message has a copy in its
//! sender's inbox (one-on-one: written by the gateway; groups: by fanout), and every
//! receipt that moves a sender's ticks is an item in the sender's inbox. Push needs
//! exactly the items for users who are offline. So one reader of `INBOX` replaces the
//! durable consumers on `MSGS`, `RCPT` and `INBOX` that history and push had before.
//!
//! Why an R1 consumer with no acks: since nats-server 2.12 an R3 explicit-ack consumer
//! replicates every delivery through Raft before sending it (`replicateDeliveries` in
//! consumer.go); an R1 `AckNone` consumer sends straight from its server (measured 5–6 ms
//! of server CPU per 1,000 deliveries against 30–40, ../shared/NATS-NOTES.md). Its state
//! does not need to survive: where the reader got to is written by the reader itself, in
//! the same store batch as the history it wrote (the checkpoint), and the consumer is made
//! again from there:
//! - at start;
//! - when it stops answering (its server died: an R1 consumer stays on its server and is
//!   gone with it; the pull sees no responders or missing heartbeats);
//! - when the stream of messages ends (the consumer was deleted).
//!
//! Each consumer is a named ephemeral with an inactivity threshold, so one left behind on
//! a server that comes back is removed by the server. With no acks, a delivery lost on its
//! way (the worker's own server connection dropped) is never sent again: deliveries are
//! numbered, and a jump makes the consumer again from the last item handled. No ordered consumer: async-nats's
//! recreates itself from the stream's start when it had delivered nothing yet.
//!
//! Writes are group commits: each batch is committed without an fsync, and one commit a
//! second is durable (`natter_history::Durability`). A crash replays from the last durable
//! checkpoint; replayed messages rewrite the same keys, replayed receipts move nothing
//! back, replayed notes are counted once by the push queue.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    stream::Stream,
};
use futures_util::StreamExt;
use natter_history::{Batch, Durability, History, Store};
use natter_schemas::{InboxItem, ReceiptStatus};

use crate::{WorkerError, push::Noter};
use tokio_util::sync::CancellationToken;

/// Who made a change item.
fn changer(item: &InboxItem) -> Option<&str> {
    match item {
        InboxItem::Edit(c) => Some(&c.from),
        InboxItem::Delete(c) => Some(&c.from),
        InboxItem::Reaction(c) => Some(&c.from),
        _ => None,
    }
}

/// Most items handled per batch.
const BATCH: usize = 1_000;
/// Most time between durable commits while items arrive.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Pull requests expire this often; the server heartbeats a third as often, so a
/// consumer whose server died is noticed within seconds.
const EXPIRES: Duration = Duration::from_secs(6);
/// Wait before making the consumer again after it failed, doubling up to `LONGEST_PAUSE`
/// (jittered: `natter_fabric::retry`).
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);
/// A push-only reader has no checkpoint: it starts this far back (notes are idempotent).
const PUSH_ONLY_LOOKBACK: Duration = Duration::from_secs(60);
/// The server removes a consumer nobody pulled from for this long.
const INACTIVE: Duration = Duration::from_secs(30);

/// What the reader feeds.
pub struct Tail {
    /// Unique per history store (its checkpoint's name) and in consumer names.
    pub name: String,
    pub history: Option<History<Store>>,
    pub push: Option<Noter>,
}

impl Tail {
    pub async fn run(
        self,
        js: jetstream::Context,
        stop: CancellationToken,
    ) -> Result<(), WorkerError> {
        let stream = js.get_stream_no_info(natter_fabric::streams::INBOX).await?;
        let mut reader = Reader {
            tail: self,
            stream,
            last: 0,
            durable_at: Instant::now(),
            pending_durable: false,
            attempt: 0,
        };
        reader.last = match &reader.tail.history {
            Some(history) => history.checkpoint(&reader.tail.name).await?,
            None => 0,
        };
        reader.run(stop).await
    }
}

struct Reader {
    tail: Tail,
    stream: Stream<()>,
    /// The last inbox sequence handled (0: none yet).
    last: u64,
    /// When the last durable commit was made, and whether one is owed.
    durable_at: Instant,
    pending_durable: bool,
    /// Consumers made so far (their names are unique).
    attempt: u64,
}

impl Reader {
    async fn run(&mut self, stop: CancellationToken) -> Result<(), WorkerError> {
        let pauses = || natter_fabric::retry::waits(FIRST_PAUSE, LONGEST_PAUSE);
        let mut pause = pauses();
        loop {
            let consumer = tokio::select! {
                _ = stop.cancelled() => return self.finish().await,
                made = self.consumer() => made,
            };
            let ended = match consumer {
                Ok(consumer) => {
                    let ended = self.read(consumer, &stop).await?;
                    if ended == Ended::Stop {
                        return self.finish().await;
                    }
                    pause = pauses();
                    ended
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot make the inbox tail consumer");
                    Ended::Lost
                }
            };
            metrics::counter!("natter_tail_restarts_total").increment(1);
            tracing::info!(
                ?ended,
                next = self.last + 1,
                "inbox tail: making the consumer again"
            );
            tokio::select! {
                _ = stop.cancelled() => return self.finish().await,
                _ = natter_fabric::retry::wait_next(&mut pause) => {}
            }
        }
    }

    /// A fresh consumer starting after the last item handled.
    async fn consumer(&mut self) -> Result<PullConsumer, jetstream::stream::ConsumerError> {
        self.attempt += 1;
        let deliver_policy = match (self.last, &self.tail.history) {
            (0, None) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::now_utc() - PUSH_ONLY_LOOKBACK,
            },
            (last, _) => DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            },
        };
        let config = pull::Config {
            name: Some(format!(
                "tail-{}-{}-{}",
                self.tail.name,
                std::process::id(),
                self.attempt
            )),
            deliver_policy,
            ack_policy: AckPolicy::None,
            num_replicas: 1,
            memory_storage: true,
            inactive_threshold: INACTIVE,
            ..Default::default()
        };
        self.stream.create_consumer(config).await
    }

    /// Handles what the consumer delivers until it stops answering or `stop`.
    async fn read(
        &mut self,
        consumer: PullConsumer,
        stop: &CancellationToken,
    ) -> Result<Ended, WorkerError> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .expires(EXPIRES)
            .heartbeat(EXPIRES / 3)
            .messages()
            .await?;
        let mut batches = messages.ready_chunks(BATCH);
        let mut tick = tokio::time::interval(DURABLE_EVERY);
        // The consumer sequence of the last delivery handled: deliveries are numbered 1, 2,
        // … and with no acks, one lost on the way (its server connection dropped; the pull
        // stream quietly pulls again) is never sent again, so a jump is a gap to read again.
        let mut delivered = 0;
        loop {
            let batch = tokio::select! {
                _ = stop.cancelled() => return Ok(Ended::Stop),
                _ = tick.tick() => {
                    self.idle().await?;
                    continue;
                }
                batch = batches.next() => match batch {
                    Some(batch) => batch,
                    None => return Ok(Ended::Deleted),
                },
            };
            let mut items = Vec::with_capacity(batch.len());
            let mut lost = false;
            for next in batch {
                match next {
                    Ok(message) => {
                        let sequence = message.info().map_or(0, |i| i.consumer_sequence);
                        if sequence != delivered + 1 {
                            tracing::warn!(
                                expected = delivered + 1,
                                got = sequence,
                                "inbox tail deliveries skipped; reading again from the last item"
                            );
                            lost = true;
                            break;
                        }
                        delivered = sequence;
                        items.push(message);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "inbox tail pull failed");
                        lost = true;
                    }
                }
            }
            self.handle(items).await?;
            if lost {
                return Ok(Ended::Lost);
            }
        }
    }

    /// One batch, in stream order: notes, then history with the checkpoint.
    async fn handle(&mut self, messages: Vec<jetstream::Message>) -> Result<(), WorkerError> {
        let mut batch = Batch::default();
        let mut notes = Vec::new();
        let mut last = self.last;
        for message in messages {
            let Ok(info) = message.info() else {
                continue;
            };
            let seq = info.stream_sequence;
            if seq <= last {
                continue; // already handled before the consumer was made again
            }
            last = seq;
            let Some(owner) = message.subject.strip_prefix("inbox.") else {
                continue;
            };
            match serde_json::from_slice::<InboxItem>(&message.payload) {
                Ok(InboxItem::Msg(m)) => {
                    if m.from == owner {
                        // Never delivered to a recipient who blocked the sender.
                        if let Some(user) = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(natter_fabric::WITHHELD))
                        {
                            let user = user.as_str().to_owned();
                            batch.withheld.push((m.conv.clone(), m.id.clone(), user));
                        }
                        batch.messages.push(m.clone()); // the sender's copy: one per message
                    }
                    batch
                        .latest
                        .push((owner.to_owned(), m.conv.clone(), m.id.clone()));
                    notes.push(crate::push::Note {
                        user: owner.to_owned(),
                        seq,
                        noted: crate::push::Noted::Message(m),
                    });
                }
                // A read receipt in the reader's own inbox (kept from the peer: read
                // receipts off, or a block) moves only the reader's read position.
                Ok(InboxItem::Receipt(r)) if r.by == owner && r.all.is_none() => {
                    if r.status == ReceiptStatus::Read {
                        batch.own_reads.push((r.conv, r.by, r.id));
                    }
                }
                // Receipts in a sender's inbox move that sender's ticks: one-on-one ones
                // always, group ones when they say everyone got there.
                Ok(InboxItem::Receipt(r)) if r.all != Some(false) => {
                    batch.marks.push((r.conv, owner.to_owned(), r.status, r.id));
                }
                // Edits, deletions and reactions: from the copy in the inbox of whoever
                // made them, one per change.
                Ok(
                    change @ (InboxItem::Edit(_) | InboxItem::Delete(_) | InboxItem::Reaction(_)),
                ) => {
                    if let InboxItem::Delete(deleted) = &change {
                        notes.push(crate::push::Note {
                            user: owner.to_owned(),
                            seq,
                            noted: crate::push::Noted::Deleted(deleted.clone()),
                        });
                    }
                    if changer(&change) == Some(owner) {
                        batch.changes.push(change);
                    }
                }
                // A group change moves the group up the member's chat list.
                Ok(InboxItem::GroupEvent(event)) => {
                    let at = natter_history::conversations::stand_in_id(event.ts, seq);
                    let conv = format!("group:{}", event.group);
                    batch.latest.push((owner.to_owned(), conv, at));
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, seq, "unreadable inbox item"),
            }
        }
        if last == self.last {
            return Ok(());
        }
        metrics::counter!("natter_tail_items_total").increment(last - self.last);
        let durability = if self.durable_at.elapsed() >= DURABLE_EVERY {
            Durability::Now
        } else {
            Durability::Soon
        };
        let note = async {
            if let Some(noter) = &self.tail.push {
                noter.note_all(notes).await;
            }
        };
        let write = async {
            if let Some(history) = &self.tail.history {
                let messages = batch.messages.len() as u64;
                batch.checkpoint = Some((self.tail.name.clone(), last));
                let started = Instant::now();
                write_until_done(history, batch, durability).await;
                metrics::histogram!("natter_history_write_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("natter_history_messages_total").increment(messages);
            }
        };
        tokio::join!(note, write);
        if self.tail.history.is_some() {
            self.written(durability);
        }
        self.last = last;
        Ok(())
    }

    /// Nothing new for a while: make what was written durable, retry waiting notes.
    async fn idle(&mut self) -> Result<(), WorkerError> {
        if let Some(noter) = &self.tail.push {
            noter.note_all(Vec::new()).await;
        }
        if let Some(history) = &self.tail.history
            && self.pending_durable
        {
            let batch = Batch {
                checkpoint: Some((self.tail.name.clone(), self.last)),
                ..Batch::default()
            };
            write_until_done(history, batch, Durability::Now).await;
            self.written(Durability::Now);
        }
        Ok(())
    }

    fn written(&mut self, durability: Durability) {
        match durability {
            Durability::Now => {
                self.durable_at = Instant::now();
                self.pending_durable = false;
            }
            Durability::Soon => self.pending_durable = true,
        }
    }

    async fn finish(&mut self) -> Result<(), WorkerError> {
        self.idle().await
    }
}

/// Why a consumer was left.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Stop,
    /// It stopped answering (its server is gone, or a pull was lost).
    Lost,
    /// Its message stream ended (the consumer was deleted).
    Deleted,
}

/// History cannot move past a batch it did not store: retry until the store takes it.
async fn write_until_done(history: &History<Store>, batch: Batch, durability: Durability) {
    let mut waits = natter_fabric::retry::waits(Duration::from_millis(200), Duration::from_secs(5));
    while let Err(err) = history.write(batch.clone(), durability).await {
        metrics::counter!("natter_history_write_retries_total").increment(1);
        tracing::warn!(error = %err, "history store failed; retrying the batch");
        natter_fabric::retry::wait_next(&mut waits).await;
    }
}
