//! Inbox items: what a user's durable inbox (`inbox.<uid>`) holds, and how the gateway
//! turns a stored item into the frame a device sees.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Body, GroupEventItem, Millis, ReceiptItem};

/// One item of a user's inbox as stored: a frame without its `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboxItem {
    Msg(MessageItem),
    Receipt(ReceiptItem),
    GroupEvent(GroupEventItem),
}

/// A message as every member of the conversation sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageItem {
    /// The server's time-ordered message id (a UUIDv7).
    pub id: String,
    pub conv: String,
    pub from: String,
    pub ts: Millis,
    pub body: Body,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// Server → client: an inbox item with its inbox sequence. A device sees each `seq` once,
/// in increasing order, across reconnects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delivered {
    pub seq: u64,
    #[serde(flatten)]
    pub item: InboxItem,
}

impl InboxItem {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("inbox items always serialize")
    }
}

/// Turns a stored item (a JSON object) into the frame a device receives by putting
/// `"seq":N` in front of its fields. Returns `None` when the stored bytes are not a JSON
/// object, or carry a `seq` of their own (nothing Natter writes): the check is one pass
/// that allocates nothing, so a corrupt item is skipped rather than sent as broken JSON.
pub fn with_seq(seq: u64, stored: &[u8]) -> Option<String> {
    /// Validates the whole object while looking only at a top-level `seq`.
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        seq: Present,
    }
    /// Whether a field was there at all (whatever its value, `null` included).
    #[derive(Default)]
    struct Present(bool);
    impl<'de> Deserialize<'de> for Present {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d)?;
            Ok(Present(true))
        }
    }
    let text = std::str::from_utf8(stored).ok()?.trim_start();
    let rest = text.strip_prefix('{')?.trim_start();
    let probe: Probe = serde_json::from_str(text).ok()?;
    if probe.seq.0 {
        return None;
    }
    let sep = if rest.starts_with('}') { "" } else { "," };
    Some(format!("{{\"seq\":{seq}{sep}{rest}"))
}

/// The server timestamp of a stored `msg` item (`None` for other items), read without
/// building the whole item: for latency metrics on the delivery path.
pub fn message_ts(stored: &[u8]) -> Option<Millis> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
        ts: Millis,
    }
    let probe: Probe = serde_json::from_slice(stored).ok()?;
    (probe.kind == "msg").then_some(probe.ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReceiptStatus;

    fn message() -> InboxItem {
        InboxItem::Msg(MessageItem {
            id: "0190".into(),
            conv: "dm:a:b".into(),
            from: "a".into(),
            ts: 7,
            body: Body::Text { text: "hi".into() },
            reply_to: None,
        })
    }

    fn read_receipt() -> InboxItem {
        InboxItem::Receipt(ReceiptItem {
            conv: "dm:a:b".into(),
            id: "m".into(),
            by: "b".into(),
            status: ReceiptStatus::Read,
            ts: 1,
            all: None,
        })
    }

    #[test]
    fn with_seq_yields_the_delivered_frame() {
        let stored = message().to_json();
        let framed = with_seq(42, stored.as_bytes()).unwrap();
        let delivered: Delivered = serde_json::from_str(&framed).unwrap();
        assert_eq!(
            delivered,
            Delivered {
                seq: 42,
                item: message()
            }
        );
        let value: serde_json::Value = serde_json::from_str(&framed).unwrap();
        assert_eq!(value["type"], "msg");
        assert_eq!(value["body"]["kind"], "text");
    }

    #[test]
    fn message_ts_reads_messages_only() {
        assert_eq!(message_ts(message().to_json().as_bytes()), Some(7));
        assert_eq!(message_ts(read_receipt().to_json().as_bytes()), None);
        assert_eq!(message_ts(b"nonsense"), None);
    }

    #[test]
    fn with_seq_refuses_what_is_not_an_object() {
        assert_eq!(with_seq(1, b"[1]"), None);
        assert_eq!(with_seq(1, b"\xff"), None);
        assert_eq!(with_seq(1, b"{}").as_deref(), Some("{\"seq\":1}"));
    }

    #[test]
    fn receipts_round_trip_with_optional_all() {
        let item = read_receipt();
        let json = item.to_json();
        assert!(!json.contains("all"), "{json}");
        assert_eq!(serde_json::from_str::<InboxItem>(&json).unwrap(), item);
    }
}
