//! Natter's workers: background consumers of the durable streams.
//!
//! - [`fanout`]: `MSGS` → one item in each member's inbox (and the sender's own, for their
//!   other devices), per partition in stream order; group membership is checked here.
//! - [`receipts`]: `RCPT` → `delivered` / `read` receipts in the senders' inboxes; for
//!   group messages, per-member state in the receipt book and "all" once everyone has it.
//! - [`history`]: `MSGS` → the history store (embedded redb or TiKV); pages on request.
//! - [`push`]: `INBOX` → notifications, coalesced per user, for users with no device
//!   online (presence in Redis), through a provider (a signed webhook).
//! - [`jetstream_stats`]: stream sizes and consumer backlogs as Prometheus gauges.
//! - [`canary`]: a probe message through the whole path, timed end to end.
//!
//! Every worker is a durable pull consumer with explicit acks: run more processes to add
//! throughput, kill any of them and another takes over its unacked work. Every publish
//! carries a `Nats-Msg-Id` derived from what it is about, so redelivered work stores
//! nothing twice.

pub mod canary;
pub mod fanout;
pub mod history;
pub mod jetstream_stats;
mod pull;
pub mod push;
pub mod receipts;

use std::{future::Future, pin::Pin, time::Duration};

use async_nats::jetstream;
use natter_fabric::{NatsSettings, groups::Groups, receipt_book::ReceiptBook, streams};
use tokio::sync::{broadcast, watch};

/// Which workers a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Fanout,
    Receipts,
    History,
    Push,
    /// Every worker kind in one process (the local default; history and push when
    /// configured).
    All,
}

/// What a worker process runs and where.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kind: Kind,
    pub nats: NatsSettings,
    /// Prometheus exporter address; none when the caller installed one.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub canary: Option<canary::CanarySettings>,
    /// Needed by `History`; `All` runs history when it is set.
    pub history: Option<history::HistorySettings>,
    /// Needed by `Push`; `All` runs push when it is set.
    pub push: Option<push::PushSettings>,
}

/// One long-running worker task.
pub(crate) type Task = Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot set up JetStream streams: {0}")]
    Streams(#[from] jetstream::context::CreateStreamError),
    #[error("cannot open a stream: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("cannot create a consumer: {0}")]
    Consumer(#[from] jetstream::stream::ConsumerError),
    #[error("cannot read a consumer: {0}")]
    Messages(#[from] jetstream::consumer::StreamError),
    #[error("cannot open the inbox: {0}")]
    Inbox(#[from] natter_fabric::InboxError),
    #[error("consumer {0} stopped delivering (deleted?); restart the process")]
    ConsumerEnded(String),
    #[error("cannot start the metrics exporter: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot open the groups bucket: {0}")]
    Groups(#[from] natter_fabric::groups::GroupsError),
    #[error("cannot open the receipt book: {0}")]
    Book(#[from] natter_fabric::receipt_book::BookError),
    #[error("history store: {0}")]
    History(#[from] natter_history::StoreError),
    #[error("history workers need a store: --history-dir or --tikv-pd")]
    NoHistoryStore,
    #[error("push workers need Redis settings")]
    NoPushSettings,
    #[error("Redis: {0}")]
    Redis(#[from] natter_redis::RedisError),
    #[error("cannot open the devices bucket: {0}")]
    Devices(#[from] natter_fabric::devices::DevicesError),
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
    #[error("a worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Smallest subscription buffer a worker connection gets (see `run`).
pub const MIN_SUBSCRIPTION_CAPACITY: usize = 8 * 1024;

/// How long start-up waits for JetStream to answer (a fresh cluster takes seconds).
pub const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// Runs the `kind` workers until `shutdown` completes. Work in progress at shutdown is
/// not acked and is redelivered to another worker.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let Settings {
        kind,
        nats,
        metrics_listen,
        canary,
        history,
        push,
    } = settings;
    if kind == Kind::History && history.is_none() {
        return Err(WorkerError::NoHistoryStore);
    }
    if kind == Kind::Push && push.is_none() {
        return Err(WorkerError::NoPushSettings);
    }
    if let Some(listen) = metrics_listen {
        natter_fabric::telemetry::install(listen)?;
    }
    // Counters that stay at zero in a healthy system still exist, so dashboards and alerts
    // see 0 rather than no data.
    for zero in [
        "natter_workers_slow_consumer_total",
        "natter_fanout_retries_total",
    ] {
        metrics::counter!(zero).increment(0);
    }
    // A pull consumer delivers up to its max_ack_pending messages into one subscription;
    // a smaller buffer would drop some, and they would come back only after the ack wait.
    let nats = NatsSettings {
        subscription_capacity: nats.subscription_capacity.max(MIN_SUBSCRIPTION_CAPACITY),
        ..nats
    };
    let (events, mut watch_events) = broadcast::channel(16);
    let client = natter_fabric::connect(&nats, events, Duration::from_secs(30)).await?;
    tokio::spawn(async move {
        while let Ok(event) = watch_events.recv().await {
            if let async_nats::Event::SlowConsumer(_) = event {
                metrics::counter!("natter_workers_slow_consumer_total").increment(1);
                tracing::error!(
                    "a consumer's buffer overflowed: messages come back after the ack wait"
                );
            }
        }
    });
    let js = jetstream::new(client.clone());
    streams::ensure_with_patience(&js, nats.replicas, SETUP_PATIENCE).await?;
    let groups = streams::with_patience("groups bucket", SETUP_PATIENCE, || {
        Groups::open(&js, nats.replicas)
    })
    .await?;
    let book = streams::with_patience("receipt book", SETUP_PATIENCE, || {
        ReceiptBook::open(&js, nats.replicas)
    })
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let mut tasks = tokio::task::JoinSet::new();
    if matches!(kind, Kind::Fanout | Kind::All) {
        for task in fanout::start(&js, &groups, &book, stop_rx.clone()).await? {
            tasks.spawn(task);
        }
    }
    if matches!(kind, Kind::Receipts | Kind::All) {
        tasks.spawn(receipts::start(&js, &book, stop_rx.clone()).await?);
    }
    if let Some(settings) = history.filter(|_| matches!(kind, Kind::History | Kind::All)) {
        for task in history::start(&js, &client, &groups, &settings, stop_rx.clone()).await? {
            tasks.spawn(task);
        }
    }
    if let Some(settings) = push.filter(|_| matches!(kind, Kind::Push | Kind::All)) {
        for task in push::start(&js, nats.replicas, &settings, stop_rx.clone()).await? {
            tasks.spawn(task);
        }
    }
    tasks.spawn({
        let (js, stop) = (js.clone(), stop_rx.clone());
        async move {
            jetstream_stats::run(js, stop).await;
            Ok(())
        }
    });
    if let Some(settings) = canary {
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            canary::run(settings, stop).await;
            Ok(())
        });
    }
    tracing::info!(?kind, "workers running");
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Resolves when `stop` turns true.
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.changed().await;
}
