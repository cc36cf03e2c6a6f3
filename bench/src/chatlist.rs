//! Scenario `chatlist`: a user with many conversations and a full inbox signs in on a new
//! device and asks for the chat list in one request.
//!
//! Seeds `conversations` peers who each send `messages` texts to the user (a full inbox:
//! 200 × 100 = 20,000 items by default), the user reads up to the middle of every other
//! conversation, and the list is awaited until the history workers have all of it. Then
//! each of `requests` new devices connects with `after=latest` (nothing replayed) and asks
//! for `conversations` with `limit` = all of them: the time from the request to its answer
//! is reported (p50/p99), and every answer is checked: each conversation once, most
//! recent first, its last message's text, and its unread count.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    dm::token,
    net::{self, Socket},
    report::histogram,
};

/// Peers sending at once while seeding.
const SEEDING_PEERS: usize = 16;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway: String,
    /// Conversations the user has (one peer each).
    #[arg(long, default_value_t = 200)]
    pub conversations: usize,
    /// Messages each peer sends the user.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// New devices timed, one chat list request each.
    #[arg(long, default_value_t = 50)]
    pub requests: usize,
    /// HS256 secret of the gateway (default: the development secret).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

pub async fn run(options: &Options) -> anyhow::Result<Value> {
    ensure!(
        options.conversations <= 200,
        "one request lists at most 200"
    );
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let secret = crate::dm::secret_or_dev(options.secret.as_deref());
    let gateway = net::addr(&options.gateway)?;
    let user = format!("cl-{run}-me");
    let peers: Vec<String> = (0..options.conversations)
        .map(|i| format!("cl-{run}-p{i:03}"))
        .collect();

    // Seeding: every peer's messages, then the user's reads.
    let started = Instant::now();
    let sent: Vec<Vec<String>> = stream::iter(peers.iter().map(|peer| {
        let (secret, user) = (&secret, &user);
        async move { send_all(gateway, secret, peer, user, options.messages).await }
    }))
    .buffered(SEEDING_PEERS)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<anyhow::Result<_>>()?;
    let mut me = open(gateway, &secret, &user, "seeder").await?;
    let half = options.messages / 2;
    for (i, ids) in sent.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let conv = direct(&user, &peers[i]);
        let read = json!({"type": "read", "conv": conv, "up_to": ids[half - 1]});
        me.send(Message::text(read.to_string())).await?;
    }
    // Most recent first: by each conversation's last message id (time-ordered).
    let mut order: Vec<usize> = (0..sent.len()).collect();
    order.sort_by(|a, b| sent[*b].last().cmp(&sent[*a].last()));
    let expected: Vec<Row> = order
        .into_iter()
        .map(|i| Row {
            conv: direct(&user, &peers[i]),
            last: format!("{}-{}", peers[i], options.messages - 1),
            unread: if i % 2 == 0 {
                options.messages - half
            } else {
                options.messages
            },
        })
        .collect();
    let limit = options.conversations;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (list, _) = ask(&mut me, limit).await?;
        if check(&list, &expected).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            check(&list, &expected).context("the chat list never became complete")?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seeded = started.elapsed();
    eprintln!(
        "seeded {} conversations × {} messages in {seeded:.1?}",
        options.conversations, options.messages
    );

    // New devices: nothing replayed, one request for the whole list.
    let mut latency: Histogram<u64> = histogram();
    let mut bytes = 0;
    for device in 0..options.requests {
        let mut socket = open(gateway, &secret, &user, &format!("new-{device}")).await?;
        let (list, took) = ask(&mut socket, limit).await?;
        check(&list, &expected)?;
        latency.record(took.as_micros() as u64)?;
        bytes = list.to_string().len();
        let _ = socket.close(None).await;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    eprintln!(
        "chat list of {} conversations ({} KiB): p50 {:.1} ms, p99 {:.1} ms ({} requests)",
        options.conversations,
        bytes / 1024,
        ms(0.5),
        ms(0.99),
        latency.len()
    );
    Ok(json!({
        "scenario": "chatlist",
        "conversations": options.conversations,
        "messages_each": options.messages,
        "inbox_items": options.conversations * options.messages,
        "seed_s": seeded.as_secs_f64(),
        "requests": latency.len(),
        "answer_bytes": bytes,
        "list_p50_ms": ms(0.5),
        "list_p99_ms": ms(0.99),
        "list_max_ms": latency.max() as f64 / 1000.0,
    }))
}

