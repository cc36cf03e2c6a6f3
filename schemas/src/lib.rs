//! Natter's wire frames: the client protocol, version 1 (see `docs/PROTOCOL.md`).
//!
//! Every frame is one JSON object with a `type`. Client frames are parsed into
//! [`ClientFrame`]; server frames are built from [`ServerFrame`]. Items that live in a
//! user's durable inbox (messages, receipts, group events) are [`InboxItem`]s: they are
//! stored without a sequence number, and the gateway adds the inbox `seq` when it delivers
//! them (see [`inbox::with_seq`]).
//!
//! One module per frame kind; [`ids`] holds the identity rules that keep user input out of
//! NATS subjects. This crate does no I/O. `schemas/json/` holds the JSON Schema generated
//! from these types; a test fails when it drifts (regenerate with
//! `NATTER_WRITE_SCHEMAS=1 cargo test -p natter-schemas`).

pub mod ack;
pub mod block;
pub mod body;
pub mod change;
pub mod conversations;
pub mod error;
pub mod group;
pub mod hello;
pub mod history;
pub mod ids;
pub mod inbox;
pub mod ping;
pub mod presence;
pub mod read;
pub mod receipt;
pub mod schema;
pub mod send;
pub mod settings;
pub mod typing;

pub use ack::Ack;
pub use block::{Block, Blocked, Blocks};
pub use body::Body;
pub use change::{Changed, Delete, DeleteItem, Edit, EditItem, React, ReactionItem};
pub use conversations::{ConversationSummary, ConversationsPage, ConversationsRequest};
pub use error::{ErrorCode, ErrorFrame, HttpError, HttpErrorCode};
pub use group::{GroupChange, GroupCreate, GroupEventItem, GroupEventKind, GroupInfo, GroupLeave};
pub use hello::Hello;
pub use history::{Deletion, HistoryMessage, HistoryPage, HistoryRequest, Quote, Ticks};
pub use ids::{Conversation, IdError, Target};
pub use inbox::{Delivered, InboxItem, MessageItem};
pub use ping::{Ping, Pong};
pub use presence::{Presence, PresenceSubscribe};
pub use read::Read;
pub use receipt::{ReceiptItem, ReceiptStatus};
pub use send::{Send, Sent};
pub use settings::{Audience, Mute, SettingsChange, SettingsFrame, Unmute, UserSettings};
pub use typing::{Typing, TypingNotice, TypingState};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as used in every `ts` field.
pub type Millis = u64;

impl ClientFrame {
    /// Parses one client frame. A frame is a JSON object: serde would also read a tagged
    /// enum from an array (`["ping"]`), which the protocol does not allow.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        if !text.trim_start().starts_with('{') {
            return Err(serde::de::Error::custom("a frame is a JSON object"));
        }
        serde_json::from_str(text)
    }
}

/// Deserializes `T` only from a JSON object (not from an array, which serde accepts for
/// structs and tagged enums).
pub(crate) fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    T::deserialize(value).map_err(serde::de::Error::custom)
}

/// A frame a client sends to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send(Send),
    Edit(Edit),
    Delete(Delete),
    React(React),
    Block(Block),
    Unblock(Block),
    Blocks(Blocks),
    Conversations(ConversationsRequest),
    Settings(SettingsChange),
    Mute(Mute),
    Unmute(Unmute),
    Ack(Ack),
    Read(Read),
    Typing(Typing),
    History(HistoryRequest),
    GroupCreate(GroupCreate),
    GroupAdd(GroupChange),
    GroupRemove(GroupChange),
    GroupLeave(GroupLeave),
    PresenceSubscribe(PresenceSubscribe),
    Ping(Ping),
}

impl ClientFrame {
    /// The client's correlation string, echoed on the answer.
    pub fn reference(&self) -> Option<&str> {
        let r = match self {
            Self::Send(f) => &f.r#ref,
            Self::Edit(f) => &f.r#ref,
            Self::Delete(f) => &f.r#ref,
            Self::React(f) => &f.r#ref,
            Self::Block(f) | Self::Unblock(f) => &f.r#ref,
            Self::Blocks(f) => &f.r#ref,
            Self::Conversations(f) => &f.r#ref,
            Self::Settings(f) => &f.r#ref,
            Self::Mute(f) => &f.r#ref,
            Self::Unmute(f) => &f.r#ref,
            Self::Ack(f) => &f.r#ref,
            Self::Read(f) => &f.r#ref,
            Self::Typing(f) => &f.r#ref,
            Self::History(f) => &f.r#ref,
            Self::GroupCreate(f) => &f.r#ref,
            Self::GroupAdd(f) | Self::GroupRemove(f) => &f.r#ref,
            Self::GroupLeave(f) => &f.r#ref,
            Self::PresenceSubscribe(f) => &f.r#ref,
            Self::Ping(f) => &f.r#ref,
        };
        r.as_deref()
    }

    /// The frame's `type`, for error messages and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Send(_) => "send",
            Self::Edit(_) => "edit",
            Self::Delete(_) => "delete",
            Self::React(_) => "react",
            Self::Block(_) => "block",
            Self::Unblock(_) => "unblock",
            Self::Blocks(_) => "blocks",
            Self::Conversations(_) => "conversations",
            Self::Settings(_) => "settings",
            Self::Mute(_) => "mute",
            Self::Unmute(_) => "unmute",
            Self::Ack(_) => "ack",
            Self::Read(_) => "read",
            Self::Typing(_) => "typing",
            Self::History(_) => "history",
            Self::GroupCreate(_) => "group_create",
            Self::GroupAdd(_) => "group_add",
            Self::GroupRemove(_) => "group_remove",
            Self::GroupLeave(_) => "group_leave",
            Self::PresenceSubscribe(_) => "presence_subscribe",
            Self::Ping(_) => "ping",
        }
    }
}

/// A frame the gateway answers with that does not come from the inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello(Hello),
    Sent(Sent),
    Changed(Changed),
    Blocked(Blocked),
    Conversations(ConversationsPage),
    Settings(SettingsFrame),
    Group(GroupInfo),
    History(HistoryPage),
    Typing(TypingNotice),
    Presence(Presence),
    Pong(Pong),
    Error(ErrorFrame),
}

impl ServerFrame {
    /// The frame as one JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}
