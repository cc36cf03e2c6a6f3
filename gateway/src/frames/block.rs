//! `block`, `unblock` and `blocks`: the user's block list (`natter_fabric::blocks`), each
//! answered with the whole list. What a block stops is enforced where each thing happens:
//! one-on-one sends (`send.rs`: a blocked sender's messages are stored for their own
//! devices only), typing, presence (`crate::access::may_follow`), read receipts
//! (`receipts.rs`) and group adds (`groups.rs`).

use natter_fabric::blocks::BlocksError;
use natter_schemas::{Block, Blocked, ErrorCode, ServerFrame, ids::check_id};

use futures_util::future::join_all;

use super::{Pending, Refused, bad_id, refuse};
use crate::{App, session::Session};

impl Session {
    /// `block` (`block: true`) or `unblock`.
    pub(super) fn on_block(&mut self, frame: Block, block: bool) -> Result<Pending, Refused> {
        check_id(&frame.user, "user id").map_err(bad_id)?;
        if frame.user == self.user {
            return Err(Refused(
                ErrorCode::BadRequest,
                "one cannot block oneself".into(),
            ));
        }
        let (app, user, reference) = (self.app.clone(), self.user.clone(), frame.r#ref);
        Ok(Box::pin(async move {
            let changed = app.blocks.set(&user, &frame.user, block).await;
            Some(answer(changed, reference))
        }))
    }

    pub(super) fn on_blocks(&mut self, reference: Option<String>) -> Pending {
        let (app, user) = (self.app.clone(), self.user.clone());
        Box::pin(async move { Some(answer(app.blocks.of(&user).await, reference)) })
    }
}

fn answer(
    list: Result<std::sync::Arc<std::collections::BTreeSet<String>>, BlocksError>,
    reference: Option<String>,
) -> ServerFrame {
    match list {
        Ok(users) => ServerFrame::Blocked(Blocked {
            r#ref: reference,
            users: users.iter().cloned().collect(),
        }),
        Err(BlocksError::TooMany) => refuse(
            ErrorCode::LimitExceeded,
            &BlocksError::TooMany.to_string(),
            reference,
        ),
        Err(err) => {
            tracing::warn!(error = %err, "blocks unavailable");
            refuse(
                ErrorCode::Unavailable,
                "blocks unavailable; try again",
                reference,
            )
        }
    }
}

/// Refuses adding `members` to a group by `actor` when any of them blocked `actor`.
pub(super) async fn may_add(app: &App, actor: &str, members: &[String]) -> Result<(), Refused> {
    let others: Vec<&String> = members.iter().filter(|m| *m != actor).collect();
    for chunk in others.chunks(16) {
        let lists = join_all(chunk.iter().map(|member| app.blocks.of(member))).await;
        for (member, blocked) in chunk.iter().zip(lists) {
            match blocked {
                Ok(list) if list.contains(actor) => {
                    return Err(Refused(
                        ErrorCode::Forbidden,
                        format!("{member} cannot be added by you"),
                    ));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "blocks unavailable");
                    return Err(Refused(
                        ErrorCode::Unavailable,
                        "blocks unavailable; try again".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether `a` and `b` may reach each other (neither blocked the other); a store that
/// does not answer counts as a block for what is optional (typing, receipts, presence).
pub(crate) async fn neither_blocked(app: &App, a: &str, b: &str) -> bool {
    match app.blocks.either(a, b).await {
        Ok(blocked) => !blocked,
        Err(err) => {
            tracing::warn!(error = %err, "blocks unavailable; withholding");
            false
        }
    }
}