/// What one row of the list must say.
struct Row {
    conv: String,
    last: String,
    unread: usize,
}

/// Whether `list` is exactly `expected`, in order.
fn check(list: &Value, expected: &[Row]) -> anyhow::Result<()> {
    let rows = list["conversations"]
        .as_array()
        .context("no conversations")?;
    ensure!(
        rows.len() == expected.len(),
        "{} conversations listed, {} expected",
        rows.len(),
        expected.len()
    );
    for (row, want) in rows.iter().zip(expected) {
        ensure!(
            row["conv"] == want.conv.as_str(),
            "order: {} where {} was expected",
            row["conv"],
            want.conv
        );
        ensure!(
            row["last"]["body"]["text"] == want.last.as_str(),
            "last of {}: {}",
            want.conv,
            row["last"]
        );
        ensure!(
            row["unread"] == want.unread,
            "unread of {}: {} not {}",
            want.conv,
            row["unread"],
            want.unread
        );
    }
    Ok(())
}

fn direct(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{x}:{y}")
}

/// A new device of `user` (`after=latest`), past its `hello`.
async fn open(
    gateway: std::net::SocketAddr,
    secret: &str,
    user: &str,
    device: &str,
) -> anyhow::Result<Socket> {
    let token = token(secret, user)?;
    let mut socket = net::connect(
        gateway,
        std::net::Ipv4Addr::LOCALHOST,
        &token,
        device,
        Some(u64::MAX),
    )
    .await?;
    let hello = next_frame(&mut socket).await?;
    ensure!(hello["type"] == "hello", "first frame {hello}");
    Ok(socket)
}

/// `conversations` with `limit`: the answer and how long it took (asked again after the
/// wait a `rate_limited` answer names: a system with the default per-user limit).
async fn ask(socket: &mut Socket, limit: usize) -> anyhow::Result<(Value, Duration)> {
    loop {
        let reference = uuid::Uuid::new_v4().to_string();
        let frame = json!({"type": "conversations", "limit": limit, "ref": reference});
        let asked = Instant::now();
        socket.send(Message::text(frame.to_string())).await?;
        let answer = loop {
            let frame = next_frame(socket).await?;
            if frame["ref"] == reference.as_str() {
                break frame;
            }
        };
        if answer["code"] == "rate_limited" {
            let wait = answer["retry_after_ms"].as_u64().unwrap_or(1_000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            continue;
        }
        ensure!(answer["type"] == "conversations", "refused: {answer}");
        return Ok((answer, asked.elapsed()));
    }
}

/// `peer` sends `count` texts to `user`, pipelined; their ids in order.
async fn send_all(
    gateway: std::net::SocketAddr,
    secret: &str,
    peer: &str,
    user: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut socket = open(gateway, secret, peer, "seed").await?;
    for i in 0..count {
        let frame = json!({
            "type": "send", "id": format!("{peer}-{i}"), "to": format!("user:{user}"),
            "body": {"kind": "text", "text": format!("{peer}-{i}")}, "ref": i.to_string(),
        });
        socket.send(Message::text(frame.to_string())).await?;
    }
    let mut ids = vec![String::new(); count];
    let mut answered = 0;
    while answered < count {
        let frame = next_frame(&mut socket).await?;
        let Some(i) = frame["ref"].as_str().and_then(|r| r.parse::<usize>().ok()) else {
            continue;
        };
        match frame["type"].as_str() {
            Some("sent") => {
                ids[i] = frame["id"].as_str().context("sent without id")?.to_owned();
                answered += 1;
            }
            _ => bail!("send refused: {frame}"),
        }
    }
    let _ = socket.close(None).await;
    Ok(ids)
}

async fn next_frame(socket: &mut Socket) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .context("nothing within 30 s")?
            .context("socket closed")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(text.as_str())?);
        }
    }
}
