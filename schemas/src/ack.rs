//! `ack`: the device has stored every inbox item up to `seq`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Client → server. No answer; it makes the senders' messages "delivered".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Ack {
    pub seq: u64,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}
