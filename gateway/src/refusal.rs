//! How an HTTP route says no: a status, a stable code and a message, always as the JSON
//! body `{error, message}` that docs/PROTOCOL.md promises for every `/v1` error — axum's
//! own rejections (a method a route does not take, a path no route has) included.
//!
//! Request bodies are read here too, and only after the caller has authenticated the
//! request (or, for the development sign-in, decided that it may be read at all): within
//! [`Limits::body_timeout`](crate::config::Limits::body_timeout) and a byte bound, so a
//! client that sends its headers and then trickles (or never sends) its body holds a
//! connection for seconds, not for ever. An upload's body must keep a [`Pace`].

use std::time::Duration;

use axum::{
    Json,
    body::Body,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// An HTTP refusal with a stable code.
pub(crate) struct Refusal(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        metrics::counter!("natter_gateway_http_refusals_total", "status" => self.0.as_str().to_owned())
            .increment(1);
        let body = serde_json::json!({ "error": self.1, "message": self.2 });
        (self.0, Json(body)).into_response()
    }
}

impl Refusal {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, "bad_request", message.into())
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, "not_found", message.into())
    }
}

/// A store or NATS failure: the client may retry.
pub(crate) fn unavailable(err: impl std::fmt::Display) -> Refusal {
    Refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        err.to_string(),
    )
}

/// `405` for a `/v1` route asked with a method it does not take.
pub(crate) async fn method_not_allowed() -> Refusal {
    Refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method".into(),
    )
}

/// A JSON request body of at most `max_bytes`, read within `deadline`: 408 when it does not
/// arrive in time, 413 when it is larger, 400 when it is not the expected JSON.
pub(crate) async fn read_json<T: DeserializeOwned>(
    body: Body,
    max_bytes: usize,
    deadline: Duration,
) -> Result<T, Refusal> {
    let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, max_bytes)).await {
        Err(_) => {
            return Err(Refusal(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the request body did not arrive within {deadline:?}"),
            ));
        }
        Ok(Err(_)) => {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request bodies here are at most {max_bytes} bytes"),
            ));
        }
        Ok(Ok(bytes)) => bytes,
    };
    serde_json::from_slice(&bytes).map_err(|err| Refusal::bad_request(err.to_string()))
}

/// How slowly an upload may come: no pause between two chunks longer than `pause`, and
/// from `pause` after its start, on average at least `bytes_per_sec`.
#[derive(Clone, Copy)]
pub(crate) struct Pace {
    pub pause: Duration,
    pub bytes_per_sec: u64,
}

impl Pace {
    /// When more than `received` bytes must have come, counted from `started`.
    fn due(&self, started: Instant, received: u64) -> Instant {
        let at_pace = Duration::from_secs_f64(received as f64 / self.bytes_per_sec as f64);
        started + self.pause + at_pace
    }
}

/// A streamed request body (an upload) as bytes, failing with `TimedOut` when the client
/// falls behind `pace`.
pub(crate) fn body_stream(
    body: Body,
    pace: Pace,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    use futures_util::StreamExt;
    let started = Instant::now();
    let chunks = body.into_data_stream();
    futures_util::stream::unfold(Some((chunks, 0u64)), move |state| async move {
        let (mut chunks, received) = state?;
        let due = (Instant::now() + pace.pause).min(pace.due(started, received));
        match tokio::time::timeout_at(due, chunks.next()).await {
            Ok(Some(Ok(chunk))) => {
                let received = received + chunk.len() as u64;
                Some((Ok(chunk), Some((chunks, received))))
            }
            Ok(Some(Err(err))) => Some((Err(std::io::Error::other(err)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the upload paused for more than {:?} or came slower than {} bytes/s",
                        pace.pause, pace.bytes_per_sec
                    ),
                )),
                None,
            )),
        }
    })
}

/// 408 for a body that stopped arriving.
pub(crate) fn body_timed_out(message: String) -> Refusal {
    Refusal(StatusCode::REQUEST_TIMEOUT, "timeout", message)
}
