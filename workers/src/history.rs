//! History: every message in `MSGS` into the history store, and pages served on request.
//!
//! Writing: a durable pull consumer (`<instance>`) on all of `MSGS`, explicit acks. It
//! takes whatever is ready (up to [`BATCH`]), writes the batch in one store transaction,
//! then acks each message; a worker killed in between gets the batch redelivered and
//! rewrites the same keys with the same bytes (nothing doubled). Group changes in `MSGS`
//! are not history.
//!
//! Ticks: a second durable consumer (`<instance>-receipts`) on `RCPT` moves each member's
//! delivered and read watermarks per conversation (one writer, events in order; a
//! delivered event names an inbox range, read back by direct get like the receipts worker
//! does). A page answers the reader's own messages with their ticks.
//!
//! Serving: request/reply on `history.page` in the queue group `history`, so each request
//! is answered once by whichever history worker NATS picks. Gateways check membership
//! before asking; workers never see a user's identity.
//!
//! Scaling: with TiKV, processes share one store: give them the same instance name and
//! they split the writing between them. With the embedded store each process has its own
//! file, so it needs its own instance name (its own consumer, a complete copy): more
//! processes add read capacity and availability, not write capacity.

use std::{path::PathBuf, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
};
use futures_util::StreamExt;
use natter_fabric::{
    Inbox,
    groups::Groups,
    records::{HistoryAnswer, HistoryQuery, MsgsEntry, RcptEvent},
    streams, subjects,
};
use natter_history::{Embedded, History, Mark, Marks, Store, Tikv, ticks};
use natter_schemas::{Conversation, HistoryMessage, InboxItem, MessageItem};
use tokio::sync::watch;

use crate::{SETUP_PATIENCE, WorkerError, stopped};

/// Most messages written per store transaction.
pub const BATCH: usize = 256;
/// Requests answered at once by one process.
const CONCURRENCY: usize = 32;
const QUEUE_GROUP: &str = "history";

/// Where history lives and who this worker is.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// Durable consumer name: unique per embedded store, shared by TiKV workers.
    pub instance: String,
    pub backend: Backend,
    /// Messages older than this many days are deleted (0: kept forever).
    pub retention_days: u64,
}

#[derive(Debug, Clone)]
pub enum Backend {
    /// redb in this directory (the single-machine default).
    Embedded(PathBuf),
    /// A TiKV cluster's PD endpoints.
    Tikv(Vec<String>),
}

