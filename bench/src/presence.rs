//! Scenario `presence`: `presence_subscribe` of 256 users with many groups in the bucket.
//!
//! Seeds `groups` groups into the `groups` bucket, then times one subscription per
//! follower. Each follower shares one two-person group with each of its `follow` users
//! (made as the gateway makes groups: each member listed in their group index, then the
//! group stored), so every one of them is allowed through the group check; the rest of
//! the groups (four members each, drawn from a pool of 10,000 users who are not followed)
//! are written to the bucket directly, without index entries, as fast as the bucket takes
//! them. A gateway that caches every group holds them all; one that caches only what it
//! used holds the followers' groups. With several gateways (say two builds side by side on
//! one system) each is timed in turn on the same seeded bucket; `--gateway-pids` reports
//! their resident memory before seeding, after seeding and after the subscriptions.
//!
//! Seeding connects to NATS as the gateway's user (the development password, on loopback).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use hdrhistogram::Histogram;
use natter_fabric::{
    NatsSettings,
    groups::{Group, Groups},
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{dm::token, net, report::histogram};

/// Group writes in flight while seeding.
const IN_FLIGHT: usize = 256;
/// Users the filler groups' members are drawn from.
const POOL: usize = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Gateway addresses, comma-separated: each is timed in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub gateways: Vec<String>,
    /// NATS URLs (the gateway's user logs in to seed the bucket).
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
    )]
    pub nats: String,
    /// Groups in the bucket, followers' groups included.
    #[arg(long, default_value_t = 100_000)]
    pub groups: usize,
    /// Subscriptions timed per gateway, one follower each.
    #[arg(long, default_value_t = 10)]
    pub followers: usize,
    /// Users each follower subscribes to at once (the gateway's limit is 256).
    #[arg(long, default_value_t = 256)]
    pub follow: usize,
    /// The gateways' process ids (in the order of `--gateways`), to report their resident
    /// memory.
    #[arg(long, value_delimiter = ',')]
    pub gateway_pids: Vec<u32>,
    /// HS256 secret of the gateway (default: the development secret).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

pub async fn run(options: &Options) -> anyhow::Result<Value> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let rss = |when: &str| -> Vec<u64> {
        let kib: Vec<u64> = options
            .gateway_pids
            .iter()
            .map(|pid| crate::shard::rss_bytes(*pid).unwrap_or(0) / 1024)
            .collect();
        let mib: Vec<String> = kib
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect();
        eprintln!("gateways' RSS {when}: {} MiB", mib.join(" / "));
        kib
    };
    let rss_before = rss("before seeding");
    let groups = connect_groups(&options.nats).await?;

    let started = Instant::now();
    let rounds = options.followers * options.gateways.len();
    let followers: Vec<String> = (0..rounds).map(|f| format!("pres-{run}-f{f}")).collect();
    let followed: Vec<String> = (0..options.follow)
        .map(|u| format!("pres-{run}-u{u}"))
        .collect();
    // Followed-user-major, so the groups written at once list different users.
    let pairs: Vec<Group> = followed
        .iter()
        .flat_map(|u| followers.iter().map(move |f| (f, u)))
        .map(|(f, u)| group(f, std::slice::from_ref(u)))
        .collect::<anyhow::Result<_>>()?;
    let paired = pairs.len();
    stream::iter(pairs.iter().map(|g| groups.create(g)))
        .buffer_unordered(IN_FLIGHT / 8)
        .try_collect::<()>()
        .await
        .context("creating the followers' groups")?;
    let fillers = options.groups.saturating_sub(paired);
    seed_fillers(&options.nats, run, fillers).await?;
    let seeded = started.elapsed();
    eprintln!("seeded {paired} indexed and {fillers} other groups in {seeded:.1?}");
    let rss_seeded = rss("after seeding");

    let secret = &crate::dm::secret_or_dev(options.secret.as_deref());
    let mut timed = Vec::new();
    for (g, gateway) in options.gateways.iter().enumerate() {
        let mut latency: Histogram<u64> = histogram();
        for follower in &followers[g * options.followers..(g + 1) * options.followers] {
            let took = subscribe(gateway, secret, follower, &followed).await?;
            latency.record(took.as_micros() as u64)?;
        }
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        eprintln!(
            "{gateway}: presence_subscribe of {} users p50 {:.1} ms, p99 {:.1} ms ({} runs)",
            options.follow,
            ms(0.5),
            ms(0.99),
            latency.len()
        );
        timed.push(json!({
            "gateway": gateway,
            "subscribe_p50_ms": ms(0.5),
            "subscribe_p99_ms": ms(0.99),
            "subscribe_max_ms": latency.max() as f64 / 1000.0,
        }));
    }
    let rss_after = rss("after the subscriptions");
    Ok(json!({
        "scenario": "presence",
        "groups": options.groups,
        "followers_per_gateway": options.followers,
        "follow": options.follow,
        "seed_s": seeded.as_secs_f64(),
        "gateways": timed,
        "gateway_rss_kib": {"before": rss_before, "seeded": rss_seeded, "after": rss_after},
    }))
}

