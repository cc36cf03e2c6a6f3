//! `GET /v1/conversations?before=&limit=`: the chat list over plain HTTP, as the
//! `conversations` frame answers it: `{conversations, more}`.

use axum::{
    Json,
    extract::{Query, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use natter_schemas::HttpErrorCode;
use serde::Deserialize;

use super::{authenticate, charge};
use crate::{
    App,
    frames::conversations,
    refusal::{Refusal, unavailable},
};

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    before: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    let identity = authenticate(&app, &headers, None)?;
    let Query(query) = query.map_err(|e| Refusal(HttpErrorCode::BadRequest, e.body_text()))?;
    let limit =
        conversations::checked(query.before.as_deref(), query.limit).map_err(Refusal::from)?;
    charge(&app, &identity.user, crate::charge::chat_list_cost(limit)).await?;
    let (list, more) = conversations::ask(&app, &identity.user, query.before, limit)
        .await
        .map_err(unavailable)?;
    Ok(Json(serde_json::json!({"conversations": list, "more": more})).into_response())
}
