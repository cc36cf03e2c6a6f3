//! Receipts: device acks and read marks become receipt items in the senders' inboxes.
//!
//! A `delivered` event names a range of the acking user's inbox; the worker reads that
//! range by direct get and sends a `delivered` receipt for each message in it that someone
//! else sent. A `read` event becomes one `read` receipt (a watermark) for the other side
//! of the conversation. Receipt items carry `Nats-Msg-Id = rcpt:<message>:<by>:<status>`,
//! so a redelivered event, or a second device acking the same message, stores nothing new
//! within the duplicate window. Clients keep the highest status they saw per message.
//!
//! Group messages are tracked per member in the receipt book (see
//! `natter_fabric::receipt_book`): each member's first `delivered` and first `read` of a
//! message becomes one receipt to the sender, and the one that completes the set says
//! `all: true` (two ticks, then blue ticks). A `read` in a group is a watermark: it covers
//! the member's earlier unread messages of that group, whoever sent them.

use std::{collections::BTreeSet, future::Future};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
};
use bytes::Bytes;
use futures_util::{StreamExt, future::join_all};
use natter_fabric::{
    Inbox, PublishFailed, now_millis, publish_durable,
    receipt_book::{BookError, Marked, MessageState, ReceiptBook},
    records::RcptEvent,
    streams, subjects,
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
    book: &ReceiptBook,
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
    let book = book.clone();
    Ok(async move {
        let messages = crate::pull::messages(consumer, crate::pull::BATCH);
        let work = messages.for_each_concurrent(CONCURRENCY, |next| {
            let (js, inbox, book) = (&js, &inbox, &book);
            async move {
                let message = match next {
                    Ok(message) => message,
                    Err(err) => {
                        tracing::warn!(error = %err, "receipts consumer hiccup");
                        return;
                    }
                };
                let ack = match serde_json::from_slice::<RcptEvent>(&message.payload) {
                    Ok(event) => match handle(js, inbox, book, event, redelivered(&message)).await {
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
    #[error(transparent)]
    Book(#[from] BookError),
}

/// Most rounds of a group read catching deliveries that raced it.
const READ_ROUNDS: usize = 8;

/// Whether JetStream delivered this event before (a worker died or failed on it).
fn redelivered(message: &jetstream::Message) -> bool {
    message.info().is_ok_and(|info| info.delivered > 1)
}

/// `again`: the event was delivered before, so a worker may have stored its marks and died
/// before publishing their receipts. Marks already in the book then still yield their
/// receipts; the publishes carry the same `Nats-Msg-Id` as the first ones, so a receipt
/// that did go out is not stored twice.
async fn handle(
    js: &jetstream::Context,
    inbox: &Inbox,
    book: &ReceiptBook,
    event: RcptEvent,
    again: bool,
) -> Result<(), ReceiptError> {
    let ts = now_millis();
    let kind = match &event {
        RcptEvent::Delivered { .. } => "delivered",
        RcptEvent::Read { .. } => "read",
    };
    metrics::counter!("natter_receipts_events_total", "kind" => kind).increment(1);
    let mut receipts: Vec<(String, ReceiptItem)> = Vec::new();
    // Marks in the receipt book happen one by one; a mark stored is never "new" again, so
    // the receipts of the marks made so far go out even when a later one fails (the event
    // is then redelivered for the rest).
    let marked = mark_all(inbox, book, event, ts, again, &mut receipts).await;
    publish_all(js, receipts).await?;
    marked
}

/// Records `event` in the receipt book (group messages) and collects the receipts it
/// produces into `receipts` as it goes.
async fn mark_all(
    inbox: &Inbox,
    book: &ReceiptBook,
    event: RcptEvent,
    ts: u64,
    again: bool,
    receipts: &mut Vec<(String, ReceiptItem)>,
) -> Result<(), ReceiptError> {
    match event {
        RcptEvent::Delivered {
            by, after, upto, ..
        } => {
            for stored in inbox.read_after(&by, after, upto, MAX_RANGE).await? {
                let Ok(InboxItem::Msg(m)) = serde_json::from_slice(&stored.payload) else {
                    continue;
                };
                if m.from == by {
                    continue;
                }
                match Conversation::parse(&m.conv) {
                    Ok(Conversation::Group(gid)) => {
                        let covered = book.delivered_to(&gid, &by, &m.id).await?;
                        if let Some((state, marked)) = book.mark(&m.id, &by, covered).await? {
                            let marked = if again {
                                marked.or_reached(&state, &by)
                            } else {
                                marked
                            };
                            receipts.extend(group_receipts(&m.id, &by, &state, marked, ts));
                        }
                    }
                    _ => receipts.push((
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
                }
            }
        }
        RcptEvent::Read { by, conv, up_to } => match Conversation::parse(&conv) {
            Ok(Conversation::Group(gid)) => {
                group_read(book, &gid, &by, &up_to, ts, again, receipts).await?;
            }
            Ok(c) => {
                if let Some(peer) = c.peer_of(&by).filter(|peer| *peer != by) {
                    receipts.push((
                        peer.to_owned(),
                        ReceiptItem {
                            conv,
                            id: up_to,
                            by,
                            status: ReceiptStatus::Read,
                            ts,
                            all: None,
                        },
                    ));
                }
            }
            Err(_) => {}
        },
    }
    Ok(())
}

async fn publish_all(
    js: &jetstream::Context,
    receipts: Vec<(String, ReceiptItem)>,
) -> Result<(), ReceiptError> {
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

/// A member read a group up to `up_to`: marks that message and every earlier unread one
/// delivered to them. Deliveries recorded while this runs are caught in another round.
async fn group_read(
    book: &ReceiptBook,
    gid: &str,
    by: &str,
    up_to: &str,
    ts: u64,
    again: bool,
    receipts: &mut Vec<(String, ReceiptItem)>,
) -> Result<(), ReceiptError> {
    let mut done = BTreeSet::new();
    let mut todo = book.member(gid, by).await?.covered_by(up_to);
    todo.push(up_to.to_owned());
    for _ in 0..READ_ROUNDS {
        for id in todo {
            if let Some((state, marked)) = book.mark(&id, by, true).await? {
                let marked = if again {
                    marked.or_reached(&state, by)
                } else {
                    marked
                };
                receipts.extend(group_receipts(&id, by, &state, marked, ts));
            }
            done.insert(id);
        }
        todo = book.finish_read(gid, by, up_to, &done).await?;
        if todo.is_empty() {
            break;
        }
    }
    Ok(())
}

/// The receipts one mark produces, for the message's sender.
fn group_receipts(
    id: &str,
    by: &str,
    state: &MessageState,
    marked: Marked,
    ts: u64,
) -> Vec<(String, ReceiptItem)> {
    [
        (ReceiptStatus::Delivered, marked.delivered),
        (ReceiptStatus::Read, marked.read),
    ]
    .into_iter()
    .filter_map(|(status, all)| {
        let all = all?;
        Some((
            state.from.clone(),
            ReceiptItem {
                conv: state.conv.clone(),
                id: id.to_owned(),
                by: by.to_owned(),
                status,
                ts,
                all: Some(all),
            },
        ))
    })
    .collect()
}
