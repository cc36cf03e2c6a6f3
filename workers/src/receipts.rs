//! Receipts: device acks and read marks become receipt items in the senders' inboxes.
//!
//! A `delivered` event names a range of the acking user's inbox; the worker reads that
//! range by direct get and sends a `delivered` receipt for each message in it that someone
//! else sent. A `read` event becomes one `read` receipt (a watermark) for the other side
//! of the conversation. Receipt items carry `Nats-Msg-Id = rcpt:<message>:<by>:<status>`,
//! so a redelivered event, or a second device acking the same message, stores nothing new
//! within the duplicate window. Clients keep the highest status they saw per message.

use std::future::Future;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
};
use bytes::Bytes;
use futures_util::{StreamExt, future::join_all};
use natter_fabric::{
    Inbox, PublishFailed, now_millis, publish_durable, records::RcptEvent, streams, subjects,
};
use natter_schemas::{Conversation, InboxItem, ReceiptItem, ReceiptStatus};
use tokio::sync::watch;

use crate::{SETUP_PATIENCE, WorkerError, stopped};

/// How long a receipt event may stay unacked before JetStream redelivers it.
pub const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Events handled at once by one process.
const CONCURRENCY: usize = 64;
/// Most inbox items one `delivered` event may cover; a larger ack is read in this many
/// items and the rest gets no receipts (a device acks as it goes, so this is not reached).
const MAX_RANGE: usize = 10_000;

pub async fn start(
    js: &jetstream::Context,
    stop: watch::Receiver<bool>,
) -> Result<impl Future<Output = Result<(), WorkerError>> + use<>, WorkerError> {
    let stream = js.get_stream_no_info(streams::RCPT).await?;
    let config = pull::Config {
        durable_name: Some("receipts".into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 1_024,
        ..Default::default()
    };
    let consumer: jetstream::consumer::PullConsumer =
        streams::with_patience("receipts consumer", SETUP_PATIENCE, || {
            stream.get_or_create_consumer("receipts", config.clone())
        })
        .await?;
    let inbox = Inbox::open(js).await?;
    let js = js.clone();
    Ok(async move {
        let messages = consumer.messages().await?;
        let work = messages.for_each_concurrent(CONCURRENCY, |next| {
            let (js, inbox) = (&js, &inbox);
            async move {
                let message = match next {
                    Ok(message) => message,
                    Err(err) => {
                        tracing::warn!(error = %err, "receipts consumer hiccup");
                        return;
                    }
                };
                let ack = match serde_json::from_slice::<RcptEvent>(&message.payload) {
                    Ok(event) => match handle(js, inbox, event).await {
                        Ok(()) => AckKind::Ack,
                        Err(err) => {
                            tracing::warn!(error = %err, "receipt event failed; will be redelivered");
                            AckKind::Nak(Some(std::time::Duration::from_secs(1)))
                        }
                    },
                    Err(err) => {
                        tracing::error!(error = %err, "unreadable receipt event; dropped");
                        AckKind::Term
                    }
                };
                if let Err(err) = message.ack_with(ack).await {
                    tracing::warn!(error = %err, "ack failed; the event will be redelivered");
                }
            }
        });
        tokio::select! {
            _ = stopped(stop) => Ok(()),
            _ = work => Err(WorkerError::ConsumerEnded("receipts".into())),
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error(transparent)]
    Inbox(#[from] natter_fabric::InboxError),
    #[error(transparent)]
    Publish(#[from] PublishFailed),
}

async fn handle(
    js: &jetstream::Context,
    inbox: &Inbox,
    event: RcptEvent,
) -> Result<(), ReceiptError> {
    let ts = now_millis();
    let kind = match &event {
        RcptEvent::Delivered { .. } => "delivered",
        RcptEvent::Read { .. } => "read",
    };
    metrics::counter!("natter_receipts_events_total", "kind" => kind).increment(1);
    let receipts: Vec<(String, ReceiptItem)> = match event {
        RcptEvent::Delivered {
            by, after, upto, ..
        } => inbox
            .read_after(&by, after, upto, MAX_RANGE)
            .await?
            .into_iter()
            .filter_map(|stored| match serde_json::from_slice(&stored.payload) {
                Ok(InboxItem::Msg(m)) if m.from != by => Some((
                    m.from,
                    ReceiptItem {
                        conv: m.conv,
                        id: m.id,
                        by: by.clone(),
                        status: ReceiptStatus::Delivered,
                        ts,
                        all: None,
                    },
                )),
                _ => None,
            })
            .collect(),
        RcptEvent::Read { by, conv, up_to } => match Conversation::parse(&conv) {
            Ok(c) => match c.peer_of(&by) {
                Some(peer) if peer != by => vec![(
                    peer.to_owned(),
                    ReceiptItem {
                        conv,
                        id: up_to,
                        by,
                        status: ReceiptStatus::Read,
                        ts,
                        all: None,
                    },
                )],
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        },
    };
    let publishes = receipts.into_iter().map(|(to, receipt)| async move {
        let status = match receipt.status {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Read => "read",
        };
        let msg_id = format!("rcpt:{}:{}:{status}", receipt.id, receipt.by);
        metrics::counter!("natter_receipts_sent_total", "status" => status).increment(1);
        let item = Bytes::from(InboxItem::Receipt(receipt).to_json());
        publish_durable(js, &subjects::inbox(&to), &msg_id, item).await
    });
    for result in join_all(publishes).await {
        result?;
    }
    Ok(())
}
