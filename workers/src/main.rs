//! `natter-workers <kind>`: runs fanout, receipts, history, or all of them, until
//! Ctrl-C/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use natter_fabric::connect::{NatsArgs, NatsSettings};
use natter_workers::{
    Kind, Settings,
    canary::CanarySettings,
    history::{Backend, HistorySettings},
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
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    nats: Option<NatsSettings>,
}

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
    let settings = Settings {
        kind: cli.kind,
        nats,
        metrics_listen: Some(cli.metrics_listen),
        canary,
        history,
    };
    natter_workers::run(settings, natter_fabric::process::shutdown_signal())
        .await
        .context("workers failed")
}
