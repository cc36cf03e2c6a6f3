//! `send`: a message into a conversation, answered with `sent` once it is durable.
//!
//! One-on-one messages go straight into both inboxes (`crate::direct`); group messages into
//! `MSGS`, for the fanout workers. The sender's rate limit was charged before (like every
//! frame's, `crate::charge`), and a media message must be one the sender may share.

use bytes::Bytes;
use natter_fabric::{now_millis, publish_durable, records::MsgRecord, subjects};
use natter_schemas::{Conversation, ErrorCode, Sent, ServerFrame, Target, ids::check_id};

use super::{Pending, Refused, bad_id, references::References, refuse};
use crate::{
    App,
    access::{require_member, share_media, unshare_media},
    session::Session,
};

impl Session {
    pub(super) fn on_send(&mut self, send: natter_schemas::Send) -> Result<Pending, Refused> {
        check_id(&send.id, "message id").map_err(bad_id)?;
        let target = Target::parse(&send.to).map_err(bad_id)?;
        send.body
            .check()
            .map_err(|why| Refused(ErrorCode::BadRequest, why.into()))?;
        let references = References::check(send.reply_to, send.forward_of, send.mentions)?;
        let conv = Conversation::of_send(&self.user, &target);
        let mut record = MsgRecord {
            id: String::new(),
            conv: conv.to_string(),
            from: self.user.clone(),
            device: self.device.clone(),
            ts: 0,
            body: send.body,
            reply_to: references.reply_to.clone(),
            forwarded: None,
            mentions: references.mentions.clone(),
        };
        let app = self.app.clone();
        let reference = send.r#ref;
        let client_id = send.id;
        let started = std::time::Instant::now();
        Ok(Box::pin(async move {
            if let Target::Group(gid) = &target
                && let Err(refusal) = require_member(&app, gid, &record.from).await
            {
                return Some(refusal.with_ref(reference));
            }
            // A block stops one-on-one messages: the blocker cannot send (they unblock
            // first); the blocked sender's messages are kept for their own devices only.
            let mut withheld = false;
            if let Target::User(peer) = &target
                && *peer != record.from
            {
                match app.blocks.between(&record.from, peer).await {
                    Ok((true, _)) => {
                        return Some(refuse(
                            ErrorCode::Forbidden,
                            "you blocked this user; unblock them to send",
                            reference,
                        ));
                    }
                    Ok((false, peer_blocked)) => withheld = peer_blocked,
                    Err(err) => {
                        tracing::warn!(error = %err, "blocks unavailable");
                        return Some(refuse(
                            ErrorCode::Unavailable,
                            "message not stored; retry with the same id",
                            reference,
                        ));
                    }
                }
            }
            match references.resolve(&app, &record.from, &conv).await {
                Ok(forwarded) => record.forwarded = forwarded,
                Err(refusal) => return Some(refusal.with_ref(reference)),
            }
            let mut shared = None;
            if let Some(media) = record.body.media() {
                match share_media(&app, &record.from, &record.conv, media).await {
                    Ok(added) => shared = added.then(|| media.media_id.clone()),
                    Err(refusal) => return Some(refusal.with_ref(reference)),
                }
            }
            // The id is stamped last, just before the store: ids order the messages of a
            // conversation, and receipts are watermarks over them, so an id made before
            // slower checks could be stored after a later one and counted as received
            // while it was not.
            record.id = uuid::Uuid::now_v7().to_string();
            record.ts = now_millis();
            let stored = match &target {
                Target::User(peer) if withheld => {
                    crate::direct::store_withheld(&app, &record, peer, &client_id)
                        .await
                        .map(|item| (item.id, item.conv, item.ts))
                        .map_err(|err| err.to_string())
                }
                Target::User(peer) => crate::direct::store(&app, &record, peer, &client_id)
                    .await
                    .map(|item| (item.id, item.conv, item.ts))
                    .map_err(|err| err.to_string()),
                Target::Group(_) => store_in_msgs(&app, &conv, record, &client_id).await,
            };
            let asked = conv.to_string();
            if let (Some(media_id), Ok((_, stored_conv, _))) = (&shared, &stored)
                && *stored_conv != asked
            {
                unshare_media(&app, media_id, &asked).await;
            }
            Some(match stored {
                Ok((id, conv, ts)) => {
                    metrics::histogram!("natter_gateway_send_to_sent_seconds")
                        .record(started.elapsed().as_secs_f64());
                    ServerFrame::Sent(Sent {
                        r#ref: reference,
                        id,
                        conv,
                        ts,
                    })
                }
                Err(err) => {
                    tracing::warn!(error = %err, "send not stored");
                    refuse(
                        ErrorCode::Unavailable,
                        "message not stored; retry with the same id",
                        reference,
                    )
                }
            })
        }))
    }
}

/// Stores a group message in `MSGS` for the fanout workers; its id, conversation and time
/// as stored (the first attempt's when the client id was sent before).
async fn store_in_msgs(
    app: &App,
    conv: &Conversation,
    record: MsgRecord,
    client_id: &str,
) -> Result<(String, String, u64), String> {
    let subject = subjects::msg(conv);
    let msg_id = format!("{}:{client_id}", record.from);
    let payload = Bytes::from(serde_json::to_vec(&record).expect("records serialize"));
    let ack = publish_durable(&app.js, &subject, &msg_id, payload)
        .await
        .map_err(|e| e.to_string())?;
    if !ack.duplicate {
        return Ok((record.id, record.conv, record.ts));
    }
    let stored = app
        .msgs
        .get_raw_message(ack.sequence)
        .await
        .map_err(|e| format!("cannot read the original of a re-sent message: {e}"))?;
    let original: MsgRecord = serde_json::from_slice(&stored.payload)
        .map_err(|e| format!("the original of a re-sent message is unreadable: {e}"))?;
    Ok((original.id, original.conv, original.ts))
}
