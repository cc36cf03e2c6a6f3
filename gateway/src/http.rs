//! HTTP routes: the WebSocket upgrade, the inbox over plain HTTP, a group message's
//! per-member receipts ("message info"), and health.
//!
//! Authentication happens here, before any socket exists: a missing or bad token is a
//! 401 and a malformed query a 400, with a JSON body `{error, message}`.

use axum::{
    Json, Router,
    extract::{Path, Query, State, WebSocketUpgrade},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use natter_schemas::ids::check_id;
use serde::Deserialize;

use crate::{
    App,
    auth::{AuthError, Identity},
    session,
};

pub(crate) fn router(app: App) -> Router {
    Router::new()
        .route("/v1/ws", get(websocket))
        .route("/v1/inbox", get(inbox))
        .route("/v1/messages/{id}/receipts", get(message_info))
        .route("/healthz", get(healthz))
        .with_state(app)
}

/// An HTTP refusal with a stable code.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        metrics::counter!("natter_gateway_http_refusals_total", "status" => self.0.as_str().to_owned())
            .increment(1);
        let body = serde_json::json!({ "error": self.1, "message": self.2 });
        (self.0, Json(body)).into_response()
    }
}

impl From<AuthError> for Refusal {
    fn from(err: AuthError) -> Self {
        Refusal(StatusCode::UNAUTHORIZED, "unauthorized", err.to_string())
    }
}

fn authenticate(
    app: &App,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Identity, Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(query_token).ok_or(AuthError::Missing)?;
    Ok(app.verifier.verify(token.trim())?)
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
    device: Option<String>,
    after: Option<u64>,
}

async fn websocket(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Refusal> {
    let Query(query) =
        query.map_err(|e| Refusal(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let identity = authenticate(&app, &headers, query.token.as_deref())?;
    // A device named in the token is authoritative; `?device=` may only repeat it.
    let device = match (identity.device, query.device) {
        (Some(claimed), Some(asked)) if claimed != asked => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "bad_id",
                "device does not match the token".into(),
            ));
        }
        (Some(claimed), _) => claimed,
        (None, asked) => asked.unwrap_or_else(|| "default".to_owned()),
    };
    check_id(&device, "device id")
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, "bad_id", e.to_string()))?;
    let after = query.after.unwrap_or(0);
    let limits = &app.config.limits;
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(128 * 1024)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| session::serve(app, identity.user, device, after, socket)))
}

#[derive(Debug, Deserialize)]
struct InboxQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Most items one `/v1/inbox` call returns.
const INBOX_PAGE_MAX: usize = 500;

/// `GET /v1/inbox?after=&limit=`: `{items, next}` with the same frames the socket sends;
/// `next` is the `after` for the following page.
async fn inbox(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    let identity = authenticate(&app, &headers, None)?;
    let Query(query) =
        query.map_err(|e| Refusal(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if !(1..=INBOX_PAGE_MAX).contains(&limit) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("limit must be 1..={INBOX_PAGE_MAX}"),
        ));
    }
    let items = app
        .inbox
        .read_after(&identity.user, after, u64::MAX, limit)
        .await
        .map_err(|e| {
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })?;
    let next = items.last().map_or(after, |item| item.seq);
    let frames: Vec<String> = items
        .iter()
        .filter_map(|item| natter_schemas::inbox::with_seq(item.seq, &item.payload))
        .collect();
    let body = format!("{{\"items\":[{}],\"next\":{next}}}", frames.join(","));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/messages/<id>/receipts`: for the sender of a group message, each recipient's
/// furthest status (`sent`, `delivered`, `read`). 404 for anyone else, and for messages
/// that are not group messages (their one receipt is in the sender's inbox).
async fn message_info(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let identity = authenticate(&app, &headers, None)?;
    check_id(&id, "message id")
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, "bad_id", e.to_string()))?;
    let state = app.book.message(&id).await.map_err(|e| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let Some(state) = state.filter(|s| s.from == identity.user) else {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            "no group message with this id sent by you".into(),
        ));
    };
    let members: Vec<serde_json::Value> = state
        .recipients
        .iter()
        .map(|m| serde_json::json!({ "user": m, "status": state.status_of(m) }))
        .collect();
    let body = serde_json::json!({
        "id": id,
        "conv": state.conv,
        "members": members,
        "delivered_all": state.delivered.len() == state.recipients.len(),
        "read_all": state.read.len() == state.recipients.len(),
    });
    Ok(Json(body).into_response())
}

async fn healthz(State(app): State<App>) -> Response {
    match app.nats.connection_state() {
        async_nats::connection::State::Connected => (StatusCode::OK, "ok\n").into_response(),
        state => (StatusCode::SERVICE_UNAVAILABLE, format!("nats {state}\n")).into_response(),
    }
}
