//! Natter's workers: background consumers of the durable streams.
//!
//! - [`fanout`]: `MSGS` (group messages) → one item in each member's inbox (the sender's
//!   too, for their other devices), per partition in stream order; membership is checked
//!   here.
//! - [`receipts`]: `RCPT` (members' group marks) → `all: true` receipts in the senders'
//!   inboxes, from per-member watermarks checkpointed in KV.
//! - [`tail`]: one R1, no-ack reader of all of `INBOX`, feeding history and push.
//! - [`history`]: the history store (embedded redb or TiKV), written by the tail reader;
//!   pages and message info on request.
//! - [`push`]: notifications, coalesced per user, for users with no device online
//!   (presence in Redis), through a provider (a signed webhook).
//! - [`jetstream_stats`]: stream sizes and consumer backlogs as Prometheus gauges.
//! - [`canary`]: a probe message through the whole path, timed end to end.
//!
//! Fanout and receipts are durable pull consumers with explicit acks, one per partition,
//! pinned to one process at a time: run more processes for standby capacity, kill any of
//! them and another takes over its unacked work. Every publish carries a `Nats-Msg-Id`
//! derived from what it is about, so redelivered work stores nothing twice. The tail
//! reader keeps its own checkpoint (with the history it writes) instead of acks.

pub mod canary;
mod chats;
pub mod fanout;
pub mod history;
pub mod jetstream_stats;
pub mod push;
pub mod receipts;
pub mod tail;

use std::{future::Future, pin::Pin, time::Duration};

use async_nats::jetstream;
use natter_fabric::{NatsSettings, groups::Groups, streams, watermarks::Checkpoints};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

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
    /// How long fanout retries an inbox item the stream refuses before parking it in
    /// `DEAD` ([`fanout::REFUSED_PATIENCE`] unless configured).
    pub refused_patience: Duration,
}

/// One long-running worker task.
pub(crate) type Task = Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] natter_fabric::ConnectFailed),
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
    #[error("cannot open the receipt checkpoints: {0}")]
    Watermarks(#[from] natter_fabric::watermarks::WatermarksError),
    #[error("history store: {0}")]
    History(#[from] natter_history::StoreError),
    #[error("history workers need a store: --history-dir or --tikv-pd")]
    NoHistoryStore,
    #[error("these workers were built without TiKV (cargo feature `tikv`); use --history-dir")]
    NoTikv,
    #[error("push workers need Redis settings")]
    NoPushSettings,
    #[error("Redis: {0}")]
    Redis(#[from] natter_redis::RedisError),
    #[error("cannot open the devices bucket: {0}")]
    Devices(#[from] natter_fabric::devices::DevicesError),
    #[error("settings: {0}")]
    Settings(#[from] natter_fabric::settings::SettingsError),
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
    #[error("a worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Smallest subscription buffer a worker connection gets (see `run`).
pub const MIN_SUBSCRIPTION_CAPACITY: usize = 8 * 1024;

/// How long start-up waits for JetStream to answer (a fresh cluster takes seconds).
pub const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// The durable consumers of a partitioned worker (fanout, receipts): one per partition,
/// explicit acks, pinned to one client of `group` at a time, so each partition is processed
/// by one task in stream order; a standby worker takes a partition over when its holder has
/// not pulled for `pin_timeout`.
pub(crate) struct Pinned {
    pub group: &'static str,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub pin_timeout: Duration,
}

impl Pinned {
    /// Creates (or joins) consumer `name` of `stream` on `filter_subject`.
    pub(crate) async fn consumer(
        &self,
        stream: &async_nats::jetstream::stream::Stream<()>,
        name: &str,
        filter_subject: String,
    ) -> Result<async_nats::jetstream::consumer::PullConsumer, WorkerError> {
        use async_nats::jetstream::consumer::{AckPolicy, PriorityPolicy, pull};
        let config = pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
            priority_policy: PriorityPolicy::PinnedClient,
            priority_groups: vec![self.group.to_owned()],
            priority_timeout: self.pin_timeout,
            ..Default::default()
        };
        let consumer = natter_fabric::streams::with_patience(name, SETUP_PATIENCE, || {
            stream.create_consumer(config.clone())
        })
        .await?;
        Ok(consumer)
    }
}

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
        refused_patience,
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
        "natter_tail_restarts_total",
    ] {
        metrics::counter!(zero).increment(0);
    }
    metrics::counter!("natter_dead_letters_total", "worker" => "fanout").increment(0);
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
        // Workers read groups fresh and run no watch, so they cache none.
        Groups::open(&js, nats.replicas, 0)
    })
    .await?;
    let checkpoints = streams::with_patience("receipt checkpoints", SETUP_PATIENCE, || {
        Checkpoints::open(&js, nats.replicas)
    })
    .await?;
    let user_settings = streams::with_patience("settings bucket", SETUP_PATIENCE, || {
        natter_fabric::settings::Settings::open(&js, nats.replicas)
    })
    .await?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });

    let mut tasks = tokio::task::JoinSet::new();
    if matches!(kind, Kind::Fanout | Kind::All) {
        for task in fanout::start(&js, &groups, refused_patience, stop.clone()).await? {
            tasks.spawn(task);
        }
    }
    if matches!(kind, Kind::Receipts | Kind::All) {
        for task in receipts::start(&js, &groups, &checkpoints, stop.clone()).await? {
            tasks.spawn(task);
        }
    }
    let mut tail = tail::Tail {
        name: "push".to_owned(),
        history: None,
        push: None,
    };
    if let Some(settings) = history.filter(|_| matches!(kind, Kind::History | Kind::All)) {
        let readers = history::Readers {
            groups: &groups,
            watermarks: &checkpoints,
            settings: &user_settings,
        };
        let (store, served) = history::start(&client, readers, &settings, stop.clone()).await?;
        for task in served {
            tasks.spawn(task);
        }
        tail.name = settings.instance;
        tail.history = Some(natter_history::History::new(store));
    }
    if let Some(settings) = push.filter(|_| matches!(kind, Kind::Push | Kind::All)) {
        // Muted conversations are checked for every note: the push worker keeps a copy.
        tokio::spawn(user_settings.clone().watch(stop.clone()));
        let (noter, send) = push::start(
            &js,
            nats.replicas,
            &settings,
            user_settings.clone(),
            stop.clone(),
        )
        .await?;
        tasks.spawn(send);
        tail.push = Some(noter);
    }
    if tail.history.is_some() || tail.push.is_some() {
        tasks.spawn(tail.run(js.clone(), stop.clone()));
    }
    tasks.spawn({
        let (js, stop) = (js.clone(), stop.clone());
        async move {
            jetstream_stats::run(js, stop).await;
            Ok(())
        }
    });
    if let Some(settings) = canary {
        let stop = stop.clone();
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
