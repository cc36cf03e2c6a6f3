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
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

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
