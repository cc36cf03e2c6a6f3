//! `history`: one page of a conversation's past. Pages go back in time (each request
//! names the oldest message it has as `before`); within a page, messages are oldest first.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::{MessageItem, Millis};

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryRequest {
    pub conv: String,
    /// A message id: the page ends just before it. Absent: the newest page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// 1..=100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Server → client: up to `limit` messages before `before`, oldest first; `more` when
/// older ones exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryPage {
    pub conv: String,
    pub messages: Vec<HistoryMessage>,
    pub more: bool,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// A message in a history page: as every member sees it now (the latest edit's body, or
/// `{"kind":"deleted"}` once deleted for everyone), plus, on the reader's own messages,
/// how far it got (the ticks), and the members' reactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryMessage {
    #[serde(flatten)]
    pub message: MessageItem,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Ticks>,
    /// When the body shown was edited (absent: never edited, or deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<Millis>,
    /// When it was deleted for everyone, and by whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Deletion>,
    /// How many members reacted with each emoji.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, u32>,
    /// The reader's own reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub my_reaction: Option<String>,
    /// What the message replies to (`reply_to`), as it is now, cut short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<Quote>,
}

/// A short quote of the message replied to: its sender and body (text cut to 100
/// characters, no thumbnail; `{"kind":"deleted"}` once deleted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Quote {
    pub id: String,
    pub from: String,
    pub body: crate::Body,
}

impl HistoryMessage {
    /// A message as stored, with no ticks and no changes.
    pub fn plain(message: MessageItem) -> Self {
        Self {
            message,
            status: None,
            edited: None,
            deleted: None,
            reactions: BTreeMap::new(),
            my_reaction: None,
            quote: None,
        }
    }
}

/// Who deleted a message for everyone, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Deletion {
    pub by: String,
    pub ts: Millis,
}

/// How far a message got: one grey tick, two grey ticks (every other member has it),
/// two blue ticks (every other member read it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Ticks {
    Sent,
    Delivered,
    Read,
}
