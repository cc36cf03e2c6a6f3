//! `read`: the user has read a conversation up to a message.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Client → server. No answer; the other side gets a `read` receipt whose `id` is this
/// watermark: every message of `conv` up to and including `up_to` counts as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Read {
    pub conv: String,
    pub up_to: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}
