//! Scenario `fanout`: one group of `members` users, every one connected; the creator
//! sends `rounds` messages, one at a time, and each round is timed from the send until
//! the last of the other members has the message on its socket (the fanout worker writes
//! one replicated inbox item per member; each gateway forwards it live). Members ack as
//! phones do, so delivered receipts flow during the run as they would in a real group.
//! With `--read`, members also mark each message read as it arrives (a chat open on every
//! phone), and each round is also timed until the sender's `read` receipt for everyone
//! (`all: true`): the message fully read.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    cpu::{CpuReport, Watch},
    dm::token,
    net::{self, Socket, Sources},
    report::{Latency, histogram},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Gateway addresses, comma-separated; members are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub gateways: Vec<String>,
    /// Group size, the sender included (the default limit is 1,024).
    #[arg(long, default_value_t = 1024)]
    pub members: usize,
    /// Messages sent, one after another, each after the previous reached everyone.
    #[arg(long, default_value_t = 30)]
    pub rounds: usize,
    /// HS256 secret of the gateways (default: the development secret).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Members mark each message read on arrival; time send → read by everyone.
    #[arg(long)]
    pub read: bool,
}

#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub members: usize,
    pub rounds: usize,
    /// Rounds in which every member got the message (within 30 s).
    pub complete_rounds: usize,
    pub doubled: u64,
    pub send_to_sent_ms: Latency,
    /// Per round: send → the last member has it.
    pub send_to_last_member_ms: Latency,
    /// Per member and round: send → that member has it.
    pub send_to_each_member_ms: Latency,
    /// Per round, with `--read`: send → the sender's `read` receipt for every member.
    pub send_to_all_read_ms: Option<Latency>,
    /// Over the rounds; per member delivery.
    pub cpu: CpuReport,
}

impl FanoutReport {
    pub fn table(&self) -> Vec<String> {
        let (s, l, e) = (
            self.send_to_sent_ms,
            self.send_to_last_member_ms,
            self.send_to_each_member_ms,
        );
        let mut lines = vec![
            "members  rounds  complete  sent p50/p99 ms  last member p50/p99 ms  each member p50/p99 ms".into(),
            format!(
                "{:>7} {:>7} {:>9} {:>7.1} / {:<7.1} {:>11.1} / {:<10.1} {:>11.1} / {:<8.1}",
                self.members, self.rounds, self.complete_rounds, s.p50, s.p99, l.p50, l.p99, e.p50, e.p99
            ),
        ];
        if let Some(r) = self.send_to_all_read_ms {
            lines.push(format!(
                "read by all p50/p99 ms: {:.1} / {:.1}",
                r.p50, r.p99
            ));
        }
        lines.extend(self.cpu.table());
        lines
    }
}

/// What a member saw: (round, microseconds since the origin when it arrived).
type Arrival = (usize, u64);

const ROUND_LIMIT: Duration = Duration::from_secs(30);

/// A fanout run, measuring only the load tool's CPU.
pub async fn run(options: &Options) -> anyhow::Result<FanoutReport> {
    run_watched(options, &Watch::default()).await
}

