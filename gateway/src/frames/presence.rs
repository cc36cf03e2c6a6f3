//! `presence_subscribe`: online state and last seen of people one shares a conversation
//! with, now and on every change.

use std::time::Duration;

use futures_util::{StreamExt, stream};
use natter_schemas::{ErrorCode, ServerFrame, ids::check_id};
use tokio::time::timeout;

use super::{Refused, bad_id, refuse};
use crate::{
    access::may_follow,
    presence::FollowError,
    session::{End, Session},
};

/// How long a `presence_subscribe` may take (privacy checks and Redis) before it is
/// answered `unavailable`.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(3);
/// Users whose privacy is checked at once (each reads their group index, maybe history).
const CHECKS_AT_ONCE: usize = 64;

impl Session {
    /// `presence_subscribe`: a `presence` frame for each user now, and on every change
    /// later (relayed on `live.<me>`). Only users one shares a conversation with may
    /// be followed; the others are refused in one `forbidden` error. Answered in place
    /// (subscriptions are rare), within `PRESENCE_TIMEOUT`.
    pub(super) async fn on_presence_subscribe(
        &mut self,
        subscribe: natter_schemas::PresenceSubscribe,
    ) -> Result<(), End> {
        let reference = subscribe.r#ref.clone();
        let frames = match timeout(PRESENCE_TIMEOUT, self.follow(subscribe.users, &reference)).await
        {
            Ok(Ok(frames)) => frames,
            Ok(Err(refused)) => vec![refused.with_ref(reference)],
            Err(_) => vec![refuse(
                ErrorCode::Unavailable,
                "presence did not answer in time; try again",
                reference,
            )],
        };
        for frame in frames {
            self.write(frame.to_json()).await?;
        }
        Ok(())
    }

    async fn follow(
        &mut self,
        users: Vec<String>,
        reference: &Option<String>,
    ) -> Result<Vec<ServerFrame>, Refused> {
        let max = self.app.config.presence.max_follow;
        if users.len() > max {
            return Err(Refused(
                ErrorCode::BadRequest,
                format!("at most {max} users per presence_subscribe"),
            ));
        }
        let mut wanted: Vec<String> = Vec::with_capacity(users.len());
        for user in users {
            check_id(&user, "user id").map_err(bad_id)?;
            if !wanted.contains(&user) {
                wanted.push(user);
            }
        }
        let my_groups =
            self.app.groups.groups_of(&self.user).await.map_err(|err| {
                Refused(ErrorCode::Unavailable, format!("groups unavailable: {err}"))
            })?;
        let (app, me) = (&self.app, self.user.as_str());
        let checked: Vec<(String, Result<bool, String>)> = stream::iter(wanted)
            .map(|other| {
                let my_groups = &my_groups;
                async move {
                    let may = may_follow(app, me, my_groups, &other).await;
                    (other, may)
                }
            })
            .buffered(CHECKS_AT_ONCE)
            .collect()
            .await;
        let mut allowed = Vec::with_capacity(checked.len());
        let mut denied = Vec::new();
        for (other, may) in checked {
            match may {
                Ok(true) => allowed.push(other),
                Ok(false) => denied.push(other),
                Err(why) => return Err(Refused(ErrorCode::Unavailable, why)),
            }
        }
        let mut frames = Vec::new();
        if !denied.is_empty() {
            frames.push(refuse(
                ErrorCode::Forbidden,
                &format!(
                    "you share no conversation with {}: their presence is private",
                    denied.join(", ")
                ),
                reference.clone(),
            ));
        }
        let registration = self.presence.as_ref().expect("registered while serving");
        let states = self
            .app
            .presence
            .follow(registration, allowed, max)
            .await
            .map_err(|err| match err {
                FollowError::TooMany(_) => Refused(ErrorCode::BadRequest, err.to_string()),
                FollowError::Redis(err) => {
                    tracing::debug!(error = %err, "presence unavailable");
                    Refused(
                        ErrorCode::Unavailable,
                        "presence is unavailable; try again".into(),
                    )
                }
            })?;
        for state in states {
            frames.push(ServerFrame::Presence(self.app.presence.shown(state).await));
        }
        Ok(frames)
    }
}
