//! What the gateway does with each client frame: one file per frame kind (mirroring
//! `schemas/src/`), dispatched from here. A handler checks the frame and either answers at
//! once (a refusal, or `pong`) or returns work that answers later ([`Pending`]): the
//! socket's loop runs those concurrently, up to `limits.max_inflight` of them.
//!
//! Refusals become `error` frames here, with their stable code from the schema's
//! [`ErrorCode`], in one place ([`refuse`]).

mod block;
mod change;
pub(crate) mod conversations;
mod groups;
mod history;
mod presence;
mod receipts;
mod references;
mod send;
mod settings;
mod typing;

use std::pin::Pin;

use axum::extract::ws::Message;
use futures_util::stream::FuturesUnordered;
use natter_fabric::groups::{GroupsError, Refusal};
use natter_schemas::{ClientFrame, Conversation, ErrorCode, ErrorFrame, Pong, ServerFrame};

use crate::session::{End, Session};

pub(crate) use block::neither_blocked;
use groups::Membership;
pub(crate) use history::HISTORY_TIMEOUT;

/// Work a frame started that answers later (or not at all: `None`).
pub(crate) type Pending = Pin<Box<dyn Future<Output = Option<ServerFrame>> + Send>>;

/// An answer known at once (`pong`), written the way every other answer is.
fn answered(frame: ServerFrame) -> Pending {
    Box::pin(std::future::ready(Some(frame)))
}

