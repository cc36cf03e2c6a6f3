//! Changes to a message already sent: `edit`, `delete` (for everyone) and `react`, the
//! answer `changed`, and the inbox items that carry each change to every device of every
//! member of the conversation.
//!
//! A change names its message by `id` (the server's message id). It travels the path its
//! message took (one-on-one: the gateway writes both inboxes; groups: `MSGS` and fanout),
//! so in every inbox it comes after the message it changes. Each change has its own
//! time-ordered `rev` (a UUIDv7): of two edits, or two reactions by one member, the
//! higher `rev` wins, wherever they are applied (devices, history).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Body, Millis};

/// Longest reaction, in bytes of UTF-8 (an emoji with skin tone and joiners fits).
pub const MAX_EMOJI_BYTES: usize = 64;
/// Most characters (Unicode scalar values) in a reaction.
pub const MAX_EMOJI_CHARS: usize = 16;

/// Client → server: replace the body of one's own message (text with text; a media
/// message's caption, same file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Edit {
    /// The message to edit.
    pub id: String,
    #[serde(deserialize_with = "crate::object")]
    pub body: Body,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Client → server: delete a message for everyone (its author, or a group admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delete {
    /// The message to delete.
    pub id: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Client → server: react to a message with one emoji, replacing one's earlier reaction;
/// `emoji` absent (or null) takes one's reaction back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct React {
    /// The message reacted to.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Server → client: the change is durable and on its way to every member (the answer to
/// `edit`, `delete` and `react`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Changed {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The message changed.
    pub id: String,
    pub conv: String,
    /// The change's own id (a UUIDv7): the higher one wins.
    pub rev: String,
    pub ts: Millis,
}

/// Inbox item: message `id` now has `body` (the latest `rev` wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EditItem {
    pub id: String,
    pub conv: String,
    pub from: String,
    pub rev: String,
    pub ts: Millis,
    pub body: Body,
}

/// Inbox item: message `id` was deleted for everyone by `from` (its author or a group
/// admin). Show a tombstone; its file can no longer be fetched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeleteItem {
    pub id: String,
    pub conv: String,
    pub from: String,
    pub rev: String,
    pub ts: Millis,
}

/// Inbox item: `from`'s reaction to message `id` is now `emoji` (none: taken back). One
/// reaction per member per message; the latest `rev` wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReactionItem {
    pub id: String,
    pub conv: String,
    pub from: String,
    pub rev: String,
    pub ts: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
}

/// Checks a reaction: 1..=16 characters and at most 64 bytes, none of them whitespace or
/// control characters, and not plain ASCII text (a keycap such as `1️⃣` is fine).
pub fn check_emoji(emoji: &str) -> Result<(), &'static str> {
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES {
        return Err("emoji must be 1..=64 bytes");
    }
    if emoji.chars().count() > MAX_EMOJI_CHARS {
        return Err("emoji must be at most 16 characters");
    }
    if emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("emoji must not hold whitespace or control characters");
    }
    if emoji.is_ascii() {
        return Err("emoji must be an emoji, not text");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_are_short_and_not_text() {
        for good in ["👍", "❤️", "👨‍👩‍👧‍👦", "1️⃣", "👍🏽"] {
            assert_eq!(check_emoji(good), Ok(()), "{good}");
        }
        for bad in ["", "ok", "👍 ", "\u{7}👍", &"👍".repeat(17)] {
            assert!(check_emoji(bad).is_err(), "{bad:?}");
        }
    }
}
