//! Scenario `history`: one conversation of `messages` messages, sent through the gateway as
//! fast as it takes them (64 in flight), then `pages` history requests of 50 messages
//! from random points of the conversation, one after another on one socket.
//!
//! Reports the send rate, how long after the last `sent` the last message was in history,
//! and page latency (the `history` frame's round trip: gateway membership check, NATS
//! request, the worker's store scan, the answer).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{dm::token, net, report::histogram};

const IN_FLIGHT: usize = 64;
const PAGE: usize = 50;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway: String,
    /// Messages in the conversation (at least 100).
    #[arg(long, default_value_t = 5_000)]
    pub messages: usize,
    /// Page requests timed.
    #[arg(long, default_value_t = 500)]
    pub pages: usize,
    /// HS256 secret of the gateway (default: the development secret).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

pub async fn run(options: &Options) -> anyhow::Result<Value> {
    let (gateway, messages, pages) = (&options.gateway, options.messages.max(100), options.pages);
    let secret = &crate::dm::secret_or_dev(options.secret.as_deref());
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (a, b) = (format!("hist-{run}-a"), format!("hist-{run}-b"));
    let mut socket = net::connect(
        net::addr(gateway)?,
        std::net::Ipv4Addr::LOCALHOST,
        &token(secret, &a)?,
        "bench",
        None,
    )
    .await?;

    // Seed: keep IN_FLIGHT sends outstanding; collect ids in send order.
    let started = Instant::now();
    let mut ids: Vec<Option<String>> = vec![None; messages];
    let mut conv = String::new();
    let (mut next, mut answered) = (0usize, 0usize);
    while answered < messages {
        while next < messages && next - answered < IN_FLIGHT {
            let frame = json!({
                "type": "send", "id": uuid::Uuid::new_v4().to_string(), "to": format!("user:{b}"),
                "body": {"kind": "text", "text": format!("history bench {next}")}, "ref": next.to_string(),
            });
            socket.send(Message::text(frame.to_string())).await?;
            next += 1;
        }
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .context("no sent in 10 s")?
            .context("socket closed")??;
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str())?;
        if frame["type"] == "error" {
            bail!("send refused: {frame}");
        }
        if frame["type"] != "sent" {
            continue;
        }
        let i: usize = frame["ref"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .context("a ref")?;
        ids[i] = frame["id"].as_str().map(str::to_owned);
        conv = frame["conv"].as_str().unwrap_or_default().to_owned();
        answered += 1;
    }
    let all_sent = started.elapsed();
    let mut ids: Vec<String> = ids
        .into_iter()
        .map(|id| id.expect("every send answered"))
        .collect();
    // Concurrent sends may be stored in any order among themselves; history is id order.
    ids.sort();
    let newest = ids.last().cloned().unwrap_or_default();

    // Wait until the newest message is in history.
    let mut asked = 0u64;
    loop {
        asked += 1;
        let page = net::ask(
            &mut socket,
            json!({"type": "history", "conv": conv, "limit": 1}),
            &format!("w{asked}"),
            Duration::from_secs(10),
        )
        .await?;
        if page["messages"][0]["id"] == newest.as_str() {
            break;
        }
        if started.elapsed() > all_sent + Duration::from_secs(120) {
            bail!("history did not catch up within 120 s: {page}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_history = started.elapsed();

    // Pages of 50 from random points.
    let mut latency: Histogram<u64> = histogram();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ started.elapsed().as_nanos() as u64;
    for p in 0..pages {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let before = &ids[PAGE + (state as usize) % (ids.len() - PAGE)];
        let asked_at = Instant::now();
        let page = net::ask(
            &mut socket,
            json!({"type": "history", "conv": conv, "before": before, "limit": PAGE}),
            &format!("p{p}"),
            Duration::from_secs(10),
        )
        .await?;
        latency.saturating_record(asked_at.elapsed().as_micros() as u64);
        let got = page["messages"].as_array().map_or(0, Vec::len);
        if got != PAGE {
            bail!("a page held {got} messages: {page}");
        }
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "scenario": "history",
        "messages": messages,
        "sent_per_s": messages as f64 / all_sent.as_secs_f64(),
        "all_sent_s": all_sent.as_secs_f64(),
        "all_in_history_s": in_history.as_secs_f64(),
        "sent_to_history_per_s": messages as f64 / in_history.as_secs_f64(),
        "pages": pages,
        "page_of_50_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": ms(1.0)},
    }))
}
