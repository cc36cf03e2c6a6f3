//! The delivery canary: a probe message from one probe user to another through the whole
//! path (gateway → MSGS → fanout → INBOX → RePublish → gateway → socket) every
//! [`CanarySettings::every`], timed end to end. It stays true when every process's own
//! metrics look healthy but messages do not arrive.
//!
//! Exports `natter_canary_probes_total`, `natter_canary_failures_total` (no delivery within
//! [`CanarySettings::timeout`], or a socket failure) and
//! `natter_canary_send_to_deliver_seconds`. Probe users are new for every canary process
//! (`canary-<random>-{a,b}`), so a restart never replays old probes.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use tokio_util::sync::CancellationToken;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where the canary probes and how often.
#[derive(Debug, Clone)]
pub struct CanarySettings {
    /// Gateway address, e.g. `127.0.0.1:8080`.
    pub gateway: String,
    /// HS256 secret the gateway accepts.
    pub secret: String,
    pub every: Duration,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("socket: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("token: {0}")]
    Token(#[from] natter_auth::AuthError),
    #[error("no delivery within {0:?}")]
    Timeout(Duration),
    #[error("socket closed")]
    Closed,
}

/// Probes until `stop`. Failures are counted and the sockets reopened on the next probe.
pub async fn run(settings: CanarySettings, stop: CancellationToken) {
    metrics::counter!("natter_canary_failures_total").increment(0);
    let run_id = format!(
        "{:08x}",
        natter_fabric::now_millis() as u32 ^ std::process::id()
    );
    let (sender, receiver) = (format!("canary-{run_id}-a"), format!("canary-{run_id}-b"));
    let work = async {
        let mut sockets: Option<(Socket, Socket)> = None;
        let mut ticks = tokio::time::interval(settings.every);
        let mut n = 0u64;
        loop {
            ticks.tick().await;
            n += 1;
            metrics::counter!("natter_canary_probes_total").increment(1);
            let result = async {
                if sockets.is_none() {
                    let a = connect(&settings, &sender).await?;
                    let b = connect(&settings, &receiver).await?;
                    sockets = Some((a, b));
                }
                let (a, b) = sockets.as_mut().expect("just connected");
                probe(a, b, &receiver, n, settings.timeout).await
            }
            .await;
            match result {
                Ok(latency) => metrics::histogram!("natter_canary_send_to_deliver_seconds")
                    .record(latency.as_secs_f64()),
                Err(err) => {
                    metrics::counter!("natter_canary_failures_total").increment(1);
                    tracing::warn!(error = %err, "canary probe failed");
                    sockets = None;
                }
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = work => {}
    }
}

async fn connect(settings: &CanarySettings, user: &str) -> Result<Socket, ProbeError> {
    let token = natter_auth::mint_hs256(
        settings.secret.as_bytes(),
        user,
        None,
        24 * 3600,
        None,
        None,
    )?;
    let url = format!(
        "ws://{}/v1/ws?token={token}&device=canary",
        settings.gateway
    );
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    Ok(socket)
}

/// Sends probe `n` from `a` to `to` and waits until `b` (the socket of `to`) has it.
async fn probe(
    a: &mut Socket,
    b: &mut Socket,
    to: &str,
    n: u64,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let text = format!("probe {n}");
    let started = Instant::now();
    let send = json!({
        "type": "send", "id": format!("probe-{n}-{}", natter_fabric::now_millis()),
        "to": format!("user:{to}"), "body": {"kind": "text", "text": text},
    });
    a.send(Message::text(send.to_string())).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, b.next())
            .await
            .map_err(|_| ProbeError::Timeout(timeout))?;
        let Message::Text(frame) = next.ok_or(ProbeError::Closed)?? else {
            continue;
        };
        let frame: Value = serde_json::from_str(frame.as_str()).unwrap_or_default();
        if frame["type"] == "msg" && frame["body"]["text"] == text.as_str() {
            let latency = started.elapsed();
            b.send(Message::text(
                json!({"type": "ack", "seq": frame["seq"]}).to_string(),
            ))
            .await?;
            drain(a).await;
            return Ok(latency);
        }
    }
}

/// Reads whatever the sender's socket has queued (its `sent`s and own copies).
async fn drain(a: &mut Socket) {
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::ZERO, a.next()).await {}
}
