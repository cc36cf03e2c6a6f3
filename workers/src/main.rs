//! `natter-workers <kind>`: runs fanout, receipts, history, push, or all of them, until
//! Ctrl-C/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use natter_fabric::connect::{NatsArgs, NatsSettings};
use natter_redis::push_queue::Coalescing;
use natter_workers::{
    Kind, Settings,
    canary::CanarySettings,
    history::{Backend, HistorySettings},
    push::{PushSettings, WebhookSettings},
};

#[derive(Debug, Parser)]
#[command(name = "natter-workers", about = "Natter's background workers")]
struct Cli {
    /// Which workers to run.
    #[arg(value_enum, default_value = "all")]
    kind: Kind,
    /// TOML file with a `[nats]` table (urls, user, password, name, replicas).
    #[arg(long, env = "NATTER_WORKERS_CONFIG")]
    config: Option<PathBuf>,
    /// Gateway address for the delivery canary (e.g. 127.0.0.1:8080); none: no canary.
    #[arg(long, env = "NATTER_CANARY_GATEWAY")]
    canary_gateway: Option<String>,
    /// HS256 secret the canary signs its probe users' tokens with.
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    canary_secret: Option<String>,
    /// Local development: without a secret, the canary signs with the built-in development
    /// secret (the one a gateway started with --dev accepts).
    #[arg(long, env = "NATTER_DEV")]
    dev: bool,
    /// Milliseconds between probes.
    #[arg(long, env = "NATTER_CANARY_EVERY_MS", default_value_t = 10_000)]
    canary_every_ms: u64,
    /// Prometheus `/metrics` listen address.
    #[arg(
        long,
        env = "NATTER_WORKERS_METRICS_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    metrics_listen: std::net::SocketAddr,
    /// Embedded history store directory (redb). Each process using the embedded store
    /// needs its own directory and its own --history-instance.
    #[arg(long, env = "NATTER_HISTORY_DIR", default_value = ".run/history")]
    history_dir: PathBuf,
    /// TiKV PD endpoints (host:port, comma-separated): history goes to TiKV instead of the
    /// embedded store.
    #[arg(long, env = "NATTER_TIKV_PD", value_delimiter = ',')]
    tikv_pd: Vec<String>,
    /// The history consumer's name: unique per embedded store, shared by TiKV workers.
    #[arg(long, env = "NATTER_HISTORY_INSTANCE", default_value = "history")]
    history_instance: String,
    /// Delete history older than this many days (0: keep forever).
    #[arg(long, env = "NATTER_HISTORY_RETENTION_DAYS", default_value_t = 0)]
    history_retention_days: u64,
    /// Run without history (e.g. fanout-only processes under `all`).
    #[arg(long)]
    no_history: bool,
    /// Redis for push coalescing and presence, e.g. redis://127.0.0.1:6379.
    #[arg(
        long,
        env = "NATTER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Push notifications go to this URL as signed JSON POSTs (http://…).
    #[arg(long, env = "NATTER_PUSH_WEBHOOK_URL")]
    push_webhook_url: Option<String>,
    /// Key of the webhook's X-Natter-Signature (HMAC-SHA256).
    #[arg(long, env = "NATTER_PUSH_WEBHOOK_SECRET", hide_env_values = true)]
    push_webhook_secret: Option<String>,
    /// A user's first message opens a window this long; one notification closes it.
    #[arg(long, env = "NATTER_PUSH_WINDOW_MS", default_value_t = 3_000)]
    push_window_ms: u64,
    /// Least time between two notifications to one user.
    #[arg(long, env = "NATTER_PUSH_MIN_INTERVAL_MS", default_value_t = 30_000)]
    push_min_interval_ms: u64,
    /// Put message text (up to 200 characters) in notifications.
    #[arg(long, env = "NATTER_PUSH_INCLUDE_TEXT")]
    push_include_text: bool,
    /// Run without push (e.g. processes under `all` that should not notify).
    #[arg(long)]
    no_push: bool,
    /// Seconds fanout retries an inbox item the stream keeps refusing (an inbox over its
    /// limit, a full stream) before parking it in the `DEAD` stream and moving on.
    #[arg(long, env = "NATTER_REFUSED_PATIENCE_SECS", default_value_t = natter_workers::fanout::REFUSED_PATIENCE.as_secs())]
    refused_patience_secs: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    nats: Option<NatsSettings>,
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    natter_fabric::process::init_tracing();
    let cli = Cli::parse();
    let file: FileConfig = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let mut nats = file.nats.unwrap_or_else(|| NatsSettings {
        name: "natter-workers".into(),
        ..NatsSettings::default()
    });
    cli.nats.apply(&mut nats);
    let secret = cli
        .canary_secret
        .or_else(|| cli.dev.then(|| natter_auth::DEV_JWT_SECRET.to_owned()));
    let canary = match (cli.canary_gateway, secret) {
        (Some(gateway), Some(secret)) => Some(CanarySettings {
            gateway,
            secret,
            every: std::time::Duration::from_millis(cli.canary_every_ms),
            timeout: std::time::Duration::from_secs(5),
        }),
        (Some(_), None) => {
            anyhow::bail!("the canary needs the gateway's JWT secret (NATTER_JWT_SECRET, or --dev)")
        }
        (None, _) => None,
    };
    let backend = if cli.tikv_pd.is_empty() {
        Backend::Embedded(cli.history_dir)
    } else {
        Backend::Tikv(cli.tikv_pd)
    };
    let history = (!cli.no_history).then_some(HistorySettings {
        instance: cli.history_instance,
        backend,
        retention_days: cli.history_retention_days,
    });
    let webhook = match (cli.push_webhook_url, cli.push_webhook_secret) {
        (Some(url), Some(secret)) => Some(WebhookSettings { url, secret }),
        (Some(_), None) => anyhow::bail!("the push webhook needs NATTER_PUSH_WEBHOOK_SECRET"),
        (None, _) => None,
    };
    let push = (!cli.no_push).then(|| PushSettings {
        redis: natter_redis::RedisSettings {
            url: cli.redis_url,
            ..Default::default()
        },
        coalescing: Coalescing {
            window: std::time::Duration::from_millis(cli.push_window_ms),
            min_interval: std::time::Duration::from_millis(cli.push_min_interval_ms),
        },
        include_text: cli.push_include_text,
        webhook,
    });
    let settings = Settings {
        kind: cli.kind,
        nats,
        metrics_listen: Some(cli.metrics_listen),
        canary,
        history,
        push,
        refused_patience: std::time::Duration::from_secs(cli.refused_patience_secs),
    };
    natter_workers::run(settings, natter_fabric::process::shutdown_signal())
        .await
        .context("workers failed")
}