impl Session {
    pub(crate) async fn on_client_message(
        &mut self,
        message: Message,
        inflight: &mut FuturesUnordered<Pending>,
    ) -> Result<(), End> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let refusal = refuse(
                    ErrorCode::BadFrame,
                    "binary frames are not part of the protocol",
                    None,
                );
                return self.write(refusal.to_json()).await;
            }
            Message::Close(_) => return Err(End::Peer),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        let frame = match ClientFrame::parse(text.as_str()) {
            Ok(frame) => frame,
            Err(err) => {
                let reference = reference_of(text.as_str());
                let refusal = refuse(ErrorCode::BadFrame, &format!("bad frame: {err}"), reference);
                return self.write(refusal.to_json()).await;
            }
        };
        let reference = frame.reference().map(str::to_owned);
        metrics::counter!("natter_gateway_frames_total", "type" => frame.kind()).increment(1);
        // Charged before any work: a refused frame did nothing.
        let cost = crate::charge::cost_of(&frame, |gid| self.app.groups.cached_size(gid));
        if let Err(limited) = self.wallet.pay(&self.app, &self.user, cost).await {
            let refusal = rate_limited(frame.kind(), limited.retry_after_ms, reference);
            return self.write(refusal.to_json()).await;
        }
        if matches!(frame, ClientFrame::GroupCreate(_))
            && let Err(limited) = crate::charge::new_group(&self.app, &self.user).await
        {
            let refusal = rate_limited("group_create", limited.retry_after_ms, reference);
            return self.write(refusal.to_json()).await;
        }
        if let ClientFrame::PresenceSubscribe(subscribe) = frame {
            return self.on_presence_subscribe(subscribe).await;
        }
        match self.on_frame(frame) {
            Ok(Some(pending)) => {
                inflight.push(pending);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(refused) => self.write(refused.with_ref(reference).to_json()).await,
        }
    }

    /// Handles one parsed frame. `Ok(Some(_))` is work that answers later.
    fn on_frame(&mut self, frame: ClientFrame) -> Result<Option<Pending>, Refused> {
        match frame {
            ClientFrame::Send(send) => self.on_send(send).map(Some),
            ClientFrame::Edit(edit) => self.on_edit(edit).map(Some),
            ClientFrame::Delete(delete) => self.on_delete(delete).map(Some),
            ClientFrame::React(react) => self.on_react(react).map(Some),
            ClientFrame::Block(block) => self.on_block(block, true).map(Some),
            ClientFrame::Unblock(block) => self.on_block(block, false).map(Some),
            ClientFrame::Blocks(blocks) => Ok(Some(self.on_blocks(blocks.r#ref))),
            ClientFrame::Conversations(request) => self.on_conversations(request).map(Some),
            ClientFrame::Settings(change) => Ok(Some(self.on_settings(change))),
            ClientFrame::Mute(mute) => self.on_mute(mute).map(Some),
            ClientFrame::Unmute(unmute) => self.on_unmute(unmute).map(Some),
            ClientFrame::Ack(ack) => self.on_ack(ack.seq),
            ClientFrame::Read(read) => self.on_read(&read.conv, &read.up_to, read.r#ref).map(Some),
            ClientFrame::Ping(ping) => Ok(Some(answered(ServerFrame::Pong(Pong {
                r#ref: ping.r#ref,
            })))),
            ClientFrame::GroupCreate(create) => self.on_group_create(create).map(Some),
            ClientFrame::GroupAdd(change) => self.on_group_change(change, Membership::Add),
            ClientFrame::GroupRemove(change) => self.on_group_change(change, Membership::Remove),
            ClientFrame::GroupLeave(leave) => self.on_group_leave(leave).map(Some),
            ClientFrame::History(request) => self.on_history(request).map(Some),
            ClientFrame::Typing(typing) => self.on_typing(typing).map(Some),
            ClientFrame::PresenceSubscribe(_) => unreachable!("answered before on_frame"),
        }
    }

    /// Refuses a one-on-one conversation the user is not part of; for a group, the id
    /// whose membership the answer must check first (an asynchronous read).
    pub(super) fn group_to_check(&self, conv: &Conversation) -> Result<Option<String>, Refused> {
        match conv {
            Conversation::Group(gid) => Ok(Some(gid.clone())),
            direct if direct.peer_of(&self.user).is_none() => Err(Refused(
                ErrorCode::Forbidden,
                "not a member of this conversation".into(),
            )),
            _ => Ok(None),
        }
    }
}

/// Why a frame was refused: a stable code from the schema's [`ErrorCode`] and a message.
/// Every handler's refusal is one of these; it becomes an `error` frame in one place
/// ([`Refused::with_ref`], [`refuse`]).
pub(crate) struct Refused(pub(crate) ErrorCode, pub(crate) String);

impl Refused {
    pub(crate) fn with_ref(self, reference: Option<String>) -> ServerFrame {
        refuse(self.0, &self.1, reference)
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        let code = match refusal {
            Refusal::NotMember | Refusal::NotAdmin => ErrorCode::Forbidden,
            Refusal::TooMany { .. } | Refusal::InTooManyGroups { .. } => ErrorCode::LimitExceeded,
            Refusal::BadName => ErrorCode::BadRequest,
            Refusal::BadMember(_) => ErrorCode::BadId,
        };
        Self(code, refusal.to_string())
    }
}

impl From<GroupsError> for Refused {
    fn from(err: GroupsError) -> Self {
        match err {
            GroupsError::Refused(refusal) => refusal.into(),
            other => {
                tracing::warn!(error = %other, "group store failed");
                Self(
                    ErrorCode::Unavailable,
                    "groups are unavailable; try again".into(),
                )
            }
        }
    }
}

pub(crate) fn bad_id(err: natter_schemas::IdError) -> Refused {
    Refused(ErrorCode::BadId, err.to_string())
}

pub(crate) fn refuse(code: ErrorCode, message: &str, reference: Option<String>) -> ServerFrame {
    metrics::counter!("natter_gateway_errors_total", "code" => code.as_str()).increment(1);
    ServerFrame::Error(ErrorFrame {
        code,
        message: message.to_owned(),
        r#ref: reference,
        retry_after_ms: None,
    })
}

/// `rate_limited`, with when to try again.
pub(crate) fn rate_limited(
    kind: &str,
    retry_after_ms: u64,
    reference: Option<String>,
) -> ServerFrame {
    metrics::counter!("natter_gateway_errors_total", "code" => "rate_limited").increment(1);
    ServerFrame::Error(ErrorFrame {
        code: ErrorCode::RateLimited,
        message: format!("too many {kind} frames; retry in {retry_after_ms} ms"),
        r#ref: reference,
        retry_after_ms: Some(retry_after_ms),
    })
}

/// The `ref` of a frame that did not parse, when it is at least a JSON object with one.
fn reference_of(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("ref")?.as_str().map(str::to_owned)
}
