//! Group receipt marks, collected from every socket of this gateway for [`FLUSH_EVERY`]
//! and stored as one event per partition (`rcpt.<p>`) for the receipts workers.
//!
//! A 1,024-member group whose members ack a message within the same few milliseconds
//! becomes one or two stored events per gateway instead of 1,023. Marks of one member in
//! one group are merged (the furthest wins), so a chatty group costs no more.
//!
//! A mark is only in this gateway's memory until the next flush: if the gateway dies
//! within those milliseconds the mark is lost, and the member's next ack (or read) carries
//! a watermark that covers it. Receipts are not messages; nothing a user sent is lost.

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
    watermarks::{GroupMark, MarkBatch},
};
use natter_schemas::{Conversation, ReceiptStatus};
use tokio::sync::watch;

/// How long marks are collected before they are stored.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(40);

type Key = (String, String, ReceiptStatus);

/// The marks waiting for the next flush.
#[derive(Clone, Default)]
pub(crate) struct MarkSink {
    pending: Arc<Mutex<HashMap<Key, GroupMark>>>,
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

    /// Stores what was collected every [`FLUSH_EVERY`], until `stop`; then once more.
    pub async fn run(self, js: jetstream::Context, mut stop: watch::Receiver<bool>) {
        // Unique per gateway process: a flush's events are retried under the same ids.
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let mut flushes = 0u64;
        loop {
            let stopping = tokio::select! {
                _ = stop.changed() => true,
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
            };
            flushes += 1;
            flush(&js, &instance, flushes, self.take()).await;
            if stopping {
                return;
            }
        }
    }
}

/// Keeps the furthest of two marks of one member, status and group.
fn merge(held: &mut GroupMark, newer: GroupMark) {
    if newer.up_to > held.up_to {
        held.up_to = newer.up_to;
    }
    for sender in newer.senders {
        match held.senders.iter_mut().find(|s| s.from == sender.from) {
            Some(s) if sender.id > s.id => s.id = sender.id,
            Some(_) => {}
            None => held.senders.push(sender),
        }
    }
}

async fn flush(js: &jetstream::Context, instance: &str, flush: u64, marks: Vec<GroupMark>) {
    if marks.is_empty() {
        return;
    }
    let mut batches: HashMap<u32, MarkBatch> = HashMap::new();
    for mark in marks {
        let p = subjects::partition_of(&Conversation::Group(mark.group.clone()));
        batches.entry(p).or_default().marks.push(mark);
    }
    metrics::counter!("natter_gateway_mark_events_total").increment(batches.len() as u64);
    let stores = batches.into_iter().map(|(p, batch)| async move {
        let payload = Bytes::from(serde_json::to_vec(&batch).expect("marks serialize"));
        let msg_id = format!("gm:{instance}:{flush}:{p}");
        if let Err(err) = publish_durable(js, &subjects::rcpt(p), &msg_id, payload).await {
            metrics::counter!("natter_gateway_marks_lost_total")
                .increment(batch.marks.len() as u64);
            tracing::warn!(error = %err, "group receipt marks not stored");
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
}
