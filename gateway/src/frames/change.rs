//! `edit`, `delete` and `react`: changes to a message already sent, answered `changed`
//! once durable.
//!
//! The gateway looks the message up in history by id (`history.message`; a message is
//! there milliseconds after `sent`, so a change to a very new one waits for it briefly),
//! checks who may change it, and sends the change down the path the message took:
//! one-on-one, straight into both inboxes (`crate::direct`); groups, into `MSGS` after
//! the message, for fanout. Rules (docs/PROTOCOL.md): only the author edits, within
//! `limits.edit_window_secs`, keeping the kind of body (a media message: its caption);
//! the author deletes within `limits.delete_window_secs`, a group admin at any time;
//! any member reacts. Nothing changes a deleted message (history says so, or for the
//! moment before history knows, `natter_fabric::deletions`). A change in a group costs by
//! the group's size, like a group message, charged once the group is known.

use std::time::Duration;

use bytes::Bytes;
use natter_fabric::{
    now_millis, publish_durable,
    records::{ChangeRecord, MessageAnswer, MessageQuery, MsgsEntry},
    subjects,
};
use natter_schemas::{
    Body, Changed, Conversation, Delete, DeleteItem, Edit, EditItem, ErrorCode, InboxItem,
    MessageItem, React, ReactionItem, ServerFrame, change::check_emoji, ids::check_id,
    ids::message_time,
};
use tokio::time::{Instant, sleep, timeout};

use super::{HISTORY_TIMEOUT, Pending, Refused, bad_id, rate_limited, refuse};
use crate::{App, session::Session};

/// How long a change waits for a message that is not in history yet.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(3);
/// A message made longer ago than this that history does not have does not exist.
const NEW_MESSAGE_MS: u64 = 10_000;

/// What the user wants done to the message.
enum Wanted {
    Edit(Body),
    Delete,
    React(Option<String>),
}

