//! `presence_subscribe`: follow some users' online state; `presence`: one user's state,
//! sent at once for each user subscribed to and again whenever it changes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceSubscribe {
    pub users: Vec<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Server → client: `user` is online on at least one device, or was last seen at
/// `last_seen` (milliseconds since the epoch; absent when never seen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Presence {
    pub user: String,
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}
