//! What the gateway writes into `MSGS`, read back by the workers, and the requests it
//! makes of the history workers. (Group receipt marks on `RCPT` are in
//! [`crate::watermarks`].)

use natter_schemas::{
    Body, ConversationSummary, GroupEventItem, HistoryMessage, InboxItem, MessageItem,
};
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
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
            forwarded: self.forwarded,
            mentions: self.mentions.clone(),
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

/// An edit, delete or reaction of a group message in `MSGS`, on the group's subject: it
/// follows the message it changes, and the fanout workers put `change` into the inbox of
/// every member (as the group is then) with `Nats-Msg-Id` `<rev>:<uid>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The change's own id (its item's `rev`), unique per change.
    pub rev: String,
    /// An [`InboxItem::Edit`], [`InboxItem::Delete`] or [`InboxItem::Reaction`].
    pub change: InboxItem,
}

impl ChangeRecord {
    /// The conversation and the member making the change (`None` for an item that is not
    /// a change).
    pub fn conv_and_from(&self) -> Option<(&str, &str)> {
        match &self.change {
            InboxItem::Edit(c) => Some((&c.conv, &c.from)),
            InboxItem::Delete(c) => Some((&c.conv, &c.from)),
            InboxItem::Reaction(c) => Some((&c.conv, &c.from)),
            _ => None,
        }
    }
}

/// Anything in `MSGS`: a message, a group change, or a change to a message (told apart by
/// their fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MsgsEntry {
    Message(MsgRecord),
    GroupEvent(GroupEventRecord),
    Change(ChangeRecord),
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

/// One message by id on `history.message`, for a gateway checking a change to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageQuery {
    pub id: String,
}

/// The answer to a [`MessageQuery`]: the message as sent (not as edited), and whether it
/// was deleted for everyone. The gateway decides who may change it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageAnswer {
    Found {
        message: Box<MessageItem>,
        deleted: bool,
    },
    NotFound,
    Failed {
        error: String,
    },
}

/// A page of `user`'s chat list on `history.conversations`, asked by a gateway for the
/// signed-in user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationsQuery {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    pub limit: usize,
}

/// The answer to a [`ConversationsQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationsAnswer {
    Page {
        conversations: Vec<ConversationSummary>,
        more: bool,
    },
    Failed {
        error: String,
    },
}
