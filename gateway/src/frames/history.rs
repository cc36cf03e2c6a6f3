//! `history`: a page of a conversation the user is part of, from the history workers (the
//! gateway never touches the store).

use std::time::Duration;

use bytes::Bytes;
use natter_fabric::{
    records::{HistoryAnswer, HistoryQuery},
    subjects,
};
use natter_schemas::{
    Conversation, ErrorCode, HistoryPage, HistoryRequest, ServerFrame, ids::check_id,
};
use tokio::time::timeout;

use super::{Pending, Refused, bad_id, refuse};
use crate::{access::require_member, session::Session};

/// Default and largest `limit` of a `history` request.
const DEFAULT_HISTORY_PAGE: u32 = 50;
const MAX_HISTORY_PAGE: u32 = 100;
/// How long a `history` request waits for a history worker.
pub(crate) const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

impl Session {
    /// `history`: one page of a conversation the user is part of, from the history
    /// workers (the gateway never touches the store).
    pub(super) fn on_history(&mut self, request: HistoryRequest) -> Result<Pending, Refused> {
        let conv = Conversation::parse(&request.conv).map_err(bad_id)?;
        if let Some(before) = &request.before {
            check_id(before, "before").map_err(bad_id)?;
        }
        let limit = request.limit.unwrap_or(DEFAULT_HISTORY_PAGE);
        if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
            return Err(Refused(
                ErrorCode::BadRequest,
                format!("limit must be 1..={MAX_HISTORY_PAGE}"),
            ));
        }
        let group = self.group_to_check(&conv)?;
        let (app, user, reference) = (self.app.clone(), self.user.clone(), request.r#ref);
        Ok(Box::pin(async move {
            if let Some(gid) = group
                && let Err(refusal) = require_member(&app, &gid, &user).await
            {
                return Some(refusal.with_ref(reference));
            }
            let query = HistoryQuery {
                conv: conv.to_string(),
                reader: user.clone(),
                before: request.before,
                limit: limit as usize,
            };
            let payload = Bytes::from(serde_json::to_vec(&query).expect("queries serialize"));
            let started = std::time::Instant::now();
            let asked = timeout(
                HISTORY_TIMEOUT,
                app.nats.request(subjects::HISTORY_PAGE, payload),
            )
            .await;
            let answer = match asked {
                Ok(Ok(message)) => serde_json::from_slice::<HistoryAnswer>(&message.payload)
                    .map_err(|e| e.to_string()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("no answer in time".to_owned()),
            };
            Some(match answer {
                Ok(HistoryAnswer::Page { messages, more }) => {
                    metrics::histogram!("natter_gateway_history_seconds")
                        .record(started.elapsed().as_secs_f64());
                    ServerFrame::History(HistoryPage {
                        conv: query.conv,
                        messages,
                        more,
                        r#ref: reference,
                    })
                }
                Ok(HistoryAnswer::Failed { error }) | Err(error) => {
                    tracing::warn!(%error, "history page failed");
                    refuse(
                        ErrorCode::Unavailable,
                        "history unavailable; try again",
                        reference,
                    )
                }
            })
        }))
    }
}
