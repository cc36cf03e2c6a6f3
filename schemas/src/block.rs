//! Blocking: `block` and `unblock` a user, `blocks` to read one's list; each answered
//! with `blocked`, the whole list.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Client → server: stop `user`'s one-on-one messages, typing, presence and receipts
/// reaching me (and mine reaching them), and their adding me to groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Block {
    pub user: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Client → server: the users I blocked (answered with `blocked`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Blocks {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Server → client: every user I blocked, sorted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Blocked {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub users: Vec<String>,
}
