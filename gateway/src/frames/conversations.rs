//! `conversations` (and `GET /v1/conversations`, `crate::http`): a page of the user's chat
//! list, from the history workers (`history.conversations`), which keep each user's
//! conversations by recency as their inbox fills.

use bytes::Bytes;
use natter_fabric::{
    records::{ConversationsAnswer, ConversationsQuery},
    subjects,
};
use natter_schemas::{
    ConversationSummary, ConversationsPage, ConversationsRequest, ErrorCode, ServerFrame,
    ids::check_id,
};
use tokio::time::timeout;

use super::{HISTORY_TIMEOUT, Pending, Refused, refuse};
use crate::{App, session::Session};

/// Default and largest page of the chat list.
pub(crate) const DEFAULT_LIMIT: u32 = 50;
pub(crate) const MAX_LIMIT: u32 = 200;

impl Session {
    pub(super) fn on_conversations(
        &mut self,
        request: ConversationsRequest,
    ) -> Result<Pending, Refused> {
        let limit = checked(request.before.as_deref(), request.limit)?;
        let (app, user, reference) = (self.app.clone(), self.user.clone(), request.r#ref);
        Ok(Box::pin(async move {
            Some(match ask(&app, &user, request.before, limit).await {
                Ok((conversations, more)) => ServerFrame::Conversations(ConversationsPage {
                    conversations,
                    more,
                    r#ref: reference,
                }),
                Err(error) => {
                    tracing::warn!(%error, "chat list failed");
                    refuse(
                        ErrorCode::Unavailable,
                        "chat list unavailable; try again",
                        reference,
                    )
                }
            })
        }))
    }
}

/// Checks a chat list request's cursor and limit; the limit to use.
pub(crate) fn checked(before: Option<&str>, limit: Option<u32>) -> Result<u32, Refused> {
    if let Some(before) = before {
        check_id(before, "before").map_err(|e| Refused(ErrorCode::BadId, e.to_string()))?;
    }
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Refused(
            ErrorCode::BadRequest,
            format!("limit must be 1..={MAX_LIMIT}"),
        ));
    }
    Ok(limit)
}

/// A page of `user`'s chat list from the history workers.
pub(crate) async fn ask(
    app: &App,
    user: &str,
    before: Option<String>,
    limit: u32,
) -> Result<(Vec<ConversationSummary>, bool), String> {
    let query = ConversationsQuery {
        user: user.to_owned(),
        before,
        limit: limit as usize,
    };
    let payload = Bytes::from(serde_json::to_vec(&query).expect("queries serialize"));
    let started = std::time::Instant::now();
    let asked = timeout(
        HISTORY_TIMEOUT,
        app.nats.request(subjects::HISTORY_CONVERSATIONS, payload),
    )
    .await;
    let answer = match asked {
        Ok(Ok(message)) => serde_json::from_slice::<ConversationsAnswer>(&message.payload)
            .map_err(|e| e.to_string())?,
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err("no history worker answered in time".to_owned()),
    };
    metrics::histogram!("natter_gateway_chat_list_seconds").record(started.elapsed().as_secs_f64());
    match answer {
        ConversationsAnswer::Page {
            conversations,
            more,
        } => Ok((conversations, more)),
        ConversationsAnswer::Failed { error } => Err(error),
    }
}
