//! `natter-bench <scenario> [flags]`: prints a table on stderr and the full report as JSON
//! on stdout. See docs/BENCHMARKS.md for the commands behind every published figure, and
//! bench/run-all.sh for the controlled experiment that runs them all.

use anyhow::Context;
use clap::{Parser, Subcommand};
use natter_bench::{
    ceiling, control, cpu::WatchArgs, dm, fanout, history, idle, plot, presence, raw, report,
    storm, summarize,
};

#[derive(Debug, Parser)]
#[command(name = "natter-bench", about = "Load tool for Natter")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One-on-one messages at a steady offered rate.
    Dm {
        #[command(flatten)]
        options: dm::Options,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// `dm` against an XMPP server (ejabberd, see bench/peer/ejabberd.sh).
    Xmpp(natter_bench::xmpp::Options),
    /// `dm` at increasing rates until the system stops keeping up, then at half the peak.
    Sweep(dm::SweepOptions),
    /// Seed one conversation, then time history pages.
    History(history::Options),
    /// Seed many groups, then time presence_subscribe of 256 users sharing a group.
    Presence(presence::Options),
    /// Seed 200 conversations (20,000 inbox items), then time a new device's chat list.
    Chatlist(natter_bench::chatlist::Options),
    /// Natter's one-on-one rate against raw JetStream writes, in one run.
    Ceiling {
        #[command(flatten)]
        options: ceiling::Options,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// JetStream alone, as the controls of Natter's figures: write, floor, lat, fan.
    Raw(raw::Options),
    /// One message at a time to a large group, all members connected.
    Fanout {
        #[command(flatten)]
        options: fanout::Options,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Authenticated idle sockets over several gateways (or control servers): memory per
    /// user, CPU at rest.
    Idle(idle::Options),
    /// Drop every socket, send to them, reconnect all at once: time to catch up.
    Storm(storm::Options),
    /// The reconnect storm against `control-server --storm` processes.
    StormControl(storm::control::Options),
    /// A minimal tuned WebSocket server: the control of `idle` and (with --storm) `storm`.
    #[command(hide = true)]
    ControlServer(control::Options),
    #[command(hide = true)]
    IdleShard(natter_bench::shard::ShardOptions),
    #[command(hide = true)]
    StormShard(natter_bench::shard::ShardOptions),
    #[command(hide = true)]
    StormControlShard(storm::control::ShardOptions),
    /// Draw p50/p99 send → deliver latency versus offered load, per system, as a PNG.
    Plot(plot::Options),
    /// Read a bench/run-all.sh results directory; print the markdown summary.
    Summarize(summarize::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Dm { options, watch } => {
            let run = dm::run_watched(&options, &watch.watch()?).await?;
            let mut table = vec![report::DmReport::header().into(), run.row()];
            table.extend(run.cpu.iter().flat_map(|cpu| cpu.table()));
            report::emit(&run, &table)
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
        Scenario::Chatlist(options) => {
            let list = natter_bench::chatlist::run(&options).await?;
            report::emit(&list, &[])
        }
        Scenario::Presence(options) => {
            let presence = presence::run(&options).await?;
            report::emit(&presence, &[])
        }
        Scenario::Ceiling { options, watch } => {
            let ceiling = ceiling::run_watched(&options, &watch.watch()?).await?;
            report::emit(&ceiling, &ceiling.table())
        }
        Scenario::Raw(options) => {
            let raw = raw::run(&options)
                .await
                .with_context(|| format!("raw {:?}", options.mode))?;
            report::emit(&raw, &raw.table())
        }
        Scenario::Fanout { options, watch } => {
            let fanout = fanout::run_watched(&options, &watch.watch()?).await?;
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
        Scenario::StormControl(options) => {
            let storm = storm::control::run(&options).await?;
            report::emit(&storm, &storm.table())
        }
        Scenario::ControlServer(options) => control::serve(&options).await,
        Scenario::IdleShard(options) => idle::shard(&options).await,
        Scenario::StormShard(options) => storm::device::shard(&options).await,
        Scenario::StormControlShard(options) => storm::control::shard(&options).await,
        Scenario::Plot(options) => {
            for series in plot::run(&options)? {
                eprintln!("{}: {} runs", series.system, series.points.len());
            }
            eprintln!("wrote {}", options.out.display());
            Ok(())
        }
        Scenario::Summarize(options) => {
            print!("{}", summarize::run(&options)?);
            Ok(())
        }
    }
}
