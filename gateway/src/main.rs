//! `natter-gateway`: parses configuration, sets up logging, binds, and runs the gateway
//! until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use natter_gateway::config::Cli;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    natter_fabric::process::init_tracing();
    let config = Cli::parse().load()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    natter_gateway::run(listener, config, natter_fabric::process::shutdown_signal())
        .await
        .context("gateway failed")
}
