//! Scenario `raw`: what JetStream alone does on this cluster, with no Natter code, so that
//! each Natter figure can be read against a control measured in the same run (issue 15,
//! `bench/run-all.sh`). Modes:
//!
//! - `write`: plain R3 async writes to stream `BENCH`, `in_flight` (256) unacknowledged,
//!   for `seconds` (≥ 5: a shorter window lets one slow second swing the rate). The
//!   nats-servers' CPU per write in this mode is W, the unit Natter's cost is quoted in.
//! - `floor`: the least durable work a 1:1 message needs (see [`flow`]): two republished
//!   inbox items, a live subscriber and an R1 tail reader; flat out or at `--rate`.
//! - `lat`: one republished inbox item per message at a paced `--rate`: publish →
//!   republished arrival, the latency floor under Natter's send → deliver.
//! - `fan`: 1,023 republished items per round (one per member of a 1,024-member group),
//!   timed until the last arrives: the floor under a group fanout.
//!
//! Everything runs as NATS user `bench` (nats/accounts.conf), which may use only its own
//! subjects (`bench.>`) and streams (`BENCH`, `BENCH_INBOX`, created fresh each run and
//! deleted after), so a control can never touch Natter's data.

pub mod fan;
pub mod flow;
pub mod write;

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;

use crate::cpu::{CpuReport, WatchArgs};

/// Where the `bench` user's NATS cluster is, and how it logs in.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsOptions {
    /// NATS servers, comma-separated.
    #[arg(
        long,
        env = "NATTER_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
    )]
    pub nats: String,
    #[arg(long, default_value = "bench")]
    pub nats_user: String,
    #[arg(long, default_value = "bench-dev", env = "NATTER_BENCH_NATS_PASSWORD")]
    pub nats_password: String,
}

impl NatsOptions {
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        connect(&self.nats, &self.nats_user, &self.nats_password).await
    }
}

/// Connects to the comma-separated `urls` as `user`.
pub async fn connect(urls: &str, user: &str, password: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password.to_owned())
        // The servers advertise cluster addresses this client must not try (see fabric).
        .ignore_discovered_servers()
        // One subscription takes every republished copy of a flat-out run.
        .subscription_capacity(1 << 18)
        .connect(
            urls.split(',')
                .map(str::parse)
                .collect::<Result<Vec<async_nats::ServerAddr>, _>>()
                .context("--nats: comma-separated nats:// URLs")?,
        )
        .await
        .with_context(|| format!("connect to NATS at {urls} as {user}"))
}

/// The raw writer's stream: same shape as Natter's streams (R3, file storage).
pub const WRITE_STREAM: &str = "BENCH";
/// The inbox control's stream, configured like Natter's `INBOX` (fabric/src/streams.rs).
pub const INBOX_STREAM: &str = "BENCH_INBOX";
/// Where `BENCH_INBOX` republishes its items, every user's at once.
pub const LIVE_ALL: &str = "bench.live.*";

/// The subject of `user`'s inbox in `BENCH_INBOX`.
pub fn inbox_subject(user: &str) -> String {
    format!("bench.inbox.{user}")
}

/// The subject `user`'s items are republished to.
pub fn live_subject(user: &str) -> String {
    format!("bench.live.{user}")
}

