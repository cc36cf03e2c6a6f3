//! Media routes: upload (`POST /v1/media`) streamed into the object store and download
//! (`GET /v1/media/<id>`, one `Range` honoured) streamed out of it, served inert.
//!
//! A file moves at least at `limits.min_transfer_bytes_per_sec` on average (after a first
//! `limits.body_timeout_ms`), and one user moves at most `limits.transfers_per_user` files
//! at once on a gateway: a client that trickles cannot hold a connection slot for hours,
//! and one account cannot hold many (`crate::exchange`).

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use natter_fabric::media::MediaError;
use natter_schemas::HttpErrorCode;
use tokio::time::Instant;
use tokio_util::io::StreamReader;

use super::{authenticate, charge};
use crate::{
    App,
    exchange::{Deadline, Transfer, Transfers},
    refusal::{Pace, Refusal, unavailable},
};

/// `POST /v1/media`: the body is the file, `Content-Type` its type. Streamed into the
/// object store (never held whole in memory); 201 `{id, size, sha256, mime}`.
pub(super) async fn upload(
    State(app): State<App>,
    deadline: Option<Extension<Deadline>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Refusal> {
    let identity = authenticate(&app, &headers, None)?;
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Refusal(HttpErrorCode::BadRequest, "Content-Type is required".into()))?;
    let media = &app.config.media;
    if !media.allowed_types.contains(&mime) {
        return Err(Refusal(
            HttpErrorCode::UnsupportedType,
            format!("{mime} is not an accepted type"),
        ));
    }
    let too_large = || {
        Refusal(
            HttpErrorCode::TooLarge,
            format!("files are at most {} bytes", media.max_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > media.max_bytes) {
        return Err(too_large());
    }
    let _transfer = start_transfer(&app, &identity.user)?;
    // 1 token and 1 per MiB (a chunked upload that declares no length as 10 MiB), and
    // the MiB from the day's quota (no length declared: as the largest file allowed).
    let mib = |bytes: u64| u32::try_from(bytes.div_ceil(1024 * 1024).max(1)).unwrap_or(u32::MAX);
    charge(&app, &identity.user, 1 + declared.map_or(10, mib)).await?;
    let quota = declared.map_or(mib(media.max_bytes), mib);
    crate::charge::upload(&app, &identity.user, quota)
        .await
        .map_err(|limited| {
            Refusal(
                HttpErrorCode::QuotaExceeded,
                format!(
                    "the day's upload quota ({} MiB) is used up; retry in {} s",
                    media.mib_per_day,
                    limited.retry_after_ms.div_ceil(1000)
                ),
            )
        })?;
    // The body comes at the pace allowed or is refused (408); the connection outlives
    // that by a pause, for the answer.
    let limits = &app.config.limits;
    let started = Instant::now();
    if let Some(Extension(deadline)) = &deadline {
        let most = declared.unwrap_or(media.max_bytes);
        deadline.set(started + limits.transfer_time(most) + limits.body_timeout());
    }
    let pace = Pace {
        pause: limits.body_timeout(),
        bytes_per_sec: limits.min_transfer_bytes_per_sec,
    };
    let mut reader = std::pin::pin!(StreamReader::new(crate::refusal::body_stream(body, pace)));
    let stored = app
        .media
        .put(&identity.user, &mime, media.max_bytes, &mut reader)
        .await
        .map_err(|err| match err {
            MediaError::TooLarge { .. } => too_large(),
            MediaError::WrongType { .. } => Refusal(HttpErrorCode::WrongType, err.to_string()),
            MediaError::Full => Refusal(
                HttpErrorCode::StorageFull,
                "the media store is full; try again later".into(),
            ),
            MediaError::Read(ref io) if io.kind() == std::io::ErrorKind::TimedOut => {
                crate::refusal::body_timed_out(err.to_string())
            }
            MediaError::Empty | MediaError::Read(_) => {
                Refusal(HttpErrorCode::BadRequest, err.to_string())
            }
            other => unavailable(other),
        })?;
    metrics::counter!("natter_gateway_media_uploaded_bytes_total").increment(stored.size);
    metrics::histogram!("natter_gateway_media_upload_seconds")
        .record(started.elapsed().as_secs_f64());
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

/// `GET /v1/media/<id>`: the file, streamed, with one `Range` honoured (206). 404 for
/// anyone who may not see it, exactly as for an id that does not exist.
pub(super) async fn download(
    State(app): State<App>,
    deadline: Option<Extension<Deadline>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let identity = authenticate(&app, &headers, None)?;
    let not_found = || Refusal(HttpErrorCode::NotFound, "no such media".into());
    let access = app
        .media
        .access(&id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    if !crate::access::may_see(&app, &identity.user, &access)
        .await
        .map_err(unavailable)?
    {
        return Err(not_found());
    }
    let transfer = start_transfer(&app, &identity.user)?;
    let size = access.size;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| byte_range(v, size));
    let common = [
        (header::CONTENT_TYPE, access.mime.clone()),
        (header::ETAG, format!("\"{}\"", access.sha256)),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::CONTENT_DISPOSITION, disposition(&id, &access.mime)),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        (header::CONTENT_SECURITY_POLICY, MEDIA_CSP.to_owned()),
    ];
    // The client reads the file at the pace allowed, or its connection is closed.
    let sent = |first: u64, last: u64| {
        if let Some(Extension(deadline)) = &deadline {
            let limits = &app.config.limits;
            deadline.set(Instant::now() + limits.transfer_time(last - first + 1));
        }
        held(app.media.read(&access, first, last), transfer)
    };
    let response = match range {
        None => {
            let body = sent(0, size - 1);
            let length = [(header::CONTENT_LENGTH, size.to_string())];
            (StatusCode::OK, common, length, body).into_response()
        }
        Some(None) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response(),
        Some(Some((first, last))) => {
            let body = sent(first, last);
            let headers = [
                (header::CONTENT_LENGTH, (last - first + 1).to_string()),
                (
                    header::CONTENT_RANGE,
                    format!("bytes {first}-{last}/{size}"),
                ),
            ];
            (StatusCode::PARTIAL_CONTENT, common, headers, body).into_response()
        }
    };
    Ok(response)
}

/// One more upload or download for `user`, or 429 when they have as many as allowed.
fn start_transfer(app: &App, user: &str) -> Result<Transfer, Refusal> {
    let cap = app.config.limits.transfers_per_user;
    Transfers::start(&app.transfers, user, cap).ok_or_else(|| {
        Refusal(
            HttpErrorCode::TooManyTransfers,
            format!("at most {cap} uploads and downloads at once; wait for one to finish"),
        )
    })
}

/// A response body of `chunks` that holds its user's `transfer` until it is sent (or
/// dropped with its connection).
fn held<S>(chunks: S, transfer: Transfer) -> axum::body::Body
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
{
    axum::body::Body::from_stream(chunks.map(move |chunk| {
        let _held = &transfer;
        chunk
    }))
}

/// A downloaded file may not run anything, even when opened as a page of the gateway's
/// origin (an SVG or HTML a user uploaded as another type): no scripts, no requests, a
/// sandbox of its own.
const MEDIA_CSP: &str =
    "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox";

/// Pictures, sound and video open in place; anything else is saved, never rendered as a
/// page. Files keep no name of their own: the name is the media id.
fn disposition(id: &str, mime: &str) -> String {
    let shown = ["image/", "audio/", "video/"]
        .iter()
        .any(|kind| mime.starts_with(kind))
        && mime != "image/svg+xml";
    let kind = if shown { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{id}\"")
}

/// One `bytes=` range of a `size`-byte file as (first, last) byte; `None` when it cannot
/// be satisfied (or is not one range).
fn byte_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.checked_sub(n.min(size))?, size - 1)
        }
        (first, "") => (first.parse().ok()?, size - 1),
        (first, last) => (first.parse().ok()?, last.parse::<u64>().ok()?.min(size - 1)),
    };
    (first <= last && first < size).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn single_byte_ranges_are_understood_and_the_rest_refused() {
        assert_eq!(byte_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(byte_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(byte_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(byte_range("bytes=990-5000", 1000), Some((990, 999)));
        assert_eq!(byte_range("bytes=1000-", 1000), None);
        assert_eq!(byte_range("bytes=5-1", 1000), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(byte_range("items=0-1", 1000), None);
        assert_eq!(byte_range("bytes=-0", 1000), None);
    }
}
