//! `conversations`: a page of the user's chat list, most recent first, with each
//! conversation's latest message, unread count and group name: what a new device shows
//! first, in one request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{HistoryMessage, Millis};

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationsRequest {
    /// The `at` of the last conversation of the previous page. Absent: the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// 1..=200, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Server → client: up to `limit` conversations, most recent first; `more` when older
/// ones exist (ask again with `before` = the last one's `at`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationsPage {
    pub conversations: Vec<ConversationSummary>,
    pub more: bool,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// One conversation of the chat list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationSummary {
    pub conv: String,
    /// Where it sits in the list (the id of its latest item); the paging cursor.
    pub at: String,
    /// A group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its latest message the user may see, as it is now (a long text cut to 200
    /// characters, no thumbnail): absent when it has none (a group with no message yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<HistoryMessage>,
    /// Messages from others after the user's read marker (at most 999).
    pub unread: u32,
    /// Muted until then (ms since the epoch; `u64::MAX`: for good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<Millis>,
}
