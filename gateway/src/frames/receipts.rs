//! `ack` and `read`: what a device has and what its user read, turned into receipts for
//! the senders (`crate::receipts` for acks; `crate::marks` for groups).

use bytes::Bytes;
use natter_fabric::{now_millis, publish_durable, subjects, watermarks::GroupMark};
use natter_schemas::{
    Conversation, ErrorCode, InboxItem, ReceiptItem, ReceiptStatus, ids::check_id,
};

use super::{Pending, Refused, Reply, bad_id};
use crate::{access::require_member, session::Session};

impl Session {
    pub(super) fn on_ack(&mut self, seq: u64) -> Result<Option<Pending>, Reply> {
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
        if acked.direct.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.store_receipts(acked.direct)))
    }

    /// Stores one-on-one receipts in the other sides' inboxes, off the socket's path.
    fn store_receipts(&self, receipts: Vec<(String, ReceiptItem)>) -> Pending {
        let app = self.app.clone();
        Box::pin(async move {
            for (to, receipt) in receipts {
                let status = match receipt.status {
                    ReceiptStatus::Delivered => "delivered",
                    ReceiptStatus::Read => "read",
                };
                // Two devices of one user acking the same message store one receipt.
                let msg_id = format!(
                    "rcpt:{}:{}:{status}:{}",
                    receipt.conv, receipt.by, receipt.id
                );
                let item = Bytes::from(InboxItem::Receipt(receipt).to_json());
                match publish_durable(&app.js, &subjects::inbox(&to), &msg_id, item).await {
                    Ok(_) => {
                        metrics::counter!("natter_gateway_receipts_total", "status" => status)
                            .increment(1);
                    }
                    Err(err) => tracing::warn!(error = %err, "receipt not stored"),
                }
            }
            None
        })
    }

    pub(super) fn on_read(
        &mut self,
        conv: &str,
        up_to: &str,
        reference: Option<String>,
    ) -> Result<Pending, Reply> {
        let conv = Conversation::parse(conv).map_err(bad_id)?;
        check_id(up_to, "up_to").map_err(bad_id)?;
        let group = self.group_to_check(&conv)?;
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
            return Ok(self.store_receipts(vec![(peer.to_owned(), receipt)]));
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
