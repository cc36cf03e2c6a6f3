//! What a `send` refers to besides its body: the message it replies to (`reply_to`), the
//! one it forwards (`forward_of`) and the members it mentions (`mentions`). Each is
//! checked against the conversation before the message is stored, so nobody can quote,
//! forward or mention what they could not see.

use std::collections::BTreeSet;

use natter_schemas::{Conversation, ErrorCode, ids::check_id, send::MAX_MENTIONS};

use super::{Refused, bad_id};
use crate::App;

/// A send's references, checked for shape (synchronously).
pub(super) struct References {
    pub reply_to: Option<String>,
    pub forward_of: Option<String>,
    pub mentions: Vec<String>,
}

impl References {
    pub(super) fn check(
        reply_to: Option<String>,
        forward_of: Option<String>,
        mentions: Vec<String>,
    ) -> Result<Self, Refused> {
        if let Some(reply_to) = &reply_to {
            check_id(reply_to, "reply_to").map_err(bad_id)?;
        }
        if let Some(forward_of) = &forward_of {
            check_id(forward_of, "forward_of").map_err(bad_id)?;
        }
        if mentions.len() > MAX_MENTIONS {
            return Err(Refused(
                ErrorCode::BadRequest,
                format!("at most {MAX_MENTIONS} mentions"),
            ));
        }
        let mut unique = BTreeSet::new();
        for user in &mentions {
            check_id(user, "mention").map_err(bad_id)?;
            unique.insert(user.clone());
        }
        Ok(Self {
            reply_to,
            forward_of,
            mentions: unique.into_iter().collect(),
        })
    }

    /// Checks them against `conv`, which `user` sends to (and is a member of); how many
    /// times the message has been forwarded, when it forwards one.
    pub(super) async fn resolve(
        &self,
        app: &App,
        user: &str,
        conv: &Conversation,
    ) -> Result<Option<u32>, Refused> {
        let bad = |why: &str| Refused(ErrorCode::BadRequest, why.to_owned());
        if !self.mentions.is_empty() {
            let members: Vec<String> = match conv {
                Conversation::Group(gid) => app
                    .groups
                    .get(gid)
                    .await
                    .map_err(Refused::from)?
                    .map(|g| g.members.clone())
                    .unwrap_or_default(),
                Conversation::Direct { a, b } => vec![a.clone(), b.clone()],
            };
            if self.mentions.iter().any(|m| !members.contains(m)) {
                return Err(bad("mentions must be members of the conversation"));
            }
        }
        if let Some(reply_to) = &self.reply_to {
            let found = lookup(app, reply_to).await?;
            if found.is_none_or(|m| m.conv != conv.to_string()) {
                return Err(bad("reply_to must be a message of this conversation"));
            }
        }
        let Some(forward_of) = &self.forward_of else {
            return Ok(None);
        };
        let original = lookup(app, forward_of).await?;
        let visible = match &original {
            Some(m) => may_see(app, user, &m.conv).await?,
            None => false,
        };
        match original.filter(|_| visible) {
            Some(m) => Ok(Some(m.forwarded.unwrap_or(0).saturating_add(1))),
            None => Err(Refused(
                ErrorCode::Forbidden,
                "no such message, or not yours to forward".into(),
            )),
        }
    }
}

async fn lookup(app: &App, id: &str) -> Result<Option<natter_schemas::MessageItem>, Refused> {
    match super::change::find(app, id).await {
        Ok(found) => Ok(found.map(|(message, _)| message)),
        Err(err) => {
            tracing::warn!(error = %err, "history unavailable");
            Err(Refused(
                ErrorCode::Unavailable,
                "history unavailable; retry with the same id".into(),
            ))
        }
    }
}

/// Whether `user` is in `conv` now.
async fn may_see(app: &App, user: &str, conv: &str) -> Result<bool, Refused> {
    match Conversation::parse(conv) {
        Ok(Conversation::Group(gid)) => app
            .groups
            .is_member(&gid, user)
            .await
            .map_err(Refused::from),
        Ok(direct) => Ok(direct.peer_of(user).is_some()),
        Err(_) => Ok(false),
    }
}
