//! `history`: one page of a conversation's past. Pages go back in time (each request
//! names the oldest message it has as `before`); within a page, messages are oldest first.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::MessageItem;

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

/// A message in a history page: as every member saw it, plus, on the reader's own
/// messages, how far it got (the ticks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryMessage {
    #[serde(flatten)]
    pub message: MessageItem,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Ticks>,
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