/// A fanout run, with the CPU of the watched processes over the rounds, per member
/// delivery (comparable with `raw fan`'s per item).
pub async fn run_watched(options: &Options, watch: &Watch) -> anyhow::Result<FanoutReport> {
    net::raise_fd_limit();
    anyhow::ensure!(options.members >= 2, "a group needs at least 2 members");
    let secret = crate::dm::secret_or_dev(options.secret.as_deref());
    let gateways = options
        .gateways
        .iter()
        .map(|g| net::addr(g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let users: Vec<String> = (0..options.members)
        .map(|i| format!("fan-{run}-{i}"))
        .collect();
    let sources = Sources::new(0, options.members);
    let origin = Instant::now();

    // Everyone but the sender listens; each member task reports arrivals.
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let (joined_tx, mut joined) = mpsc::unbounded_channel::<()>();
    let mut listeners = Vec::new();
    for (i, user) in users.iter().enumerate().skip(1) {
        let gateway = gateways[i % gateways.len()];
        let socket = net::connect(gateway, sources.pick(), &token(&secret, user)?, "d0", None)
            .await
            .with_context(|| format!("member {i}"))?;
        listeners.push(tokio::spawn(listen(
            socket,
            origin,
            options.read,
            arrivals_tx.clone(),
            joined_tx.clone(),
        )));
    }
    drop((arrivals_tx, joined_tx));
    let mut sender = net::connect(
        gateways[0],
        sources.pick(),
        &token(&secret, &users[0])?,
        "d0",
        None,
    )
    .await?;

    let created = net::ask(
        &mut sender,
        json!({"type": "group_create", "name": "fanout bench", "members": users[1..]}),
        "create",
        ROUND_LIMIT,
    )
    .await?;
    let group = created["id"]
        .as_str()
        .context("group_create answer")?
        .to_owned();
    // Every member has seen the group's `created` event: their inboxes are live.
    for _ in 1..options.members {
        tokio::time::timeout(ROUND_LIMIT, joined.recv())
            .await
            .context("members did not all see the group created in 30 s")?
            .context("a member socket ended")?;
    }

    let recipients = options.members - 1;
    let (mut sent, mut last, mut each, mut read) =
        (histogram(), histogram(), histogram(), histogram());
    let (mut complete, mut doubled) = (0, 0u64);
    let window = watch.start()?;
    for round in 0..options.rounds {
        let at = origin.elapsed().as_micros() as u64;
        let answer = net::ask(
            &mut sender,
            json!({"type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": format!("group:{group}"),
                   "body": {"kind": "text", "text": format!("{round} {at}")}}),
            &format!("r{round}"),
            ROUND_LIMIT,
        )
        .await?;
        if answer["type"] != "sent" {
            bail!("send refused: {answer}");
        }
        let id = answer["id"].as_str().context("sent.id")?.to_owned();
        sent.saturating_record(origin.elapsed().as_micros() as u64 - at);
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + ROUND_LIMIT;
        while got < recipients {
            let Ok(Some((r, when))) = tokio::time::timeout_at(deadline, arrivals.recv()).await
            else {
                break;
            };
            if r != round {
                doubled += 1;
                continue;
            }
            got += 1;
            each.saturating_record(when.saturating_sub(at));
            if got == recipients {
                last.saturating_record(when.saturating_sub(at));
                complete += 1;
            }
        }
        if options.read {
            let when = read_by_all(&mut sender, &id, origin).await?;
            read.saturating_record(when.saturating_sub(at));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = window.finish(each.len(), "delivery");
    // Anything still arriving now was delivered twice.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), arrivals.recv()).await {
        doubled += 1;
    }
    for l in listeners {
        l.abort();
    }
    Ok(FanoutReport {
        members: options.members,
        rounds: options.rounds,
        complete_rounds: complete,
        doubled,
        send_to_sent_ms: Latency::of(&sent),
        send_to_last_member_ms: Latency::of(&last),
        send_to_each_member_ms: Latency::of(&each),
        send_to_all_read_ms: options.read.then(|| Latency::of(&read)),
        cpu,
    })
}

/// When the sender's socket gets the `read` receipt for everyone that covers message `id`
/// (microseconds since `origin`).
async fn read_by_all(sender: &mut Socket, id: &str, origin: Instant) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + ROUND_LIMIT;
    loop {
        let message = tokio::time::timeout_at(deadline, sender.next())
            .await
            .context("not read by every member within 30 s")?
            .context("sender socket closed")??;
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str())?;
        let covers = frame["id"].as_str().is_some_and(|r| r >= id);
        if frame["type"] == "receipt" && frame["status"] == "read" && frame["all"] == true && covers
        {
            return Ok(origin.elapsed().as_micros() as u64);
        }
    }
}

/// A member's socket: reports the group event and every message (marking it read with
/// `read`), acks every 200 ms.
async fn listen(
    socket: Socket,
    origin: Instant,
    read: bool,
    arrivals: mpsc::UnboundedSender<Arrival>,
    joined: mpsc::UnboundedSender<()>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = socket.split();
    let (mut newest, mut acked) = (0u64, 0u64);
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = ticks.tick() => if newest > acked {
                sink.send(Message::text(json!({"type": "ack", "seq": newest}).to_string())).await?;
                acked = newest;
            },
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                let Message::Text(text) = message? else { continue };
                let now = origin.elapsed().as_micros() as u64;
                let frame: Value = serde_json::from_str(text.as_str())?;
                newest = newest.max(frame["seq"].as_u64().unwrap_or(0));
                match frame["type"].as_str() {
                    Some("group_event") => { let _ = joined.send(()); }
                    Some("msg") => {
                        if read {
                            let mark = json!({"type": "read", "conv": frame["conv"], "up_to": frame["id"]});
                            sink.send(Message::text(mark.to_string())).await?;
                        }
                        let round = frame["body"]["text"].as_str()
                            .and_then(|t| t.split(' ').next())
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(usize::MAX);
                        let _ = arrivals.send((round, now));
                    }
                    _ => {}
                }
            }
        }
    }
}
