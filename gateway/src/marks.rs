//! Receipts on their way out of this gateway, collected from every socket for a moment
//! and stored together.
//!
//! - **Group marks** are kept for [`FLUSH_EVERY`] and stored as one event per partition
//!   (`rcpt.<p>`) for the receipts workers: a 1,024-member group whose members ack a
//!   message within the same few milliseconds becomes one or two stored events per
//!   gateway instead of 1,023.
//! - **One-on-one receipts** are kept for [`RECEIPTS_EVERY`] and each stored in the
//!   other side's inbox: a receipt is a watermark, so the receipts of one reader, status
//!   and conversation within that time are one item (the furthest). A phone that acks
//!   every 20 ms in a busy conversation costs a few receipt writes a second, not one per
//!   ack.
//!
//! Either is merged per member (the furthest wins), so a chatty conversation costs no
//! more. A receipt is only in this gateway's memory until its flush: if the gateway dies
//! within those milliseconds it is lost, and the member's next ack (or read) carries a
//! watermark that covers it. Receipts are not messages; nothing a user sent is lost.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::future::join_all;
use natter_fabric::{
    publish_durable, subjects,
    watermarks::{GroupMark, MarkBatch, SenderMark},
};
use natter_schemas::{Conversation, InboxItem, ReceiptItem, ReceiptStatus};
use tokio_util::sync::CancellationToken;

/// How long group marks are collected before they are stored.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(40);
/// How long one-on-one receipts are collected.
pub(crate) const RECEIPTS_EVERY: Duration = Duration::from_millis(120);

type Key = (String, String, ReceiptStatus);

/// The marks and receipts waiting for their flush.
#[derive(Clone, Default)]
pub(crate) struct MarkSink {
    pending: Arc<Mutex<HashMap<Key, GroupMark>>>,
    /// (whose inbox, conversation, reader, status) → the furthest receipt.
    receipts: Arc<Mutex<HashMap<(String, Key), ReceiptItem>>>,
}

impl MarkSink {
    pub fn add(&self, mark: GroupMark) {
        let key = (mark.group.clone(), mark.by.clone(), mark.status);
        let mut pending = self.pending.lock().expect("marks lock");
        match pending.get_mut(&key) {
            Some(held) => merge(held, mark),
            None => {
                pending.insert(key, mark);
            }
        }
    }

    fn take(&self) -> Vec<GroupMark> {
        let mut pending = self.pending.lock().expect("marks lock");
        pending.drain().map(|(_, mark)| mark).collect()
    }

    /// A one-on-one receipt for `to` (the sender of the messages it covers).
    pub fn add_receipt(&self, to: String, receipt: ReceiptItem) {
        let key = (
            to,
            (receipt.conv.clone(), receipt.by.clone(), receipt.status),
        );
        let mut receipts = self.receipts.lock().expect("receipts lock");
        match receipts.get_mut(&key) {
            Some(held) if receipt.id > held.id => *held = receipt,
            Some(_) => {}
            None => {
                receipts.insert(key, receipt);
            }
        }
    }

    fn take_receipts(&self) -> Vec<(String, ReceiptItem)> {
        let mut receipts = self.receipts.lock().expect("receipts lock");
        receipts.drain().map(|((to, _), r)| (to, r)).collect()
    }

    /// Stores what was collected every [`FLUSH_EVERY`], until `stop`; then once more.
    /// Stores group marks every [`FLUSH_EVERY`] and one-on-one receipts every
    /// [`RECEIPTS_EVERY`] (each on its own, so a slow store of one holds up neither the
    /// other nor sends), until `stop`; then once more.
    pub async fn run(self, js: jetstream::Context, stop: CancellationToken) {
        // Unique per gateway process: a flush's events are retried under the same ids.
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let marks = every(FLUSH_EVERY, stop.clone(), |flush| {
            flush_marks(&js, &instance, flush, self.take())
        });
        let receipts = every(RECEIPTS_EVERY, stop, |_| {
            store_receipts(&js, self.take_receipts())
        });
        tokio::join!(marks, receipts);
    }
}

/// Runs `flush` every `period` until `stop`, then once more.
async fn every<F: Future<Output = ()>>(
    period: Duration,
    stop: CancellationToken,
    mut flush: impl FnMut(u64) -> F,
) {
    for n in 1.. {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(period) => false,
        };
        flush(n).await;
        if stopping {
            return;
        }
    }
}

/// Keeps the furthest of two marks of one member, status and group.
fn merge(held: &mut GroupMark, newer: GroupMark) {
    if newer.up_to > held.up_to {
        held.up_to = newer.up_to;
    }
    let mut senders: HashMap<String, String> = std::mem::take(&mut held.senders)
        .into_iter()
        .map(|s| (s.from, s.id))
        .collect();
    for sender in newer.senders {
        let slot = senders.entry(sender.from).or_default();
        if sender.id > *slot {
            *slot = sender.id;
        }
    }
    held.senders = senders
        .into_iter()
        .map(|(from, id)| SenderMark { from, id })
        .collect();
}

/// Most bytes of marks in one stored event (NATS refuses messages over 1 MB).
const MAX_EVENT_BYTES: usize = 256 * 1024;

