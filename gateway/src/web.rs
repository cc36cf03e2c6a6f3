//! The web client's files, and the development sign-in it uses locally.
//!
//! The gateway serves the browser client (`web/`) itself, so a local setup needs no other
//! server and the client talks to its own origin. Files are read from disk on each request
//! (small, and edits show up without a restart), only from the configured folder, and
//! only by names made of plain characters: no `..`, no hidden files.
//!
//! `POST /v1/dev/sign-in` mints a token for any user id. It exists only when
//! `web.dev_sign_in` is set (scripts/up sets it); anywhere else it answers 404.

use std::path::{Path as FsPath, PathBuf};

use axum::{
    Json,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use natter_schemas::HttpErrorCode;
use serde::Deserialize;

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

/// `GET /` and any other path no API route took: a file of the web client, or 404.
pub(crate) async fn file(State(app): State<App>, request: Request) -> Response {
    if request.uri().path().starts_with("/v1/") {
        // An API path no route has: JSON, like every other /v1 answer.
        return Refusal::not_found("no such route").into_response();
    }
    let not_found = || (StatusCode::NOT_FOUND, "not found\n").into_response();
    let Some(dir) = app.config.web.dir.as_deref() else {
        return not_found();
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
    }
    let Some(path) = resolve(dir, request.uri().path()) else {
        return not_found();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&path)),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => not_found(),
    }
}

/// What the page loads; the rest of the folder (tests, `node_modules`, package files) is
/// not served.
const SERVED: &[&str] = &["index.html", "style.css", "src"];

/// The file under `dir` that `uri_path` names (`/` is `index.html`), if the name is one
/// the client could have: under [`SERVED`], segments of letters, digits, `-`, `_` and `.`,
/// none starting with a dot.
fn resolve(dir: &FsPath, uri_path: &str) -> Option<PathBuf> {
    let relative = uri_path.trim_start_matches('/');
    let relative = if relative.is_empty() || relative.ends_with('/') {
        format!("{relative}index.html")
    } else {
        relative.to_owned()
    };
    if !SERVED.contains(&relative.split('/').next().unwrap_or_default()) {
        return None;
    }
    let mut path = dir.to_path_buf();
    for segment in relative.split('/') {
        let plain = segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if segment.is_empty() || segment.starts_with('.') || !plain {
            return None;
        }
        path.push(segment);
    }
    Some(path)
}

fn content_type(path: &FsPath) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pages_files_under_the_folder_resolve() {
        let dir = FsPath::new("/srv/web");
        assert_eq!(resolve(dir, "/"), Some(dir.join("index.html")));
        assert_eq!(resolve(dir, "/style.css"), Some(dir.join("style.css")));
        let module = resolve(dir, "/src/proto.js");
        assert_eq!(module, Some(dir.join("src/proto.js")));
        assert_eq!(resolve(dir, "/src/"), Some(dir.join("src/index.html")));
        let bad = [
            "/../etc/passwd",
            "/src/../../x",
            "/.git/config",
            "/src//b",
            "/src/a b",
            "/%2e%2e/x",
            "/package.json",
            "/node_modules/playwright-core/index.js",
            "/test/unit/store.test.js",
        ];
        for bad in bad {
            assert_eq!(resolve(dir, bad), None, "{bad}");
        }
    }
}