async fn connect_groups(urls: &str) -> anyhow::Result<Groups> {
    let settings = NatsSettings {
        urls: urls.to_owned(),
        user: Some("gateway".into()),
        password: Some("gateway-dev".into()),
        name: "natter-bench-presence".into(),
        ..NatsSettings::default()
    };
    let (events, _) = tokio::sync::broadcast::channel(16);
    let client = natter_fabric::connect(&settings, events, Duration::from_secs(10)).await?;
    let js = async_nats::jetstream::new(client);
    Ok(Groups::open(&js, settings.replicas, 0).await?)
}

fn group(creator: &str, members: &[String]) -> anyhow::Result<Group> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (group, _) = Group::create(id, "bench", creator, members, 1024, 0)?;
    Ok(group)
}

/// Writes `count` four-member groups straight into the bucket, `IN_FLIGHT` at a time.
async fn seed_fillers(urls: &str, run: &str, count: usize) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::with_user_and_password(
        "gateway".to_owned(),
        "gateway-dev".to_owned(),
    )
    .connect(
        urls.split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .as_slice(),
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut pick = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        format!("pres-{run}-p{}", state as usize % POOL)
    };
    let mut acks = futures_util::stream::FuturesUnordered::new();
    for _ in 0..count {
        let members: Vec<String> = (0..3).map(|_| pick()).collect();
        let group = group(&pick(), &members)?;
        let subject = format!("$KV.{}.{}", natter_fabric::groups::BUCKET, group.id);
        let value = serde_json::to_vec(&group)?;
        acks.push(js.publish(subject, value.into()).await?.into_future());
        while acks.len() >= IN_FLIGHT {
            acks.next().await.context("acks")??;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(())
}

/// One `presence_subscribe` of `followed` by `follower`: the time until the last of their
/// `presence` frames.
async fn subscribe(
    gateway: &str,
    secret: &str,
    follower: &str,
    followed: &[String],
) -> anyhow::Result<Duration> {
    let mut socket = net::connect(
        net::addr(gateway)?,
        std::net::Ipv4Addr::LOCALHOST,
        &token(secret, follower)?,
        "bench",
        None,
    )
    .await?;
    let frame = json!({"type": "presence_subscribe", "users": followed, "ref": "p"});
    let asked = Instant::now();
    socket.send(Message::text(frame.to_string())).await?;
    let mut answered = 0;
    while answered < followed.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .context("no presence within 30 s")?
            .context("socket closed")??;
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str())?;
        match frame["type"].as_str() {
            Some("presence") => answered += 1,
            Some("error") => bail!("presence_subscribe refused: {frame}"),
            _ => {}
        }
    }
    let took = asked.elapsed();
    let _ = socket.close(None).await;
    Ok(took)
}
