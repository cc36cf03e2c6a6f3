//! `natter-workers <kind>`: runs fanout, receipts, or all of them, until Ctrl-C/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use natter_fabric::connect::{NatsArgs, NatsSettings};
use natter_workers::Kind;

#[derive(Debug, Parser)]
#[command(name = "natter-workers", about = "Natter's background workers")]
struct Cli {
    /// Which workers to run.
    #[arg(value_enum, default_value = "all")]
    kind: Kind,
    /// TOML file with a `[nats]` table (urls, user, password, name, replicas).
    #[arg(long, env = "NATTER_WORKERS_CONFIG")]
    config: Option<PathBuf>,
    /// Prometheus `/metrics` listen address.
    #[arg(
        long,
        env = "NATTER_WORKERS_METRICS_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    metrics_listen: std::net::SocketAddr,
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
    natter_workers::run(
        cli.kind,
        nats,
        Some(cli.metrics_listen),
        natter_fabric::process::shutdown_signal(),
    )
    .await
    .context("workers failed")
}