async fn flush_marks(js: &jetstream::Context, instance: &str, flush: u64, marks: Vec<GroupMark>) {
    if marks.is_empty() {
        return;
    }
    // Per partition, events of at most MAX_EVENT_BYTES (a device back in a big group can
    // ack a thousand senders' messages in one mark).
    let mut batches: HashMap<u32, Vec<(MarkBatch, usize)>> = HashMap::new();
    for mark in marks {
        let p = subjects::partition_of(&Conversation::Group(mark.group.clone()));
        let size = serde_json::to_vec(&mark).map_or(0, |b| b.len());
        let events = batches.entry(p).or_default();
        match events.last_mut() {
            Some((batch, bytes)) if *bytes + size <= MAX_EVENT_BYTES => {
                batch.marks.push(mark);
                *bytes += size;
            }
            _ => events.push((MarkBatch { marks: vec![mark] }, size)),
        }
    }
    let events: Vec<(u32, usize, MarkBatch)> = batches
        .into_iter()
        .flat_map(|(p, events)| {
            events
                .into_iter()
                .enumerate()
                .map(move |(n, (batch, _))| (p, n, batch))
        })
        .collect();
    metrics::counter!("natter_gateway_mark_events_total").increment(events.len() as u64);
    let stores = events.into_iter().map(|(p, n, batch)| async move {
        let payload = Bytes::from(serde_json::to_vec(&batch).expect("marks serialize"));
        let msg_id = format!("gm:{instance}:{flush}:{p}:{n}");
        if let Err(err) = publish_durable(js, &subjects::rcpt(p), &msg_id, payload).await {
            metrics::counter!("natter_gateway_marks_lost_total")
                .increment(batch.marks.len() as u64);
            tracing::warn!(error = %err, "group receipt marks not stored");
        }
    });
    join_all(stores).await;
}

/// Stores each receipt in its recipient's inbox. Two devices of one user acking the same
/// messages store one receipt (the same `Nats-Msg-Id`).
async fn store_receipts(js: &jetstream::Context, receipts: Vec<(String, ReceiptItem)>) {
    let stores = receipts.into_iter().map(|(to, receipt)| async move {
        let status = match receipt.status {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Read => "read",
        };
        let msg_id = format!(
            "rcpt:{}:{}:{status}:{}",
            receipt.conv, receipt.by, receipt.id
        );
        let item = Bytes::from(InboxItem::Receipt(receipt).to_json());
        match publish_durable(js, &subjects::inbox(&to), &msg_id, item).await {
            Ok(_) => {
                metrics::counter!("natter_gateway_receipts_total", "status" => status).increment(1)
            }
            Err(err) => tracing::warn!(error = %err, "receipt not stored"),
        }
    });
    join_all(stores).await;
}

#[cfg(test)]
mod tests {
    use natter_fabric::watermarks::SenderMark;

    use super::*;

    fn mark(up_to: &str, senders: &[(&str, &str)]) -> GroupMark {
        GroupMark {
            group: "g".into(),
            by: "bob".into(),
            status: ReceiptStatus::Delivered,
            up_to: up_to.into(),
            senders: senders
                .iter()
                .map(|(from, id)| SenderMark {
                    from: (*from).into(),
                    id: (*id).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn one_member_s_marks_merge_into_the_furthest() {
        let sink = MarkSink::default();
        sink.add(mark("05", &[("amy", "05"), ("cat", "03")]));
        sink.add(mark("04", &[("amy", "04"), ("dan", "02")]));
        sink.add(GroupMark {
            status: ReceiptStatus::Read,
            ..mark("01", &[])
        });
        let mut marks = sink.take();
        marks.sort_by_key(|m| m.status == ReceiptStatus::Read);
        assert_eq!(marks.len(), 2, "delivered and read apart");
        assert_eq!(marks[0].up_to, "05");
        let mut senders: Vec<_> = marks[0]
            .senders
            .iter()
            .map(|s| (s.from.as_str(), s.id.as_str()))
            .collect();
        senders.sort();
        assert_eq!(senders, [("amy", "05"), ("cat", "03"), ("dan", "02")]);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn one_readers_receipts_within_a_flush_are_one_the_furthest() {
        let sink = MarkSink::default();
        let receipt = |id: &str, status| ReceiptItem {
            conv: "dm:amy:bob".into(),
            id: id.into(),
            by: "bob".into(),
            status,
            ts: 1,
            all: None,
        };
        sink.add_receipt("amy".into(), receipt("03", ReceiptStatus::Delivered));
        sink.add_receipt("amy".into(), receipt("05", ReceiptStatus::Delivered));
        sink.add_receipt("amy".into(), receipt("04", ReceiptStatus::Delivered));
        sink.add_receipt("amy".into(), receipt("02", ReceiptStatus::Read));
        let mut taken = sink.take_receipts();
        taken.sort_by_key(|(_, r)| r.status == ReceiptStatus::Read);
        let ids: Vec<&str> = taken.iter().map(|(_, r)| r.id.as_str()).collect();
        assert_eq!(ids, ["05", "02"]);
        assert!(sink.take_receipts().is_empty());
    }
}
