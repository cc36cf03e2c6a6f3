//! Who may do what: read or write a conversation, see a file, follow someone's presence.
//! Used by the socket's frame handlers and by the HTTP routes alike.

use std::collections::BTreeSet;

use bytes::Bytes;
use natter_fabric::{
    groups::Refusal,
    media::MediaAccess,
    records::{HistoryAnswer, HistoryQuery},
    subjects,
};
use natter_schemas::{Conversation, ErrorCode};
use tokio::time::timeout;

use crate::{App, frames::Refused};

/// Refuses anyone who is not (or no longer) a member of `gid`.
pub(crate) async fn require_member(app: &App, gid: &str, user: &str) -> Result<(), Refused> {
    match app.groups.is_member(gid, user).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refusal::NotMember.into()),
        Err(err) => Err(err.into()),
    }
}

/// Lets the members of `conv` fetch the file a media message refers to, if `user` may
/// share it: they uploaded it, or can already see it. Recorded before the message is
/// stored, so recipients can fetch it as soon as it arrives; `true` when this added the
/// conversation, for [`unshare_media`] to take back if no message of `conv` was stored.
pub(crate) async fn share_media(
    app: &App,
    user: &str,
    conv: &str,
    media: &natter_schemas::body::Media,
) -> Result<bool, Refused> {
    let unavailable = |err: String| {
        tracing::warn!(error = %err, "media store failed");
        Refused(
            ErrorCode::Unavailable,
            "media unavailable; retry with the same id".into(),
        )
    };
    let access = app
        .media
        .access(&media.media_id)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let allowed = match &access {
        Some(access) => may_see(app, user, access).await.map_err(unavailable)?,
        None => false,
    };
    let Some(access) = access.filter(|_| allowed) else {
        return Err(Refused(
            ErrorCode::Forbidden,
            "no such media, or not yours to share".into(),
        ));
    };
    if access.mime != media.mime {
        return Err(Refused(
            ErrorCode::BadRequest,
            format!("mime must be the uploaded type, {}", access.mime),
        ));
    }
    app.media
        .share(&media.media_id, conv)
        .await
        .map_err(|e| unavailable(e.to_string()))
}

/// Takes back a share that [`share_media`] added for a send that stored nothing new in
/// `conv`: a re-sent client id whose first message went to another conversation. Without
/// this, re-sending a media message's id with another `to` granted the file to people
/// who never got a message about it.
pub(crate) async fn unshare_media(app: &App, media_id: &str, conv: &str) {
    if let Err(err) = app.media.unshare(media_id, conv).await {
        tracing::warn!(error = %err, media_id, conv, "media share not taken back");
    }
}

/// Whether `me` may see `other`'s presence: themselves, someone in a group with them, or
/// someone they have a one-on-one conversation with (at least one message in history).
/// Never someone who blocked `me` or whom `me` blocked. `my_groups` is what `me`'s group
/// index lists (`Groups::groups_of`).
pub(crate) async fn may_follow(
    app: &App,
    me: &str,
    my_groups: &BTreeSet<String>,
    other: &str,
) -> Result<bool, String> {
    if me == other {
        return Ok(true);
    }
    let blocked = app.blocks.either(me, other).await;
    if blocked.map_err(|err| format!("blocks unavailable: {err}"))? {
        return Ok(false);
    }
    let shared = app.groups.share_a_group(me, my_groups, other).await;
    if shared.map_err(|err| format!("groups unavailable: {err}"))? {
        return Ok(true);
    }
    let query = HistoryQuery {
        conv: Conversation::direct(me, other).to_string(),
        reader: me.to_owned(),
        before: None,
        limit: 1,
    };
    let payload = Bytes::from(serde_json::to_vec(&query).expect("queries serialize"));
    let answer = timeout(
        crate::frames::HISTORY_TIMEOUT,
        app.nats.request(subjects::HISTORY_PAGE, payload),
    )
    .await
    .map_err(|_| "history did not answer in time; try again".to_owned())?
    .map_err(|e| format!("history unavailable: {e}"))?;
    match serde_json::from_slice::<HistoryAnswer>(&answer.payload) {
        Ok(HistoryAnswer::Page { messages, .. }) => Ok(!messages.is_empty()),
        Ok(HistoryAnswer::Failed { error }) => Err(format!("history unavailable: {error}")),
        Err(err) => Err(format!("history answered nonsense: {err}")),
    }
}

/// Whether `user` may fetch a file: its uploader, or a member of a conversation where a
/// message referred to it.
pub(crate) async fn may_see(app: &App, user: &str, access: &MediaAccess) -> Result<bool, String> {
    if access.uploader == user {
        return Ok(true);
    }
    for conv in &access.convs {
        let member = match Conversation::parse(conv) {
            Ok(Conversation::Group(gid)) => app
                .groups
                .is_member(&gid, user)
                .await
                .map_err(|e| e.to_string())?,
            Ok(direct) => direct.peer_of(user).is_some(),
            Err(_) => false,
        };
        if member {
            return Ok(true);
        }
    }
    Ok(false)
}
