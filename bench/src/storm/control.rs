//! Scenario `storm-control`: the reconnect storm against `control-server --storm`
//! processes instead of Natter's gateways, so Natter's storm time can be read against the
//! least the same durable work takes (issue 15). Each load process seeds its users'
//! inboxes in `BENCH_INBOX` directly (one item the device has seen, whose sequence becomes
//! its cursor, and one new item), then on the parent's order reconnects every device at
//! once with `after` = its cursor, with the same client, handshake concurrency and checks
//! as `storm` ([`device::reconnect_all`]), timed until every device has its new item.

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;

use super::{
    Reconnects,
    device::{self, Device, Phase},
    sum,
};
use crate::{
    cpu::{CpuReport, WatchArgs},
    dm,
    net::{self, Sources},
    raw::{self, NatsOptions},
    shard::{self, Orders, Shard},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Addresses of `control-server --storm` processes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub servers: Vec<String>,
    /// Devices in all (one user each), split evenly over the servers.
    #[arg(long, default_value_t = 50_000)]
    pub users: usize,
    #[command(flatten)]
    pub nats: NatsOptions,
    /// HS256 secret the tokens are signed with (the control server does not check it).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// Flags of one load process (hidden subcommand `storm-control-shard`).
#[derive(Debug, Clone, clap::Args)]
pub struct ShardOptions {
    #[command(flatten)]
    pub shard: shard::ShardOptions,
    #[command(flatten)]
    pub nats: NatsOptions,
}

#[derive(Debug, Serialize)]
pub struct StormControlReport {
    pub users: usize,
    pub servers: usize,
    /// Devices whose two items were stored.
    pub seeded: u64,
    #[serde(flatten)]
    pub reconnects: Reconnects,
    /// From the reconnect order until every load process reported; per device caught up.
    pub cpu: CpuReport,
}

impl StormControlReport {
    pub fn table(&self) -> Vec<String> {
        self.reconnects
            .table(self.users, self.servers, 1, &self.cpu)
    }
}

pub async fn run(options: &Options) -> anyhow::Result<StormControlReport> {
    anyhow::ensure!(!options.servers.is_empty(), "--servers: none given");
    net::raise_fd_limit();
    let mut watch = options.watch.watch()?;
    let secret = dm::secret_or_dev(options.secret.as_deref());
    let js = jetstream::new(options.nats.connect().await?);
    raw::recreate(&js, raw::inbox_stream()).await?;
    let run = raw::run_id();
    let per = options.users.div_ceil(options.servers.len());
    let mut shards = Vec::new();
    let mut assigned = 0;
    for (i, server) in options.servers.iter().enumerate() {
        let count = per.min(options.users - assigned);
        assigned += count;
        shards.push(Shard::spawn(&[
            "storm-control-shard".into(),
            format!("--gateway={server}"),
            format!("--users={count}"),
            format!("--prefix=sc-{run}-s{i}"),
            format!("--first-source={}", 1 + i * Sources::needed(count)),
            format!("--secret={secret}"),
            format!("--nats={}", options.nats.nats),
            format!("--nats-user={}", options.nats.nats_user),
            format!("--nats-password={}", options.nats.nats_password),
        ])?);
    }
    for (i, shard) in shards.iter().enumerate() {
        watch.add(
            format!("load-{i}"),
            shard.pid().context("load process pid")?,
        );
    }
    let seeded = sum(&mut shards, "seeded").await?;
    let (reconnects, cpu) = Reconnects::order(&mut shards, 1, &watch).await?;
    for shard in shards {
        shard.finish().await?;
    }
    js.delete_stream(raw::INBOX_STREAM)
        .await
        .context("delete BENCH_INBOX")?;
    Ok(StormControlReport {
        users: options.users,
        servers: options.servers.len(),
        seeded,
        reconnects,
        cpu,
    })
}

/// Child: seed, report, reconnect everyone on the order, report, wait for `stop`.
pub async fn shard(options: &ShardOptions) -> anyhow::Result<()> {
    net::raise_fd_limit();
    let o = &options.shard;
    let server = net::addr(&o.gateway)?;
    let sources = Sources::new(o.first_source, o.users);
    let js = jetstream::new(options.nats.connect().await?);
    let users: Vec<String> = (0..o.users).map(|i| format!("{}-{i}", o.prefix)).collect();
    let started = std::time::Instant::now();
    let seen = store_one_each(&js, &users).await?;
    store_one_each(&js, &users).await?;
    let devices: Vec<Device> = users
        .into_iter()
        .zip(seen)
        .map(|(user, (cursor, id))| Device {
            user,
            cursor,
            seen: [id].into(),
        })
        .collect();
    shard::say(&Phase {
        ok: devices.len() as u64,
        failed: 0,
        seconds: started.elapsed().as_secs_f64(),
    })?;
    let mut orders = Orders::new();
    let order = orders.next().await.unwrap_or_default();
    let expected: usize = order
        .strip_prefix("reconnect ")
        .context("expected reconnect <n>")?
        .parse()?;
    let report = device::reconnect_all(server, &sources, &o.secret, devices, expected).await;
    shard::say(&report)?;
    while let Some(order) = orders.next().await {
        if order == "stop" {
            break;
        }
    }
    Ok(())
}

/// Stores one item in each user's inbox (256 in flight); returns each item's sequence and id.
async fn store_one_each(
    js: &jetstream::Context,
    users: &[String],
) -> anyhow::Result<Vec<(u64, String)>> {
    stream::iter(users)
        .map(|user| async move {
            let id = uuid::Uuid::new_v4().to_string();
            let item = serde_json::json!({"id": id, "body": {"kind": "text", "text": "storm"}});
            let message = PublishMessage::build()
                .payload(item.to_string().into())
                .message_id(&id);
            let ack = js
                .send_publish(raw::inbox_subject(user), message)
                .await
                .context("publish to BENCH_INBOX")?
                .await
                .context("ack from BENCH_INBOX")?;
            anyhow::Ok((ack.sequence, id))
        })
        .buffered(256)
        .try_collect()
        .await
}
