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
use natter_schemas::{HttpError, HttpErrorCode};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// An HTTP refusal: a stable code from the schema's [`HttpErrorCode`] and a message.
pub(crate) struct Refusal(pub HttpErrorCode, pub String);

/// The one place an HTTP error code gets its status.
pub(crate) fn status_of(code: HttpErrorCode) -> StatusCode {
    use HttpErrorCode as C;
    match code {
        C::BadRequest | C::BadId | C::Unsupported => StatusCode::BAD_REQUEST,
        C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::Forbidden | C::ForbiddenOrigin => StatusCode::FORBIDDEN,
        C::NotFound => StatusCode::NOT_FOUND,
        C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        C::Timeout => StatusCode::REQUEST_TIMEOUT,
        C::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::UnsupportedType | C::WrongType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        C::RateLimited
        | C::QuotaExceeded
        | C::TooManyConnections
        | C::TooManyTransfers
        | C::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = status_of(self.0);
        metrics::counter!("natter_gateway_http_refusals_total", "status" => status.as_str().to_owned())
            .increment(1);
        let body = HttpError {
            error: self.0,
            message: self.1,
        };
        (status, Json(body)).into_response()
    }
}

impl From<crate::frames::Refused> for Refusal {
    fn from(crate::frames::Refused(code, message): crate::frames::Refused) -> Self {
        Self(code.into(), message)
    }
}

impl Refusal {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self(HttpErrorCode::BadRequest, message.into())
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self(HttpErrorCode::NotFound, message.into())
    }
}

/// A store or NATS failure: the client may retry.
pub(crate) fn unavailable(err: impl std::fmt::Display) -> Refusal {
    Refusal(HttpErrorCode::Unavailable, err.to_string())
}

/// `405` for a `/v1` route asked with a method it does not take.
pub(crate) async fn method_not_allowed() -> Refusal {
    Refusal(
        HttpErrorCode::MethodNotAllowed,
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
                HttpErrorCode::Timeout,
                format!("the request body did not arrive within {deadline:?}"),
            ));
        }
        Ok(Err(_)) => {
            return Err(Refusal(
                HttpErrorCode::TooLarge,
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
    Refusal(HttpErrorCode::Timeout, message)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use natter_schemas::HttpErrorCode;

    use super::status_of;

    /// The statuses docs/PROTOCOL.md gives the codes.
    #[test]
    fn every_code_has_its_documented_status() {
        let documented = [
            ("bad_request", 400),
            ("unauthorized", 401),
            ("forbidden_origin", 403),
            ("not_found", 404),
            ("method_not_allowed", 405),
            ("timeout", 408),
            ("too_large", 413),
            ("wrong_type", 415),
            ("quota_exceeded", 429),
            ("too_many_connections", 429),
            ("too_many_transfers", 429),
            ("unavailable", 503),
            ("storage_full", 507),
        ];
        for (code, status) in documented {
            let found = HttpErrorCode::ALL.into_iter().find(|c| c.as_str() == code);
            let code = found.unwrap_or_else(|| panic!("{code} is not in the schema"));
            assert_eq!(
                status_of(code),
                StatusCode::from_u16(status).unwrap(),
                "{code:?}"
            );
        }
    }
}
