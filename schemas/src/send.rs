//! `send` and its answer `sent`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Body, Millis};

/// Client → server: one message to a user or a group.
///
/// `id` is the client's idempotency key (a UUID): sending the same `id` again returns the
/// first `sent` answer and stores nothing new. Fields not listed here (a `from`, say) are
/// ignored: the sender is always the token's subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Send {
    pub id: String,
    /// `user:<id>` or `group:<id>`.
    pub to: String,
    #[serde(deserialize_with = "crate::object")]
    pub body: Body,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The id of a message this one forwards (its body is the client's copy of it): the
    /// stored message says how many times it was forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_of: Option<String>,
    /// Members of the conversation this message mentions (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Most members one message may mention.
pub const MAX_MENTIONS: usize = 50;

/// Server → client: the message is durable (one grey tick).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sent {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The server's time-ordered message id (a UUIDv7).
    pub id: String,
    pub conv: String,
    pub ts: Millis,
}
