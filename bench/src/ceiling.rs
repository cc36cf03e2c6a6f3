//! Scenario `ceiling`: how close Natter gets to the physical limit of its fabric. In one
//! run it first drives Natter's one-on-one path (`dm`) at the offered rate, then does as
//! many JetStream writes as Natter confirmed messages with `raw write`'s writer: the same
//! 3-node cluster, an R3 file stream, payloads of the same size, `in_flight`
//! unacknowledged publishes at a time (no gateway, no worker, no WebSocket). The report
//! gives both rates, Natter's messages/s as a ratio of the raw writes/s and, when the
//! nats-servers are watched, Natter's server CPU per message in W (server CPU per raw
//! write).
//!
//! The raw side takes as long as Natter's count of writes takes, often under 2 s, so its
//! rate swings from run to run; `bench/run-all.sh` uses `raw write` for ≥ 5 s before and
//! after the Natter steps instead.

use serde::Serialize;

use crate::{
    cpu::Watch,
    dm, raw,
    raw::write::{Amount, WriteReport, WriteSpec},
    report::DmReport,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub dm: dm::Options,
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
    )]
    pub nats: String,
    #[arg(long, default_value = "bench")]
    pub nats_user: String,
    #[arg(long, default_value = "bench-dev", env = "NATTER_BENCH_NATS_PASSWORD")]
    pub nats_password: String,
    /// Raw publishes awaiting their JetStream ack at any time.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Bytes per raw write (Natter's stored message is about this size).
    #[arg(long, default_value_t = 300)]
    pub payload: usize,
}

#[derive(Debug, Serialize)]
pub struct CeilingReport {
    pub natter: DmReport,
    pub raw_jetstream: WriteReport,
    /// Natter's delivered messages/s over the raw writes/s.
    pub ratio: f64,
    /// nats-servers' CPU per Natter message over their CPU per raw write (W).
    pub nats_cpu_per_message_in_w: Option<f64>,
}

impl CeilingReport {
    pub fn table(&self) -> Vec<String> {
        let mut lines = vec![DmReport::header().into(), self.natter.row()];
        lines.extend(self.natter.cpu.iter().flat_map(|cpu| cpu.table()));
        lines.extend(self.raw_jetstream.table());
        lines.extend(self.raw_jetstream.cpu.table());
        lines.push(format!("Natter / raw = {:.3}", self.ratio));
        if let Some(w) = self.nats_cpu_per_message_in_w {
            lines.push(format!("nats-servers' CPU per Natter message = {w:.1} W"));
        }
        lines
    }
}

/// A ceiling run, measuring only the load tool's CPU.
pub async fn run(options: &Options) -> anyhow::Result<CeilingReport> {
    run_watched(options, &Watch::default()).await
}

pub async fn run_watched(options: &Options, watch: &Watch) -> anyhow::Result<CeilingReport> {
    let natter = dm::run_watched(&options.dm, watch).await?;
    eprintln!("{}", natter.row());
    let client = raw::connect(&options.nats, &options.nats_user, &options.nats_password).await?;
    let spec = WriteSpec {
        amount: Amount::Writes(natter.confirmed.max(1)),
        in_flight: options.in_flight,
        payload: options.payload,
    };
    let raw = raw::write::run(&client, &spec, watch).await?;
    let per_message = natter
        .cpu
        .as_ref()
        .and_then(|cpu| cpu.nats_servers_ms_per_message);
    Ok(CeilingReport {
        ratio: natter.delivered_per_s / raw.writes_per_s.max(1e-9),
        nats_cpu_per_message_in_w: per_message
            .zip(raw.cpu.nats_servers_ms_per_message)
            .map(|(natter, w)| natter / w.max(1e-9)),
        natter,
        raw_jetstream: raw,
    })
}
