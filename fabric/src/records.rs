//! What the gateway writes into `MSGS` and `RCPT`, read back by the workers.

use natter_schemas::{Body, MessageItem};
use serde::{Deserialize, Serialize};

/// One accepted message in `MSGS`. The sender comes from the token, never the frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsgRecord {
    pub id: String,
    pub conv: String,
    pub from: String,
    /// The device that sent it: its own copy in the sender's inbox is still delivered
    /// (devices dedupe by `seq`), but receipts never go back to the sender for it.
    pub device: String,
    pub ts: u64,
    pub body: Body,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl MsgRecord {
    /// The inbox item every member of the conversation gets.
    pub fn to_item(&self) -> MessageItem {
        MessageItem {
            id: self.id.clone(),
            conv: self.conv.clone(),
            from: self.from.clone(),
            ts: self.ts,
            body: self.body.clone(),
            reply_to: self.reply_to.clone(),
        }
    }
}

/// One event on `rcpt.<uid>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RcptEvent {
    /// A device of `by` stored inbox items `after+1 ..= upto`.
    Delivered {
        by: String,
        device: String,
        after: u64,
        upto: u64,
    },
    /// `by` read `conv` up to message `up_to`.
    Read {
        by: String,
        conv: String,
        up_to: String,
    },
}
