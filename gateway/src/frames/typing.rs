//! `typing`: relayed to the other members' connected devices over core NATS, never stored.

use bytes::Bytes;
use natter_fabric::{groups::Refusal, subjects};
use natter_schemas::{Conversation, ServerFrame, Typing, TypingNotice};

use super::{Pending, Refused, bad_id};
use crate::session::Session;

impl Session {
    /// `typing`: relayed to the other members' connected devices over core NATS (never
    /// stored, no answer unless refused).
    pub(super) fn on_typing(&mut self, typing: Typing) -> Result<Pending, Refused> {
        let conv = Conversation::parse(&typing.conv).map_err(bad_id)?;
        let group = self.group_to_check(&conv)?;
        let (app, user, reference) = (self.app.clone(), self.user.clone(), typing.r#ref);
        Ok(Box::pin(async move {
            let others: Vec<String> = match (&conv, group) {
                (_, Some(gid)) => match app.groups.get(&gid).await {
                    Ok(Some(g)) if g.is_member(&user) => {
                        g.members.iter().filter(|m| **m != user).cloned().collect()
                    }
                    Ok(_) => return Some(Refused::from(Refusal::NotMember).with_ref(reference)),
                    Err(err) => return Some(Refused::from(err).with_ref(reference)),
                },
                (direct, None) => match direct.peer_of(&user).filter(|peer| *peer != user) {
                    Some(peer) if super::neither_blocked(&app, &user, peer).await => {
                        vec![peer.to_owned()]
                    }
                    _ => Vec::new(),
                },
            };
            let notice = ServerFrame::Typing(TypingNotice {
                conv: conv.to_string(),
                from: user,
                state: typing.state,
            });
            let payload = Bytes::from(notice.to_json());
            for other in &others {
                if let Err(err) = app
                    .nats
                    .publish(subjects::notice(other), payload.clone())
                    .await
                {
                    tracing::debug!(error = %err, "typing notice not relayed");
                }
            }
            metrics::counter!("natter_gateway_typing_relayed_total").increment(others.len() as u64);
            None
        }))
    }
}
