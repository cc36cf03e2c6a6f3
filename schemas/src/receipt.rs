//! Receipts: a message reached a recipient's device, or was read.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Two grey ticks: a device of `by` stored the message.
    Delivered,
    /// Two blue ticks: `by` read the conversation up to this message.
    Read,
}

/// An inbox item in the sender's inbox: a watermark. It covers the message `id` names and
/// every earlier message of the recipient's in `conv` (message ids compare as strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReceiptItem {
    pub conv: String,
    /// The message id the receipt is about.
    pub id: String,
    pub by: String,
    pub status: ReceiptStatus,
    pub ts: Millis,
    /// Groups only, and always true there: every other member reached `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}
