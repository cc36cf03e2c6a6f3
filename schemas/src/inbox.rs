//! Inbox items: what a user's durable inbox (`inbox.<uid>`) holds, and how the gateway
//! turns a stored item into the frame a device sees.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::IgnoredAny};

use crate::{Body, DeleteItem, EditItem, GroupEventItem, Millis, ReactionItem, ReceiptItem};

/// One item of a user's inbox as stored: a frame without its `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboxItem {
    Msg(MessageItem),
    Receipt(ReceiptItem),
    GroupEvent(GroupEventItem),
    Edit(EditItem),
    Delete(DeleteItem),
    Reaction(ReactionItem),
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
    /// How many times it was forwarded on its way here (absent: its sender wrote it).
    /// Clients show "forwarded", and "forwarded many times" from 5 on, as WhatsApp does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<u32>,
    /// Members it mentions (a mention is pushed even in a muted conversation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
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
/// object, or carry a `seq` of their own (nothing Natter writes): the check is one pass, so
/// a corrupt item is skipped rather than sent as broken JSON.
pub fn with_seq(seq: u64, stored: &[u8]) -> Option<String> {
    frame(seq, stored).map(|framed| framed.frame)
}

/// A stored item framed for a device, and who sent it when it is a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub frame: String,
    pub message: Option<Sender>,
}

/// The message an inbox item is (for working out receipts from acks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub id: Box<str>,
    pub conv: Box<str>,
    pub from: Box<str>,
}

/// [`with_seq`], reading in the same pass what receipts need of a `msg` item.
pub fn frame(seq: u64, stored: &[u8]) -> Option<Framed> {
    let text = std::str::from_utf8(stored).ok()?.trim_start();
    let rest = text.strip_prefix('{')?.trim_start();
    let probe: Probe = match serde_json::from_str(text) {
        Ok(probe) => probe,
        // A string among the fields read that does not decode (a lone surrogate escape):
        // still an object to pass on as stored, if it is one; not a message.
        Err(_) => Probe {
            seq: serde_json::from_str::<std::collections::BTreeMap<String, IgnoredAny>>(text)
                .ok()?
                .contains_key("seq"),
            ..Probe::default()
        },
    };
    if probe.seq {
        return None;
    }
    let message = match (probe.kind.as_deref(), probe.id, probe.conv, probe.from) {
        (Some("msg"), Some(id), Some(conv), Some(from)) => Some(Sender {
            id: id.into(),
            conv: conv.into(),
            from: from.into(),
        }),
        _ => None,
    };
    let sep = if rest.starts_with('}') { "" } else { "," };
    Some(Framed {
        frame: format!("{{\"seq\":{seq}{sep}{rest}"),
        message,
    })
}

/// A stored item read once: whether it has a top-level `seq`, and the top-level fields a
/// message's receipts need, when they are strings. Any JSON object reads (other values,
/// repeated keys: the last one counts); the whole object is still checked to be JSON.
#[derive(Default)]
struct Probe<'a> {
    seq: bool,
    kind: Option<std::borrow::Cow<'a, str>>,
    id: Option<std::borrow::Cow<'a, str>>,
    conv: Option<std::borrow::Cow<'a, str>>,
    from: Option<std::borrow::Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Probe<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Probe<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut probe = Probe::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "seq" => {
                            probe.seq = true;
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                        "type" => &mut probe.kind,
                        "id" => &mut probe.id,
                        "conv" => &mut probe.conv,
                        "from" => &mut probe.from,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value::<Text<'a>>()?.0;
                }
                Ok(probe)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A field's text when it is a string; any other value is `None`, and still checked to
/// be well-formed JSON.
struct Text<'a>(Option<std::borrow::Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(v.into())))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(v.to_owned().into())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Some(v.into())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Text(None))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
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
            forwarded: None,
            mentions: Vec::new(),
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
    fn framing_reads_the_sender_of_messages_only() {
        let framed = frame(3, message().to_json().as_bytes()).unwrap();
        assert_eq!(
            framed.message,
            Some(Sender {
                id: "0190".into(),
                conv: "dm:a:b".into(),
                from: "a".into()
            })
        );
        assert_eq!(
            frame(4, read_receipt().to_json().as_bytes())
                .unwrap()
                .message,
            None
        );
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
