//! `natter-bench <scenario> [flags]`: prints a table on stderr and the full report as JSON
//! on stdout. See docs/BENCHMARKS.md for the commands behind every published figure.

use clap::{Parser, Subcommand};
use natter_bench::{ceiling, dm, fanout, history, idle, plot, report, storm};

#[derive(Debug, Parser)]
#[command(name = "natter-bench", about = "Load tool for Natter")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One-on-one messages at a steady offered rate.
    Dm(dm::Options),
    /// `dm` against an XMPP server (ejabberd, see bench/peer/ejabberd.sh).
    Xmpp(natter_bench::xmpp::Options),
    /// `dm` at increasing rates until the system stops keeping up, then at half the peak.
    Sweep(dm::SweepOptions),
    /// Seed one conversation, then time history pages.
    History(history::Options),
    /// Natter's one-on-one rate against raw JetStream writes, in one run.
    Ceiling(ceiling::Options),
    /// One message at a time to a large group, all members connected.
    Fanout(fanout::Options),
    /// Authenticated idle sockets over several gateways: memory per user, CPU at rest.
    Idle(idle::Options),
    /// Drop every socket, send to them, reconnect all at once: time to catch up.
    Storm(storm::Options),
    #[command(hide = true)]
    IdleShard(natter_bench::shard::ShardOptions),
    #[command(hide = true)]
    StormShard(natter_bench::shard::ShardOptions),
    /// Draw p50/p99 send → deliver latency versus offered load, per system, as a PNG.
    Plot(plot::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Dm(options) => {
            let run = dm::run(&options).await?;
            report::emit(&run, &[report::DmReport::header().into(), run.row()])
        }
        Scenario::Xmpp(options) => {
            let run = natter_bench::xmpp::run(&options).await?;
            report::emit(&run, &[report::DmReport::header().into(), run.row()])
        }
        Scenario::Sweep(options) => {
            eprintln!("{}", report::DmReport::header());
            let sweep = dm::sweep(&options).await?;
            report::emit(
                &sweep,
                &[format!("peak kept up: {:.0} msg/s", sweep.peak_per_s)],
            )
        }
        Scenario::History(options) => {
            let page = history::run(&options).await?;
            report::emit(&page, &[])
        }
        Scenario::Ceiling(options) => {
            let ceiling = ceiling::run(&options).await?;
            report::emit(&ceiling, &ceiling.table())
        }
        Scenario::Fanout(options) => {
            let fanout = fanout::run(&options).await?;
            report::emit(&fanout, &fanout.table())
        }
        Scenario::Idle(options) => {
            let idle = idle::run(&options).await?;
            report::emit(&idle, &idle.table())
        }
        Scenario::Storm(options) => {
            let storm = storm::run(&options).await?;
            report::emit(&storm, &storm.table())
        }
        Scenario::IdleShard(options) => idle::shard(&options).await,
        Scenario::StormShard(options) => storm::shard(&options).await,
        Scenario::Plot(options) => {
            for series in plot::run(&options)? {
                eprintln!("{}: {} runs", series.system, series.points.len());
            }
            eprintln!("wrote {}", options.out.display());
            Ok(())
        }
    }
}
