//! History: every message in `MSGS` into the history store, and pages served on request.
//!
//! Writing: a durable pull consumer (`<instance>`) on all of `MSGS`, explicit acks. It
//! takes whatever is ready (up to [`BATCH`]), writes the batch in one store transaction,
//! then acks each message; a worker killed in between gets the batch redelivered and
//! rewrites the same keys with the same bytes (nothing doubled). Group changes in `MSGS`
//! are not history.
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
    self,
    consumer::{AckPolicy, pull},
};
use futures_util::StreamExt;
use natter_fabric::{
    records::{HistoryAnswer, HistoryQuery, MsgsEntry},
    streams, subjects,
};
use natter_history::{Embedded, History, Store, Tikv};
use natter_schemas::MessageItem;
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
    let requests = client
        .queue_subscribe(subjects::HISTORY_PAGE, QUEUE_GROUP.to_owned())
        .await
        .map_err(|e| WorkerError::Subscribe(e.to_string()))?;

    let writer = {
        let (store, stop, name) = (store.clone(), stop.clone(), settings.instance.clone());
        Box::pin(async move { write(History::new(store), consumer, name, stop).await })
            as crate::Task
    };
    let server = {
        let (store, client, stop) = (store.clone(), client.clone(), stop.clone());
        Box::pin(async move {
            serve(History::new(store), client, requests, stop).await;
            Ok(())
        }) as crate::Task
    };
    let mut tasks = vec![writer, server];
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
    let mut batches = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await?
        .ready_chunks(BATCH);
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

async fn serve(
    history: History<Store>,
    client: async_nats::Client,
    requests: async_nats::Subscriber,
    stop: watch::Receiver<bool>,
) {
    let work = requests.for_each_concurrent(CONCURRENCY, |request| {
        let (history, client) = (&history, &client);
        async move {
            let Some(reply) = request.reply else {
                return;
            };
            let started = std::time::Instant::now();
            let answer = match serde_json::from_slice::<HistoryQuery>(&request.payload) {
                Ok(query) => {
                    match history
                        .page(&query.conv, query.before.as_deref(), query.limit)
                        .await
                    {
                        Ok(page) => HistoryAnswer::Page {
                            messages: page.messages,
                            more: page.more,
                        },
                        Err(err) => HistoryAnswer::Failed {
                            error: err.to_string(),
                        },
                    }
                }
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
