//! What the gateway writes into `MSGS`, read back by the workers, and the requests it
//! makes of the history workers. (Group receipt marks on `RCPT` are in
//! [`crate::watermarks`].)

use natter_schemas::{Body, GroupEventItem, HistoryMessage, MessageItem};
use serde::{Deserialize, Serialize};

/// One accepted message in `MSGS`. The sender comes from the token, never the frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsgRecord {
    pub id: String,
    pub conv: String,
    pub from: String,
    /// The device that sent it: its own copy in the sender's inbox is still delivered
    /// (devices dedupe by `seq`), but receipts never go back to the sender for it.
    pub device: String,
    pub ts: u64,
    pub body: Body,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl MsgRecord {
    /// The inbox item every member of the conversation gets.
    pub fn to_item(&self) -> MessageItem {
        MessageItem {
            id: self.id.clone(),
            conv: self.conv.clone(),
            from: self.from.clone(),
            ts: self.ts,
            body: self.body.clone(),
            reply_to: self.reply_to.clone(),
        }
    }
}

/// A group membership change in `MSGS`, on the group's subject: it is ordered with the
/// group's messages, and the fanout workers put its item into each recipient's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupEventRecord {
    /// Unique per change (a UUIDv7): the inbox items' `Nats-Msg-Id` is `<event_id>:<uid>`.
    pub event_id: String,
    pub item: GroupEventItem,
    pub recipients: Vec<String>,
}

/// Anything in `MSGS`: a message, or a group change (told apart by their fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MsgsEntry {
    Message(MsgRecord),
    GroupEvent(GroupEventRecord),
}

/// A history page request on `history.page`, sent by a gateway that has checked the user
/// may read `conv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub conv: String,
    /// Who asks: their own messages come with their ticks.
    pub reader: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    pub limit: usize,
}

/// The answer to a [`HistoryQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryAnswer {
    Page {
        messages: Vec<HistoryMessage>,
        more: bool,
    },
    Failed {
        error: String,
    },
}

/// "Message info" on `history.info`: the per-member receipts of a group message, asked for
/// by its sender (`reader`; anyone else gets `NotFound`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoQuery {
    pub id: String,
    pub reader: String,
}

/// One member's furthest status for a group message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub user: String,
    /// `sent`, `delivered` or `read`.
    pub status: String,
}

/// The answer to an [`InfoQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InfoAnswer {
    Info {
        conv: String,
        members: Vec<MemberStatus>,
    },
    NotFound,
    Failed {
        error: String,
    },
}