/// Opens the store and returns the writer, the page server and the retention sweep.
pub async fn start(
    js: &jetstream::Context,
    client: &async_nats::Client,
    groups: &Groups,
    settings: &HistorySettings,
    stop: watch::Receiver<bool>,
) -> Result<Vec<crate::Task>, WorkerError> {
    let store = match &settings.backend {
        Backend::Embedded(dir) => Store::Embedded(Embedded::open(dir)?),
        Backend::Tikv(pd) => Store::Tikv(Tikv::connect(pd.clone()).await?),
    };
    let stream = js.get_stream_no_info(streams::MSGS).await?;
    let config = pull::Config {
        durable_name: Some(settings.instance.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 2 * BATCH as i64,
        ..Default::default()
    };
    let consumer: jetstream::consumer::PullConsumer =
        streams::with_patience(&settings.instance, SETUP_PATIENCE, || {
            stream.get_or_create_consumer(&settings.instance, config.clone())
        })
        .await?;
    let receipts_name = format!("{}-receipts", settings.instance);
    let rcpt = js.get_stream_no_info(streams::RCPT).await?;
    let receipts_config = pull::Config {
        durable_name: Some(receipts_name.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let receipts: jetstream::consumer::PullConsumer =
        streams::with_patience(&receipts_name, SETUP_PATIENCE, || {
            rcpt.get_or_create_consumer(&receipts_name, receipts_config.clone())
        })
        .await?;
    let inbox = Inbox::open(js).await?;
    let requests = client
        .queue_subscribe(subjects::HISTORY_PAGE, QUEUE_GROUP.to_owned())
        .await
        .map_err(|e| WorkerError::Subscribe(e.to_string()))?;

    let writer = {
        let (store, stop, name) = (store.clone(), stop.clone(), settings.instance.clone());
        Box::pin(async move { write(History::new(store), consumer, name, stop).await })
            as crate::Task
    };
    let marker = {
        let (store, stop) = (store.clone(), stop.clone());
        Box::pin(
            async move { mark(History::new(store), receipts, inbox, receipts_name, stop).await },
        ) as crate::Task
    };
    let server = {
        let (store, client, stop) = (store.clone(), client.clone(), stop.clone());
        let groups = groups.clone();
        Box::pin(async move {
            serve(History::new(store), groups, client, requests, stop).await;
            Ok(())
        }) as crate::Task
    };
    let mut tasks = vec![writer, marker, server];
    if settings.retention_days > 0 {
        let days = settings.retention_days;
        tasks.push(Box::pin(async move {
            sweep(History::new(store), days, stop).await;
            Ok(())
        }));
    }
    Ok(tasks)
}

async fn write(
    history: History<Store>,
    consumer: jetstream::consumer::PullConsumer,
    name: String,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let mut batches = crate::pull::messages(consumer, BATCH).ready_chunks(BATCH);
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            _ = &mut stop => return Ok(()),
            next = batches.next() => next.ok_or_else(|| WorkerError::ConsumerEnded(name.clone()))?,
        };
        let messages: Vec<_> = batch
            .into_iter()
            .filter_map(|next| {
                next.map_err(|err| tracing::warn!(error = %err, "history pull status"))
                    .ok()
            })
            .collect();
        let items: Vec<MessageItem> = messages
            .iter()
            .filter_map(|m| match serde_json::from_slice::<MsgsEntry>(&m.payload) {
                Ok(MsgsEntry::Message(record)) => Some(record.to_item()),
                Ok(MsgsEntry::GroupEvent(_)) => None,
                Err(err) => {
                    tracing::error!(error = %err, "unreadable MSGS record; not in history");
                    None
                }
            })
            .collect();
        let started = std::time::Instant::now();
        // The batch cannot be acked before it is stored: retry until the store takes it.
        while let Err(err) = history.record(&items).await {
            metrics::counter!("natter_history_write_retries_total").increment(1);
            tracing::warn!(error = %err, "history store failed; retrying the batch");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        metrics::histogram!("natter_history_write_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("natter_history_messages_total").increment(items.len() as u64);
        for message in &messages {
            if let Err(err) = message.ack().await {
                tracing::warn!(error = %err, "ack failed; the message will be written again");
            }
        }
    }
}

/// Most inbox items one delivered event is read back for (as in the receipts worker).
const MAX_RANGE: usize = 10_000;

async fn mark(
    history: History<Store>,
    consumer: jetstream::consumer::PullConsumer,
    inbox: Inbox,
    name: String,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let mut events = crate::pull::messages(consumer, crate::pull::BATCH);
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            _ = &mut stop => return Ok(()),
            next = events.next() => next.ok_or_else(|| WorkerError::ConsumerEnded(name.clone()))?,
        };
        let message = match next {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "history receipts pull status");
                continue;
            }
        };
        let ack = match serde_json::from_slice::<RcptEvent>(&message.payload) {
            Ok(event) => match apply(&history, &inbox, event).await {
                Ok(()) => AckKind::Ack,
                Err(err) => {
                    tracing::warn!(error = %err, "history receipt event failed; redelivered");
                    AckKind::Nak(Some(Duration::from_secs(1)))
                }
            },
            Err(_) => AckKind::Term,
        };
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!(error = %err, "ack failed; the event comes again");
        }
    }
}