pub fn write_stream() -> stream::Config {
    stream::Config {
        name: WRITE_STREAM.into(),
        subjects: vec!["bench.raw.>".into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Natter's `INBOX` settings under the bench user's names: R3 file storage, 30-day items,
/// a 10-minute duplicate window, direct gets from any replica, and every item republished
/// to `bench.live.<uid>`.
pub fn inbox_stream() -> stream::Config {
    stream::Config {
        name: INBOX_STREAM.into(),
        subjects: vec!["bench.inbox.*".into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(30 * 24 * 3600),
        duplicate_window: Duration::from_secs(10 * 60),
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: "bench.inbox.*".into(),
            destination: "bench.live.{{wildcard(1)}}".into(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// Deletes the stream if it exists and creates it empty.
pub async fn recreate(
    js: &jetstream::Context,
    config: stream::Config,
) -> anyhow::Result<jetstream::stream::Stream> {
    let name = config.name.clone();
    let _ = js.delete_stream(&name).await;
    js.create_stream(config)
        .await
        .with_context(|| format!("create stream {name}"))
}

/// Where [`await_interest`]'s probes are republished; readers skip them.
pub const PROBE_LIVE: &str = "bench.live.probe";

/// Stores probe items in `BENCH_INBOX` until one comes back republished on `subscriber`.
/// A core subscription's interest reaches the other servers of the cluster
/// asynchronously (a flush only proves the client's own server has it), and until it
/// reaches the stream leader's server, republished items are dropped: without this the
/// first items of a run can go missing. Returns the stream sequence of the last probe, so
/// a reader can start after them.
pub async fn await_interest(
    js: &jetstream::Context,
    subscriber: &mut async_nats::Subscriber,
) -> anyhow::Result<u64> {
    for _ in 0..50 {
        let probe = js
            .publish(inbox_subject("probe"), Bytes::from_static(b"probe"))
            .await?
            .await
            .context("store a probe in BENCH_INBOX")?;
        let back = tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await;
        if let Ok(Some(_)) = back {
            return Ok(probe.sequence);
        }
    }
    anyhow::bail!("republished items never reached the subscriber of bench.live.*")
}

/// A payload of `size` bytes starting with `<tag> <micros> `: which message or round it
/// belongs to and when it was published (µs since the run's origin), so a subscriber
/// can time its arrival without any other bookkeeping.
pub fn stamped(tag: u64, at_us: u64, size: usize) -> Bytes {
    let mut text = format!("{tag} {at_us} ").into_bytes();
    text.resize(size.max(text.len()), b'x');
    Bytes::from(text)
}

/// The `(tag, micros)` of a [`stamped`] payload.
pub fn stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(payload.get(..48.min(payload.len()))?).ok()?;
    let mut fields = text.split(' ');
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A short random id that keeps one run's message ids apart from another's.
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Write,
    Floor,
    Lat,
    Fan,
}

/// Where the floor's tail reader keeps its consumer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TailStorage {
    Memory,
    File,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    pub mode: Mode,
    #[command(flatten)]
    pub nats: NatsOptions,
    /// Sending window of write, floor and lat (write: at least 5).
    #[arg(long, default_value_t = 6)]
    pub seconds: u64,
    /// Offered messages per second: lat is always paced (default 1,000); floor is paced
    /// when given, else flat out.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Unacknowledged publishes (write), messages (floor, lat) or items (fan) at a time
    /// (default 256; fan 128).
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Bytes per stored item (Natter's stored message is about this size).
    #[arg(long, default_value_t = 300)]
    pub payload: usize,
    /// floor and lat: messages go to the inboxes of 2 × pairs users, like `dm`'s pairs.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// fan: group size; each round writes one item per member but the sender.
    #[arg(long, default_value_t = 1024)]
    pub members: usize,
    /// fan: rounds, one after another.
    #[arg(long, default_value_t = 30)]
    pub rounds: usize,
    /// floor: the tail consumer's state storage (R1, no acks either way).
    #[arg(long, value_enum, default_value = "memory")]
    pub tail_storage: TailStorage,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum RawReport {
    Write(write::WriteReport),
    Floor(flow::FlowReport),
    Lat(flow::FlowReport),
    Fan(fan::FanReport),
}

impl RawReport {
    pub fn table(&self) -> Vec<String> {
        let (mut lines, cpu) = match self {
            Self::Write(r) => (r.table(), &r.cpu),
            Self::Floor(r) | Self::Lat(r) => (r.table(), &r.cpu),
            Self::Fan(r) => (r.table(), &r.cpu),
        };
        lines.extend(CpuReport::table(cpu));
        lines
    }
}

pub async fn run(options: &Options) -> anyhow::Result<RawReport> {
    let watch = options.watch.watch()?;
    let in_flight = |default| options.in_flight.unwrap_or(default).max(1);
    Ok(match options.mode {
        Mode::Write => {
            anyhow::ensure!(options.seconds >= 5, "raw write: --seconds must be ≥ 5");
            let client = options.nats.connect().await?;
            let spec = write::WriteSpec {
                amount: write::Amount::Seconds(options.seconds),
                in_flight: in_flight(256),
                payload: options.payload,
            };
            RawReport::Write(write::run(&client, &spec, &watch).await?)
        }
        Mode::Floor | Mode::Lat => {
            let floor = options.mode == Mode::Floor;
            let spec = flow::FlowSpec {
                copies: if floor { 2 } else { 1 },
                rate: if floor {
                    options.rate
                } else {
                    Some(options.rate.unwrap_or(1000))
                },
                seconds: options.seconds,
                in_flight: in_flight(256),
                payload: options.payload,
                pairs: options.pairs.max(1),
                tail: floor.then_some(options.tail_storage),
            };
            let report = flow::run(&options.nats, &spec, &watch).await?;
            if floor {
                RawReport::Floor(report)
            } else {
                RawReport::Lat(report)
            }
        }
        Mode::Fan => {
            anyhow::ensure!(options.members >= 2, "raw fan: --members must be ≥ 2");
            let spec = fan::FanSpec {
                members: options.members,
                rounds: options.rounds,
                in_flight: in_flight(128),
                payload: options.payload,
            };
            RawReport::Fan(fan::run(&options.nats, &spec, &watch).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_from_a_padded_payload() {
        let payload = stamped(42, 1_234_567, 300);
        assert_eq!(payload.len(), 300);
        assert_eq!(stamp(&payload), Some((42, 1_234_567)));
        assert_eq!(stamp(b"not a stamp"), None);
        assert_eq!(stamped(1, 2, 0).as_ref(), b"1 2 ");
    }
}
