//! The web client's files, and the development sign-in it uses locally.
//!
//! The gateway serves the browser client (`web/`) itself, so a local setup needs no other
//! server and the client talks to its own origin. tower-http's `ServeDir`/`ServeFile`
//! read the files from disk on each request (edits show up without a restart), answer
//! conditional and range requests, and refuse paths that leave their folder. Only what the
//! page loads is routed (`/`, `index.html`, `style.css`, `src/`): the rest of the folder
//! (tests, `node_modules`, package files) is not served, nor is any hidden file.
//!
//! `POST /v1/dev/sign-in` mints a token for any user id. It exists only when
//! `web.dev_sign_in` is set (scripts/up sets it); anywhere else it answers 404.

use std::path::Path as FsPath;

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use natter_schemas::HttpErrorCode;
use serde::Deserialize;
use tower_http::{
    services::{ServeDir, ServeFile},
    set_header::SetResponseHeaderLayer,
};

use crate::{
    App,
    refusal::{Refusal, read_json},
};

/// How long a development sign-in lasts.
const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Largest sign-in body (a user id and a device id).
const MAX_SIGN_IN_BODY: usize = 4 * 1024;

/// The only scripts, styles and connections a page may use: its own origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
     media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

/// The web client's routes for the folder `dir` (none: no routes, every path is 404).
pub(crate) fn routes(dir: Option<&FsPath>) -> Router<App> {
    let Some(dir) = dir else {
        return Router::new();
    };
    let index = ServeFile::new(dir.join("index.html"));
    Router::new()
        .route_service("/", index.clone())
        .route_service("/index.html", index)
        .route_service("/style.css", ServeFile::new(dir.join("style.css")))
        .nest_service("/src", ServeDir::new(dir.join("src")))
        .layer(middleware::from_fn(no_hidden_files))
        .layer(header_layer(header::CACHE_CONTROL, "no-cache"))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
}

fn header_layer(
    name: header::HeaderName,
    value: &'static str,
) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// 404 for a path with a segment that starts with a dot (`.git`, `.env`, `..`), written
/// plainly or percent-encoded, before any file is looked at.
async fn no_hidden_files(request: Request, next: Next) -> Response {
    let hidden = |segment: &str| {
        segment.starts_with('.')
            || segment
                .get(..3)
                .is_some_and(|s| s.eq_ignore_ascii_case("%2e"))
    };
    if request.uri().path().split('/').any(hidden) {
        return not_found();
    }
    next.run(request).await
}

/// Any path no route took: JSON under `/v1/`, like every other API answer; plain text
/// elsewhere.
pub(crate) async fn no_route(request: Request) -> Response {
    if request.uri().path().starts_with("/v1/") {
        return Refusal::not_found("no such route").into_response();
    }
    not_found()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignIn {
    user: String,
    device: Option<String>,
}

/// `POST /v1/dev/sign-in` `{user, device?}`: `{user, token}`, a token valid for a day.
/// Its body is read only when sign-in is on, within the body deadline.
pub(crate) async fn dev_sign_in(
    State(app): State<App>,
    body: axum::body::Body,
) -> Result<Response, Refusal> {
    let Some(secret) = app.dev_secret.as_deref() else {
        return Err(Refusal::not_found("development sign-in is off"));
    };
    let sign_in: SignIn =
        read_json(body, MAX_SIGN_IN_BODY, app.config.limits.body_timeout()).await?;
    let jwt = &app.config.jwt;
    let token = natter_auth::mint_hs256(
        secret.as_bytes(),
        &sign_in.user,
        sign_in.device.as_deref(),
        DEV_TOKEN_TTL_SECS,
        jwt.issuer.as_deref(),
        jwt.audience.as_deref(),
    )
    .map_err(|err| Refusal(HttpErrorCode::BadId, err.to_string()))?;
    Ok(Json(serde_json::json!({ "user": sign_in.user, "token": token })).into_response())
}
