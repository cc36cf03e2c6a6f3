//! `group_create`, `group_add`, `group_remove`, `group_leave`: changes to the `groups`
//! bucket (compare-and-set, with the rules in `natter_fabric::groups::Group`), each then
//! announced through `MSGS` so members' inboxes get a `group_event` in order with the
//! group's messages.

use bytes::Bytes;
use natter_fabric::{
    groups::{Change, Group},
    now_millis, publish_durable,
    records::MsgsEntry,
    subjects,
};
use natter_schemas::{
    Conversation, ErrorCode, GroupChange, GroupCreate, GroupLeave, ServerFrame, ids::check_id,
};

use super::{Pending, Refused, bad_id, refuse};
use crate::{App, session::Session};

impl Session {
    /// `group_create`: a new group with a fresh id, the sender as its admin.
    pub(super) fn on_group_create(&mut self, create: GroupCreate) -> Result<Pending, Refused> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let limit = self.app.config.limits.max_group_members;
        let (group, change) = Group::create(
            id,
            &create.name,
            &self.user,
            &create.members,
            limit,
            now_millis(),
        )
        .map_err(Refused::from)?;
        let (app, user) = (self.app.clone(), self.user.clone());
        let reference = create.r#ref;
        Ok(Box::pin(async move {
            if let Err(denied) = super::block::may_add(&app, &user, &create.members).await {
                return Some(denied.with_ref(reference));
            }
            if let Err(err) = app.groups.create(&group).await {
                return Some(Refused::from(err).with_ref(reference));
            }
            Some(announce(&app, &group, Some(change), reference).await)
        }))
    }

    /// `group_add` / `group_remove`: admins only.
    pub(super) fn on_group_change(
        &mut self,
        change: GroupChange,
        membership: Membership,
    ) -> Result<Option<Pending>, Refused> {
        check_id(&change.group, "group id").map_err(bad_id)?;
        let (app, user) = (self.app.clone(), self.user.clone());
        let limit = app.config.limits.max_group_members;
        Ok(Some(Box::pin(async move {
            if matches!(membership, Membership::Add)
                && let Err(denied) = super::block::may_add(&app, &user, &change.members).await
            {
                return Some(denied.with_ref(change.r#ref));
            }
            let updated = app
                .groups
                .update(&change.group, |group| {
                    let ts = now_millis();
                    match membership {
                        Membership::Add => group.add(&user, &change.members, limit, ts),
                        Membership::Remove => group.remove(&user, &change.members, ts),
                    }
                })
                .await;
            Some(match updated {
                Ok((group, event)) => announce(&app, &group, event, change.r#ref).await,
                Err(err) => Refused::from(err).with_ref(change.r#ref),
            })
        })))
    }

    /// `group_leave`: any member.
    pub(super) fn on_group_leave(&mut self, leave: GroupLeave) -> Result<Pending, Refused> {
        check_id(&leave.group, "group id").map_err(bad_id)?;
        let (app, user) = (self.app.clone(), self.user.clone());
        Ok(Box::pin(async move {
            let updated = app
                .groups
                .update(&leave.group, |group| {
                    group.leave(&user, now_millis()).map(Some)
                })
                .await;
            Some(match updated {
                Ok((group, event)) => announce(&app, &group, event, leave.r#ref).await,
                Err(err) => Refused::from(err).with_ref(leave.r#ref),
            })
        }))
    }
}

/// Which way `group_add` / `group_remove` changes a group.
#[derive(Debug, Clone, Copy)]
pub(super) enum Membership {
    Add,
    Remove,
}

/// Puts a group change into `MSGS` (the group's partition, ordered with its messages) for
/// the fanout workers, then answers with the group as it is now.
async fn announce(
    app: &App,
    group: &Group,
    change: Option<Change>,
    reference: Option<String>,
) -> ServerFrame {
    if let Some(change) = change {
        let event = change.record();
        let msg_id = format!("gev:{}", event.event_id);
        let subject = subjects::msg(&Conversation::Group(group.id.clone()));
        let record = MsgsEntry::GroupEvent(event);
        let payload = Bytes::from(serde_json::to_vec(&record).expect("records serialize"));
        if let Err(err) = publish_durable(&app.js, &subject, &msg_id, payload).await {
            tracing::warn!(error = %err, group = %group.id, "group change stored but not announced");
            return refuse(
                ErrorCode::Unavailable,
                "the change is stored but members were not told yet; try again",
                reference,
            );
        }
    }
    ServerFrame::Group(group.info(reference))
}
