//! `ack` and `read`: what a device has and what its user read, turned into receipts for
//! the senders (`crate::receipts` works out what an ack covers; `crate::marks` collects
//! and stores them). A one-on-one `read` reaches the sender only when both have read
//! receipts on and neither blocked the other; otherwise it goes to the reader's own inbox.

use natter_fabric::{now_millis, watermarks::GroupMark};
use natter_schemas::{
    Conversation, ErrorCode, ReceiptItem, ReceiptStatus,
    ids::{check_id, message_time},
};

use super::{Pending, Refused, bad_id};
use crate::{App, access::require_member, session::Session};

/// How far ahead of this gateway's clock a message id may be (another gateway's clock).
const MAX_CLOCK_SKEW_MS: u64 = 60_000;

impl Session {
    pub(super) fn on_ack(&mut self, seq: u64) -> Result<Option<Pending>, Refused> {
        if seq > self.cursor.last() {
            return Err(Refused(
                ErrorCode::BadRequest,
                format!(
                    "ack {seq} is beyond the last item sent to this device ({})",
                    self.cursor.last()
                ),
            ));
        }
        if seq <= self.acked {
            return Ok(None);
        }
        self.acked = seq;
        let acked = self.unacked.ack(&self.user, seq, now_millis());
        for mark in acked.marks {
            self.app.marks.add(mark);
        }
        for (to, receipt) in acked.direct {
            self.app.marks.add_receipt(to, receipt);
        }
        Ok(None)
    }

    pub(super) fn on_read(
        &mut self,
        conv: &str,
        up_to: &str,
        reference: Option<String>,
    ) -> Result<Pending, Refused> {
        let conv = Conversation::parse(conv).map_err(bad_id)?;
        check_id(up_to, "up_to").map_err(bad_id)?;
        let group = self.group_to_check(&conv)?;
        // A read is a watermark kept for good (history ticks, group receipts): it must name
        // a message id, made no later than now.
        if message_time(up_to).is_none_or(|made| made > now_millis() + MAX_CLOCK_SKEW_MS) {
            return Err(Refused(
                ErrorCode::BadRequest,
                "up_to must be a message id".into(),
            ));
        }
        let Some(gid) = group else {
            // One-on-one: a `read` receipt (a watermark) for the other side.
            let Some(peer) = conv.peer_of(&self.user).filter(|p| *p != self.user) else {
                return Ok(Box::pin(async { None }));
            };
            let receipt = ReceiptItem {
                conv: conv.to_string(),
                id: up_to.to_owned(),
                by: self.user.clone(),
                status: ReceiptStatus::Read,
                ts: now_millis(),
                all: None,
            };
            let (app, user, peer) = (self.app.clone(), self.user.clone(), peer.to_owned());
            return Ok(Box::pin(async move {
                // The peer gets it unless either blocked the other or has read receipts
                // off; then it goes to the reader's own inbox alone (their other devices
                // and their chat list's unread count still follow it).
                let to = if may_tell(&app, &user, &peer).await {
                    peer
                } else {
                    user
                };
                app.marks.add_receipt(to, receipt);
                None
            }));
        };
        let (app, user) = (self.app.clone(), self.user.clone());
        let senders = self.unacked.senders_up_to(&conv.to_string(), up_to);
        let up_to = up_to.to_owned();
        Ok(Box::pin(async move {
            if let Err(refusal) = require_member(&app, &gid, &user).await {
                return Some(refusal.with_ref(reference));
            }
            app.marks.add(GroupMark {
                group: gid,
                by: user,
                status: ReceiptStatus::Read,
                up_to,
                senders,
            });
            None
        }))
    }
}

/// Whether `reader`'s one-on-one read receipt may reach `sender`: neither blocked the
/// other and both have read receipts on (when unsure, it does not).
async fn may_tell(app: &App, reader: &str, sender: &str) -> bool {
    if !super::neither_blocked(app, reader, sender).await {
        return false;
    }
    match app.settings.read_receipts_between(reader, sender).await {
        Ok(on) => on,
        Err(err) => {
            tracing::warn!(error = %err, "settings unavailable; read receipt kept to the reader");
            false
        }
    }
}
