//! Fanout: every message in `MSGS` becomes one item in each recipient's inbox.
//!
//! One durable consumer per `MSGS` partition (`fanout-<p>`), each with
//! `max_ack_pending = 1`: a partition's next message is handed out only after the previous
//! one is in every inbox and acked, so messages of one conversation enter every inbox in
//! the order they were stored, however many worker processes share the consumer. The
//! partitions run in parallel. Inbox items carry `Nats-Msg-Id = <message id>:<recipient>`,
//! so a worker killed mid-fanout and redelivered stores nothing twice.

use std::{future::Future, pin::Pin};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
};
use bytes::Bytes;
use futures_util::{StreamExt, future::join_all};
use natter_fabric::{publish_durable, records::MsgRecord, streams, subjects};
use natter_schemas::{Conversation, InboxItem};
use tokio::sync::watch;

use crate::{ACK_WAIT, WorkerError, stopped};

type Task = Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>>;

/// Creates (or joins) the partition consumers and returns one task per partition.
pub async fn start(js: &jetstream::Context, stop: watch::Receiver<bool>) -> Result<Vec<Task>, WorkerError> {
    let stream = js.get_stream_no_info(streams::MSGS).await?;
    let mut tasks: Vec<Task> = Vec::new();
    for p in 0..subjects::PARTITIONS {
        let name = format!("fanout-{p}");
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subjects::msg_partition(p),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: 1,
                    ..Default::default()
                },
            )
            .await?;
        let js = js.clone();
        let stop = stop.clone();
        tasks.push(Box::pin(async move { partition(js, consumer, stop).await }));
    }
    Ok(tasks)
}

async fn partition(
    js: jetstream::Context,
    consumer: jetstream::consumer::PullConsumer,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let mut messages = consumer.messages().await?;
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            _ = &mut stop => return Ok(()),
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "fanout consumer hiccup");
                    continue;
                }
                None => return Ok(()),
            },
        };
        let outcome = match serde_json::from_slice::<MsgRecord>(&message.payload) {
            Ok(record) => fan_out(&js, &record).await,
            Err(err) => {
                tracing::error!(error = %err, subject = %message.subject, "unreadable MSGS record; dropped");
                Ok(())
            }
        };
        let ack = match outcome {
            Ok(()) => AckKind::Ack,
            Err(err) => {
                tracing::warn!(error = %err, "fanout failed; will be redelivered");
                AckKind::Nak(Some(std::time::Duration::from_secs(1)))
            }
        };
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!(error = %err, "ack failed; the message will be redelivered");
        }
    }
}

/// Puts `record` into every recipient's inbox and waits until all are stored.
pub async fn fan_out(js: &jetstream::Context, record: &MsgRecord) -> Result<(), natter_fabric::PublishFailed> {
    let recipients = recipients(record);
    if recipients.is_empty() {
        tracing::error!(conv = %record.conv, from = %record.from, "message with no recipients; dropped");
        return Ok(());
    }
    let item = Bytes::from(InboxItem::Msg(record.to_item()).to_json());
    let publishes = recipients.iter().map(|uid| {
        let subject = subjects::inbox(uid);
        let msg_id = format!("{}:{uid}", record.id);
        let item = item.clone();
        async move { publish_durable(js, &subject, &msg_id, item).await }
    });
    for result in join_all(publishes).await {
        result?;
    }
    Ok(())
}

/// Who gets an item: both sides of a one-on-one conversation (the sender for their other
/// devices). Nobody when the record's sender is not part of its conversation.
fn recipients(record: &MsgRecord) -> Vec<String> {
    match Conversation::parse(&record.conv) {
        Ok(conv @ Conversation::Direct { .. }) if conv.peer_of(&record.from).is_some() => {
            let Conversation::Direct { a, b } = conv else { unreachable!() };
            if a == b { vec![a] } else { vec![a, b] }
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_schemas::Body;

    fn record(conv: &str, from: &str) -> MsgRecord {
        MsgRecord {
            id: "m1".into(),
            conv: conv.into(),
            from: from.into(),
            device: "d".into(),
            ts: 1,
            body: Body::Text { text: "x".into() },
            reply_to: None,
        }
    }

    #[test]
    fn a_direct_message_goes_to_both_sides_once() {
        assert_eq!(recipients(&record("dm:amy:bob", "amy")), ["amy", "bob"]);
        assert_eq!(recipients(&record("dm:amy:amy", "amy")), ["amy"]);
    }

    #[test]
    fn a_sender_outside_the_conversation_reaches_nobody() {
        assert!(recipients(&record("dm:amy:bob", "eve")).is_empty());
        assert!(recipients(&record("nonsense", "amy")).is_empty());
    }
}
