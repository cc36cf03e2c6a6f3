//! HTTP routes: the WebSocket upgrade, the inbox and the chat list over plain HTTP, a group message's
//! per-member receipts ("message info"), media upload and download, health, and the web
//! client's files (`web`).
//!
//! Authentication happens here, before any socket exists: a missing or bad token is a
//! 401 and a malformed query a 400, with a JSON body `{error, message}`.

use axum::{
    Json, Router,
    extract::{Path, Query, State, WebSocketUpgrade},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use natter_fabric::{
    records::{InfoAnswer, InfoQuery},
    subjects,
};
use natter_schemas::HttpErrorCode;
use natter_schemas::ids::check_id;
use serde::Deserialize;

use crate::{
    App,
    auth::{AuthError, Identity},
    refusal::{Refusal, read_json, unavailable},
    session, web,
};

mod conversations;
mod media;

/// Largest JSON body a route reads (a device registration).
const MAX_JSON_BODY: usize = 16 * 1024;

pub(crate) fn router(app: App) -> Router {
    Router::new()
        .route("/v1/ws", get(websocket))
        .route("/v1/inbox", get(inbox))
        .route("/v1/conversations", get(conversations::list))
        .route("/v1/messages/{id}/receipts", get(message_info))
        .route("/v1/devices", post(register_device))
        .route("/v1/media", post(media::upload))
        .route("/v1/media/{id}", get(media::download))
        .route("/v1/dev/sign-in", post(web::dev_sign_in))
        .route("/healthz", get(healthz))
        .method_not_allowed_fallback(crate::refusal::method_not_allowed)
        .merge(web::routes(app.config.web.dir.as_deref()))
        .fallback(web::no_route)
        .with_state(app)
}

impl From<AuthError> for Refusal {
    fn from(err: AuthError) -> Self {
        Refusal(HttpErrorCode::Unauthorized, err.to_string())
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
    /// An inbox sequence, or `latest`: nothing from before (a new device that shows its
    /// chat list from `conversations` and pages history).
    after: Option<String>,
}

/// `after` as asked: a sequence, or `latest` (u64::MAX, which resumes at the inbox's
/// newest item).
fn resume_point(after: Option<&str>) -> Result<u64, Refusal> {
    match after {
        None => Ok(0),
        Some("latest") => Ok(u64::MAX),
        Some(seq) => seq.parse().map_err(|_| {
            Refusal(
                HttpErrorCode::BadRequest,
                "after must be an inbox sequence or `latest`".into(),
            )
        }),
    }
}

async fn websocket(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Refusal> {
    check_origin(&app, &headers)?;
    let Query(query) = query.map_err(|e| Refusal(HttpErrorCode::BadRequest, e.body_text()))?;
    let offered = offered_token(&headers);
    let identity = authenticate(&app, &headers, offered.or(query.token.as_deref()))?;
    // A device named in the token is authoritative; `?device=` may only repeat it.
    let device = match (identity.device, query.device) {
        (Some(claimed), Some(asked)) if claimed != asked => {
            return Err(Refusal(
                HttpErrorCode::BadId,
                "device does not match the token".into(),
            ));
        }
        (Some(claimed), _) => claimed,
        (None, asked) => asked.unwrap_or_else(|| "default".to_owned()),
    };
    check_id(&device, "device id").map_err(|e| Refusal(HttpErrorCode::BadId, e.to_string()))?;
    let after = resume_point(query.after.as_deref())?;
    let limits = &app.config.limits;
    let registration = app
        .presence
        .admit(&identity.user, limits.max_sockets_per_user)
        .await
        .map_err(|_| {
            Refusal(
                HttpErrorCode::TooManyConnections,
                format!(
                    "at most {} connections per user; close one first",
                    limits.max_sockets_per_user
                ),
            )
        })?;
    let opening = tokio::time::timeout(OPEN_TIMEOUT, session::open(&app, &identity.user, after))
        .await
        .map_err(|_| unavailable("the inbox did not answer in time"))?
        .map_err(unavailable)?;
    Ok(upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(128 * 1024)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        // A failed upgrade drops the closure, and with it the registration.
        .on_upgrade(move |socket| {
            let sessions = app.sessions.clone();
            let holder = session::Holder {
                user: identity.user,
                device,
                expires_at: identity.expires_at,
            };
            sessions.track_future(session::serve(app, holder, registration, opening, socket))
        }))
}

/// Charges a request to its user's token bucket (`crate::charge`): 429 `rate_limited`.
async fn charge(app: &App, user: &str, cost: u32) -> Result<(), Refusal> {
    crate::charge::pay_http(app, user, cost)
        .await
        .map_err(|limited| {
            Refusal(
                HttpErrorCode::RateLimited,
                format!("too many requests; retry in {} ms", limited.retry_after_ms),
            )
        })
}

/// The WebSocket subprotocol the gateway speaks, chosen when a client offers it.
const SUBPROTOCOL: &str = "natter.v1";

/// A token offered as a WebSocket subprotocol `bearer.<jwt>` (next to `natter.v1`): how a
/// browser, which cannot set `Authorization` on a WebSocket, keeps its token out of the URL
/// (and so out of proxies' and servers' access logs).
fn offered_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix("bearer."))
}

/// How long a socket's subscription, flush and inbox read may take before the upgrade is
/// refused (503; the client retries).
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// With an allow-list configured, a browser's socket (it sends `Origin`) must come from a
/// listed page, so another site cannot open sockets with a user's token. Clients that send
/// no `Origin` (native apps) are not browsers and pass.
fn check_origin(app: &App, headers: &HeaderMap) -> Result<(), Refusal> {
    let allowed = &app.config.web.allowed_origins;
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    if allowed.is_empty() || allowed.iter().any(|a| origin.as_bytes() == a.as_bytes()) {
        return Ok(());
    }
    Err(Refusal(
        HttpErrorCode::ForbiddenOrigin,
        "this page's origin may not open sockets here".into(),
    ))
}

#[derive(Debug, Deserialize)]
struct InboxQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Most items one `/v1/inbox` call returns.
const INBOX_PAGE_MAX: usize = 500;

/// Payload bytes past which a `/v1/inbox` page takes no more items (it holds at least one).
const INBOX_PAGE_BYTES: usize = 1024 * 1024;

/// `GET /v1/inbox?after=&limit=`: `{items, next}` with the same frames the socket sends;
/// `next` is the `after` for the following page.
async fn inbox(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    let identity = authenticate(&app, &headers, None)?;
    charge(&app, &identity.user, 2).await?;
    let Query(query) = query.map_err(|e| Refusal(HttpErrorCode::BadRequest, e.body_text()))?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if !(1..=INBOX_PAGE_MAX).contains(&limit) {
        return Err(Refusal(
            HttpErrorCode::BadRequest,
            format!("limit must be 1..={INBOX_PAGE_MAX}"),
        ));
    }
    let items = app
        .inbox
        .read_after(
            &identity.user,
            after,
            u64::MAX,
            natter_fabric::inbox::Page {
                items: limit,
                bytes: INBOX_PAGE_BYTES,
            },
        )
        .await
        .map_err(|e| Refusal(HttpErrorCode::Unavailable, e.to_string()))?;
    let next = items.last().map_or(after, |item| item.seq);
    let frames: Vec<String> = items
        .iter()
        .filter_map(|item| natter_schemas::inbox::with_seq(item.seq, &item.payload))
        .collect();
    let body = format!("{{\"items\":[{}],\"next\":{next}}}", frames.join(","));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/messages/<id>/receipts`: for the sender of a group message, each other
/// member's furthest status (`sent`, `delivered`, `read`), from the receipts workers'
/// checkpoints (at most a second behind the receipts themselves). 404 for anyone else, and
/// for messages that are not group messages (their receipts are in the sender's inbox).
async fn message_info(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let identity = authenticate(&app, &headers, None)?;
    charge(&app, &identity.user, 1).await?;
    check_id(&id, "message id").map_err(|e| Refusal(HttpErrorCode::BadId, e.to_string()))?;
    let query = InfoQuery {
        id: id.clone(),
        reader: identity.user,
    };
    let payload = serde_json::to_vec(&query).expect("queries serialize");
    let asked = tokio::time::timeout(
        INFO_TIMEOUT,
        app.nats.request(subjects::HISTORY_INFO, payload.into()),
    )
    .await;
    let answer = match asked {
        Ok(Ok(message)) => {
            serde_json::from_slice::<InfoAnswer>(&message.payload).map_err(unavailable)?
        }
        Ok(Err(err)) => return Err(unavailable(err)),
        Err(_) => return Err(unavailable("history did not answer in time")),
    };
    match answer {
        InfoAnswer::Info { conv, members } => {
            let all = |status: &[&str]| members.iter().all(|m| status.contains(&m.status.as_str()));
            let body = serde_json::json!({
                "id": id,
                "conv": conv,
                "delivered_all": all(&["delivered", "read"]),
                "read_all": all(&["read"]),
                "members": members,
            });
            Ok(Json(body).into_response())
        }
        InfoAnswer::NotFound => Err(Refusal(
            HttpErrorCode::NotFound,
            "no group message with this id sent by you".into(),
        )),
        InfoAnswer::Failed { error } => Err(unavailable(error)),
    }
}

/// How long message info waits for a history worker.
const INFO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Deserialize)]
struct DeviceRegistration {
    device: String,
    push: PushRegistration,
}

#[derive(Debug, Deserialize)]
struct PushRegistration {
    kind: String,
    token: String,
}

/// Longest push token accepted (APNs tokens are 64 hex characters, FCM's about 160).
const MAX_PUSH_TOKEN: usize = 4096;

/// `POST /v1/devices` `{device, push: {kind, token}}`: 204; notifications for this device
/// go there from now on. A device named in the token must be the one registered.
async fn register_device(
    State(app): State<App>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Refusal> {
    // Who asks first: nobody without a token gets to hold a connection with a slow body.
    let identity = authenticate(&app, &headers, None)?;
    let registration: DeviceRegistration =
        read_json(body, MAX_JSON_BODY, app.config.limits.body_timeout()).await?;
    check_id(&registration.device, "device id")
        .map_err(|e| Refusal(HttpErrorCode::BadId, e.to_string()))?;
    if identity
        .device
        .as_ref()
        .is_some_and(|own| *own != registration.device)
    {
        return Err(Refusal(
            HttpErrorCode::Forbidden,
            "the token names another device".into(),
        ));
    }
    let push = registration.push;
    if !app.config.push.kinds.contains(&push.kind) {
        return Err(Refusal(
            HttpErrorCode::Unsupported,
            format!(
                "push kind {:?} is not delivered here (accepted: {})",
                push.kind,
                app.config.push.kinds.join(", ")
            ),
        ));
    }
    if push.token.is_empty()
        || push.token.len() > MAX_PUSH_TOKEN
        || push.token.chars().any(char::is_control)
    {
        return Err(Refusal(
            HttpErrorCode::BadRequest,
            format!("the push token must be 1..={MAX_PUSH_TOKEN} printable characters"),
        ));
    }
    let target = natter_fabric::devices::PushTarget {
        kind: push.kind,
        token: push.token,
        updated: natter_fabric::now_millis(),
    };
    app.devices
        .register(&identity.user, &registration.device, target)
        .await
        .map_err(unavailable)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn healthz(State(app): State<App>) -> Response {
    match app.nats.connection_state() {
        async_nats::connection::State::Connected => (StatusCode::OK, "ok\n").into_response(),
        state => (StatusCode::SERVICE_UNAVAILABLE, format!("nats {state}\n")).into_response(),
    }
}
