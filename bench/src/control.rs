//! `control-server`: the least a WebSocket edge can be, so Natter's gateway has a control
//! measured with the same client, the same sockets and in the same run (issue 15):
//!
//! - `idle-control`: one task per socket, tokio-tungstenite tuned as in ../shared/LIMITS.md
//!   (1 KiB read buffer, no write buffer, 128 KiB write limit, 64 KiB messages and frames,
//!   TCP_NODELAY); it accepts `GET /v1/ws?…` from the `idle` scenario's client (the token
//!   is not checked), answers pings and holds the socket. Run several processes, as Natter
//!   runs several gateways, because one process may hold at most ~19,990 sockets here.
//! - `storm-control` (`--storm`): per socket, the durable NATS work Natter does for a
//!   reconnecting device and nothing else: one core subscription to `bench.live.<uid>`
//!   (flushed), one direct get of the first item after the client's `after` in
//!   `BENCH_INBOX`, written to the socket as a `msg` text frame; later live items are
//!   forwarded too. The user id is read from the token's `sub` claim, unverified.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::server::{ErrorResponse, Request, Response},
        http::StatusCode,
        protocol::WebSocketConfig,
    },
};

use crate::{net, raw};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to listen on, e.g. 127.0.0.1:8201.
    #[arg(long)]
    pub listen: String,
    /// Do a reconnecting device's NATS work for every socket (storm-control).
    #[arg(long)]
    pub storm: bool,
    #[command(flatten)]
    pub nats: raw::NatsOptions,
}

/// The tuned configuration measured in ../shared/LIMITS.md (~3.9 KB per idle socket).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(128 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// What `--storm` sockets share: one NATS connection per process, as a gateway has.
struct Storm {
    client: async_nats::Client,
    inbox: jetstream::stream::Stream<()>,
}

pub async fn serve(options: &Options) -> anyhow::Result<()> {
    net::raise_fd_limit();
    let storm = if options.storm {
        let client = options.nats.connect().await?;
        let inbox = jetstream::new(client.clone())
            .get_stream_no_info(raw::INBOX_STREAM)
            .await?;
        Some(Arc::new(Storm { client, inbox }))
    } else {
        None
    };
    let listener = TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("listen on {}", options.listen))?;
    eprintln!(
        "control-server on {} (pid {}{})",
        options.listen,
        std::process::id(),
        if options.storm { ", storm" } else { "" }
    );
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => match &storm {
                Some(storm) => {
                    let storm = storm.clone();
                    tokio::spawn(async move {
                        if let Err(e) = storm_socket(tcp, storm).await {
                            eprintln!("control-server: socket ended: {e:#}");
                        }
                    });
                }
                None => {
                    tokio::spawn(idle_socket(tcp));
                }
            },
            // Out of file descriptors: let some sockets close rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Upgrades a connection that asks for `/v1/ws`; returns the socket and its query.
async fn upgrade(tcp: TcpStream) -> Option<(WebSocketStream<TcpStream>, String)> {
    tcp.set_nodelay(true).ok()?;
    let mut query = String::new();
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback type"
    )]
    let callback = |request: &Request, response: Response| {
        if request.uri().path() != "/v1/ws" {
            let mut refusal = ErrorResponse::new(None);
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        query = request.uri().query().unwrap_or_default().to_owned();
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(ws_config()))
        .await
        .ok()?;
    Some((ws, query))
}

/// An idle-control socket: reading answers pings; nothing else until the client goes.
/// The query is dropped at once, so a socket holds nothing a minimal server would not.
async fn idle_socket(tcp: TcpStream) {
    let Some((mut ws, _)) = upgrade(tcp).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if message.is_close() {
            break;
        }
    }
}

/// A storm-control socket, start to end. An error ends the socket (and is logged).
async fn storm_socket(tcp: TcpStream, storm: Arc<Storm>) -> anyhow::Result<()> {
    let Some((mut ws, query)) = upgrade(tcp).await else {
        return Ok(());
    };
    let user = user_of(&query).context("no token with a `sub` claim")?;
    let after: u64 = param(&query, "after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let mut live = storm.client.subscribe(raw::live_subject(&user)).await?;
    storm.client.flush().await?;
    let subject = raw::inbox_subject(&user);
    let first = match storm
        .inbox
        .direct_get_next_for_subject(&subject, Some(after + 1))
        .await
    {
        Ok(item) => Some(item),
        // A direct get may hit a replica that has not stored the item yet: as Natter's
        // catch-up does, ask the leader before concluding there is nothing.
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => storm
            .inbox
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(&subject)
            .send()
            .await
            .ok(),
        Err(e) => return Err(e).context("direct get"),
    };
    if let Some(item) = first {
        ws.send(Message::text(frame(&item.payload, item.sequence)))
            .await?;
    }
    loop {
        tokio::select! {
            item = live.next() => {
                let Some(item) = item else { return Ok(()) };
                let seq = item
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Sequence"))
                    .and_then(|s| s.as_str().parse().ok())
                    .unwrap_or(0);
                ws.send(Message::text(frame(&item.payload, seq))).await?;
            }
            message = ws.next() => match message {
                Some(Ok(message)) if !message.is_close() => {}
                _ => return Ok(()),
            },
        }
    }
}

/// A stored item as the client sees it: its JSON fields plus `type` and `seq`.
pub fn frame(payload: &[u8], seq: u64) -> String {
    let mut fields: Map<String, Value> = serde_json::from_slice(payload).unwrap_or_default();
    fields.insert("type".into(), "msg".into());
    fields.insert("seq".into(), seq.into());
    Value::Object(fields).to_string()
}

/// The value of `name` in a query string (tokens and ids need no percent-decoding).
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// The `sub` claim of the query's token, read without checking the signature.
fn user_of(query: &str) -> Option<String> {
    let claims = param(query, "token")?.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()?;
    let claims: Value = serde_json::from_slice(&json).ok()?;
    Some(claims["sub"].as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_comes_from_the_tokens_claims() {
        let token = natter_auth::mint_hs256(
            b"0123456789abcdef0123456789abcdef",
            "u-7",
            None,
            60,
            None,
            None,
        )
        .unwrap();
        let query = format!("token={token}&device=d0&after=12");
        assert_eq!(user_of(&query).as_deref(), Some("u-7"));
        assert_eq!(param(&query, "after"), Some("12"));
        assert_eq!(user_of("device=d0"), None);
    }

    #[test]
    fn a_frame_carries_the_items_fields_type_and_seq() {
        let frame: Value = serde_json::from_str(&frame(br#"{"id":"x"}"#, 9)).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"id": "x", "type": "msg", "seq": 9})
        );
    }
}