/// Moves the watermarks one receipt event implies.
async fn apply(history: &History<Store>, inbox: &Inbox, event: RcptEvent) -> Result<(), String> {
    match event {
        RcptEvent::Read { by, conv, up_to } => {
            history
                .advance(Mark::Read, &conv, &by, &up_to)
                .await
                .map_err(|e| e.to_string())?;
        }
        RcptEvent::Delivered {
            by, after, upto, ..
        } => {
            let items = inbox
                .read_after(&by, after, upto, MAX_RANGE)
                .await
                .map_err(|e| e.to_string())?;
            let mut newest: std::collections::HashMap<String, String> = Default::default();
            for stored in items {
                if let Ok(InboxItem::Msg(m)) = serde_json::from_slice(&stored.payload)
                    && m.from != by
                {
                    let slot = newest.entry(m.conv).or_default();
                    if m.id > *slot {
                        *slot = m.id;
                    }
                }
            }
            for (conv, id) in newest {
                history
                    .advance(Mark::Delivered, &conv, &by, &id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// The watermarks of everyone in `conv` but `reader` (group members as they are now).
async fn others_marks(
    history: &History<Store>,
    groups: &Groups,
    conv: &str,
    reader: &str,
) -> Result<Vec<Marks>, String> {
    let others: Vec<String> = match Conversation::parse(conv).map_err(|e| e.to_string())? {
        Conversation::Direct { a, b } => [a, b].into_iter().filter(|u| u != reader).collect(),
        Conversation::Group(gid) => groups
            .get(&gid)
            .await
            .map_err(|e| e.to_string())?
            .map(|g| g.members.iter().filter(|m| *m != reader).cloned().collect())
            .unwrap_or_default(),
    };
    let mut marks = Vec::with_capacity(others.len());
    for other in &others {
        marks.push(
            history
                .marks(conv, other)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(marks)
}

/// One page with the reader's own messages' ticks.
async fn page(
    history: &History<Store>,
    groups: &Groups,
    query: &HistoryQuery,
) -> Result<HistoryAnswer, String> {
    let page = history
        .page(&query.conv, query.before.as_deref(), query.limit)
        .await
        .map_err(|e| e.to_string())?;
    let own = page.messages.iter().any(|m| m.from == query.reader);
    let marks = if own {
        others_marks(history, groups, &query.conv, &query.reader).await?
    } else {
        Vec::new()
    };
    let messages = page
        .messages
        .into_iter()
        .map(|message| HistoryMessage {
            status: (message.from == query.reader).then(|| ticks(&message.id, &marks)),
            message,
        })
        .collect();
    Ok(HistoryAnswer::Page {
        messages,
        more: page.more,
    })
}

async fn serve(
    history: History<Store>,
    groups: Groups,
    client: async_nats::Client,
    requests: async_nats::Subscriber,
    stop: watch::Receiver<bool>,
) {
    let work = requests.for_each_concurrent(CONCURRENCY, |request| {
        let (history, client, groups) = (&history, &client, &groups);
        async move {
            let Some(reply) = request.reply else {
                return;
            };
            let started = std::time::Instant::now();
            let answer = match serde_json::from_slice::<HistoryQuery>(&request.payload) {
                Ok(query) => page(history, groups, &query)
                    .await
                    .unwrap_or_else(|error| HistoryAnswer::Failed { error }),
                Err(err) => HistoryAnswer::Failed {
                    error: format!("bad query: {err}"),
                },
            };
            metrics::histogram!("natter_history_page_seconds")
                .record(started.elapsed().as_secs_f64());
            let payload = serde_json::to_vec(&answer).expect("answers serialize");
            if let Err(err) = client.publish(reply, payload.into()).await {
                tracing::warn!(error = %err, "history answer not sent");
            }
        }
    });
    tokio::select! {
        _ = stopped(stop) => {}
        _ = work => tracing::error!("history requests subscription ended"),
    }
}

/// Deletes messages older than `days`, once an hour.
async fn sweep(history: History<Store>, days: u64, stop: watch::Receiver<bool>) {
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        let cutoff = natter_fabric::now_millis().saturating_sub(days * 24 * 3600 * 1000);
        match history.forget_before(cutoff).await {
            Ok(conversations) => tracing::info!(conversations, "history retention sweep done"),
            Err(err) => tracing::warn!(error = %err, "history retention sweep failed"),
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}