impl Session {
    pub(super) fn on_edit(&mut self, edit: Edit) -> Result<Pending, Refused> {
        check_id(&edit.id, "message id").map_err(bad_id)?;
        edit.body
            .check()
            .map_err(|why| Refused(ErrorCode::BadRequest, why.into()))?;
        Ok(self.change(edit.id, Wanted::Edit(edit.body), edit.r#ref))
    }

    pub(super) fn on_delete(&mut self, delete: Delete) -> Result<Pending, Refused> {
        check_id(&delete.id, "message id").map_err(bad_id)?;
        Ok(self.change(delete.id, Wanted::Delete, delete.r#ref))
    }

    pub(super) fn on_react(&mut self, react: React) -> Result<Pending, Refused> {
        check_id(&react.id, "message id").map_err(bad_id)?;
        if let Some(emoji) = &react.emoji {
            check_emoji(emoji).map_err(|why| Refused(ErrorCode::BadRequest, why.into()))?;
        }
        Ok(self.change(react.id, Wanted::React(react.emoji), react.r#ref))
    }

    fn change(&self, id: String, wanted: Wanted, reference: Option<String>) -> Pending {
        let (app, user) = (self.app.clone(), self.user.clone());
        Box::pin(async move {
            Some(match change(&app, &user, &id, wanted).await {
                Ok(changed) => ServerFrame::Changed(Changed {
                    r#ref: reference,
                    ..changed
                }),
                Err(refused) => refused.with(reference),
            })
        })
    }
}

/// Why a change was not made, as the `error` frame it becomes.
enum NotChanged {
    Refused(ErrorCode, String),
    Limited(u64),
}

impl NotChanged {
    fn with(self, reference: Option<String>) -> ServerFrame {
        match self {
            Self::Refused(code, message) => refuse(code, &message, reference),
            Self::Limited(retry_after_ms) => rate_limited("change", retry_after_ms, reference),
        }
    }
}

fn forbidden(why: &str) -> NotChanged {
    NotChanged::Refused(ErrorCode::Forbidden, why.to_owned())
}

fn unavailable(err: impl std::fmt::Display) -> NotChanged {
    tracing::warn!(error = %err, "change not made");
    NotChanged::Refused(
        ErrorCode::Unavailable,
        "change not stored; try again".to_owned(),
    )
}

async fn change(app: &App, user: &str, id: &str, wanted: Wanted) -> Result<Changed, NotChanged> {
    let (found, marked) = tokio::join!(find(app, id), app.deletions.marked(id));
    let Some((original, in_history)) = found.map_err(unavailable)? else {
        return Err(forbidden(
            "no such message, or not in a conversation of yours",
        ));
    };
    let conv = Conversation::parse(&original.conv).map_err(unavailable)?;
    let group = match &conv {
        Conversation::Group(gid) => match app.groups.get(gid).await.map_err(unavailable)? {
            Some(group) if group.is_member(user) => Some(group),
            _ => {
                return Err(forbidden(
                    "no such message, or not in a conversation of yours",
                ));
            }
        },
        direct if direct.peer_of(user).is_none() => {
            return Err(forbidden(
                "no such message, or not in a conversation of yours",
            ));
        }
        _ => None,
    };
    let deleted = in_history || marked.map_err(unavailable)?;
    let limits = &app.config.limits;
    let age_ms = now_millis().saturating_sub(original.ts);
    let author = original.from == user;
    match &wanted {
        _ if deleted && !matches!(wanted, Wanted::Delete) => {
            return Err(forbidden("the message was deleted"));
        }
        Wanted::Edit(_) if !author => return Err(forbidden("only its author edits a message")),
        Wanted::Edit(_) if age_ms > limits.edit_window_secs * 1000 => {
            return Err(forbidden("too late to edit this message"));
        }
        Wanted::Edit(body) if !same_kind(&original.body, body) => {
            return Err(NotChanged::Refused(
                ErrorCode::BadRequest,
                "an edit keeps the kind of body (text, or the same file with a new caption)"
                    .to_owned(),
            ));
        }
        Wanted::Delete => {
            let in_time = author && age_ms <= limits.delete_window_secs * 1000;
            let admin = group.as_ref().is_some_and(|g| g.is_admin(user));
            if !(in_time || admin) {
                return Err(forbidden(if author {
                    "too late to delete this message for everyone"
                } else {
                    "only its author or a group admin deletes a message"
                }));
            }
        }
        _ => {}
    }
    if let Some(group) = &group {
        let extra = u32::try_from(group.members.len().div_ceil(64)).unwrap_or(u32::MAX);
        crate::charge::pay_more(app, user, extra)
            .await
            .map_err(|limited| NotChanged::Limited(limited.retry_after_ms))?;
    }
    let rev = uuid::Uuid::now_v7().to_string();
    let ts = now_millis();
    let (id, conv_text, from) = (id.to_owned(), original.conv.clone(), user.to_owned());
    let media = original.body.media().map(|m| m.media_id.clone());
    let item = match wanted {
        Wanted::Edit(body) => InboxItem::Edit(EditItem {
            id: id.clone(),
            conv: conv_text.clone(),
            from,
            rev: rev.clone(),
            ts,
            body,
        }),
        Wanted::Delete => InboxItem::Delete(DeleteItem {
            id: id.clone(),
            conv: conv_text.clone(),
            from,
            rev: rev.clone(),
            ts,
        }),
        Wanted::React(emoji) => InboxItem::Reaction(ReactionItem {
            id: id.clone(),
            conv: conv_text.clone(),
            from,
            rev: rev.clone(),
            ts,
            emoji,
        }),
    };
    let deleting = matches!(item, InboxItem::Delete(_));
    if deleting {
        // Before the deletion is stored: once any device has it, no change is let through.
        app.deletions.mark(&id).await.map_err(unavailable)?;
    }
    match &conv {
        Conversation::Group(_) => {
            let record = MsgsEntry::Change(ChangeRecord {
                rev: rev.clone(),
                change: item,
            });
            let payload = Bytes::from(serde_json::to_vec(&record).expect("records serialize"));
            let msg_id = format!("{user}:{rev}");
            publish_durable(&app.js, &subjects::msg(&conv), &msg_id, payload)
                .await
                .map_err(unavailable)?;
        }
        direct => {
            let peer = direct.peer_of(user).expect("checked above");
            crate::direct::store_change(app, &item, peer, user, &rev)
                .await
                .map_err(unavailable)?;
        }
    }
    if deleting
        && let Some(media_id) = media
        && let Err(err) = app.media.withdraw(&media_id, &conv_text).await
    {
        tracing::warn!(error = %err, media_id, "a deleted message's file is still shared");
    }
    Ok(Changed {
        r#ref: None,
        id,
        conv: conv_text,
        rev,
        ts,
    })
}

/// Whether an edit keeps the kind of the original body: text for text; for a file, the
/// same file and kind (only the caption changes).
fn same_kind(original: &Body, edited: &Body) -> bool {
    match (original, edited) {
        (Body::Text { .. }, Body::Text { .. }) => true,
        (a, b) => match (a.media(), b.media()) {
            (Some(x), Some(y)) => {
                std::mem::discriminant(a) == std::mem::discriminant(b)
                    && x.media_id == y.media_id
                    && x.mime == y.mime
                    && x.thumbnail == y.thumbnail
            }
            _ => false,
        },
    }
}

/// The message `id` as sent and whether it was deleted, from the history workers; waits
/// briefly for one made in the last seconds that history has not stored yet.
pub(super) async fn find(app: &App, id: &str) -> Result<Option<(MessageItem, bool)>, String> {
    let payload = Bytes::from(
        serde_json::to_vec(&MessageQuery { id: id.to_owned() }).expect("queries serialize"),
    );
    let patience = Instant::now() + LOOKUP_PATIENCE;
    loop {
        let asked = timeout(
            HISTORY_TIMEOUT,
            app.nats.request(subjects::HISTORY_MESSAGE, payload.clone()),
        )
        .await;
        let answer = match asked {
            Ok(Ok(message)) => serde_json::from_slice::<MessageAnswer>(&message.payload)
                .map_err(|e| e.to_string())?,
            Ok(Err(err)) => return Err(err.to_string()),
            Err(_) => return Err("no history worker answered in time".to_owned()),
        };
        match answer {
            MessageAnswer::Found { message, deleted } => return Ok(Some((*message, deleted))),
            MessageAnswer::Failed { error } => return Err(error),
            MessageAnswer::NotFound => {
                let new = message_time(id)
                    .is_some_and(|made| now_millis().saturating_sub(made) < NEW_MESSAGE_MS);
                if !new || Instant::now() >= patience {
                    return Ok(None);
                }
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
