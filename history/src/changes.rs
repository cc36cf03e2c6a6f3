//! Changes to messages in history: the latest edit, a deletion for everyone, and each
//! member's reaction, kept next to the message as `a/<conversation>/<message id>` (one
//! JSON value per changed message) and applied when a page is read.
//!
//! Why beside the message rather than rewriting it: the message key is written again when
//! the tail reader replays, and changes can be read before the message they change (a
//! replay, or fanout's rare retry that lands an item late). Kept apart, each is idempotent
//! and order does not matter: an edit or reaction replaces the one before it only when its
//! `rev` (a UUIDv7) is higher, and a deletion stays.

use std::collections::BTreeMap;

use natter_schemas::{Body, Deletion, HistoryMessage, InboxItem, MessageItem, Millis};
use serde::{Deserialize, Serialize};

/// Everything that changed one message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<Edited>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Removed>,
    /// Member → their latest reaction (`emoji: None` once taken back: a later `rev` than a
    /// replayed reaction's still wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, Reacted>,
    /// The member it was never delivered to (they had blocked its sender): kept out of
    /// their pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edited {
    pub rev: String,
    pub ts: Millis,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub rev: String,
    pub by: String,
    pub ts: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reacted {
    pub rev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
}

/// The message a change item is about: (conversation, message id); `None` for items
/// that change nothing.
pub fn target(item: &InboxItem) -> Option<(&str, &str)> {
    match item {
        InboxItem::Edit(c) => Some((&c.conv, &c.id)),
        InboxItem::Delete(c) => Some((&c.conv, &c.id)),
        InboxItem::Reaction(c) => Some((&c.conv, &c.id)),
        _ => None,
    }
}

impl Changes {
    /// Applies one change item; whatever the order items come in, the result is the same.
    pub fn apply(&mut self, item: &InboxItem) {
        match item {
            InboxItem::Edit(edit) if self.edit.as_ref().is_none_or(|e| e.rev < edit.rev) => {
                self.edit = Some(Edited {
                    rev: edit.rev.clone(),
                    ts: edit.ts,
                    body: edit.body.clone(),
                });
            }
            // The first deletion is the one kept.
            InboxItem::Delete(delete)
                if self.deleted.as_ref().is_none_or(|d| delete.rev < d.rev) =>
            {
                self.deleted = Some(Removed {
                    rev: delete.rev.clone(),
                    by: delete.from.clone(),
                    ts: delete.ts,
                });
            }
            InboxItem::Reaction(reaction) => {
                let newer = self
                    .reactions
                    .get(&reaction.from)
                    .is_none_or(|r| r.rev < reaction.rev);
                if newer {
                    self.reactions.insert(
                        reaction.from.clone(),
                        Reacted {
                            rev: reaction.rev.clone(),
                            emoji: reaction.emoji.clone(),
                        },
                    );
                }
            }
            _ => {}
        }
    }

    /// Whether `reader` may see the message at all.
    pub fn visible_to(&self, reader: &str) -> bool {
        self.withheld_from.as_deref() != Some(reader)
    }

    /// `message` as `reader` sees it now: a deleted one as a tombstone (no body, edits or
    /// reactions), an edited one with its latest body, and the reactions counted.
    pub fn show(&self, mut message: MessageItem, reader: &str) -> HistoryMessage {
        if let Some(deleted) = &self.deleted {
            message.body = Body::Deleted;
            let mut shown = HistoryMessage::plain(message);
            shown.deleted = Some(Deletion {
                by: deleted.by.clone(),
                ts: deleted.ts,
            });
            return shown;
        }
        if let Some(edit) = &self.edit {
            message.body = edit.body.clone();
        }
        let mut shown = HistoryMessage::plain(message);
        shown.edited = self.edit.as_ref().map(|e| e.ts);
        for reacted in self.reactions.values() {
            if let Some(emoji) = &reacted.emoji {
                *shown.reactions.entry(emoji.clone()).or_default() += 1;
            }
        }
        shown.my_reaction = self.reactions.get(reader).and_then(|r| r.emoji.clone());
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_schemas::{DeleteItem, EditItem, ReactionItem};

    fn message() -> MessageItem {
        MessageItem {
            id: "m1".into(),
            conv: "dm:a:b".into(),
            from: "a".into(),
            ts: 1,
            body: Body::Text {
                text: "tpyo".into(),
            },
            reply_to: None,
            forwarded: None,
            mentions: Vec::new(),
        }
    }

    fn edit(rev: &str, text: &str) -> InboxItem {
        InboxItem::Edit(EditItem {
            id: "m1".into(),
            conv: "dm:a:b".into(),
            from: "a".into(),
            rev: rev.into(),
            ts: 2,
            body: Body::Text { text: text.into() },
        })
    }

    fn react(from: &str, rev: &str, emoji: Option<&str>) -> InboxItem {
        InboxItem::Reaction(ReactionItem {
            id: "m1".into(),
            conv: "dm:a:b".into(),
            from: from.into(),
            rev: rev.into(),
            ts: 3,
            emoji: emoji.map(str::to_owned),
        })
    }

    #[test]
    fn the_latest_edit_and_reaction_win_in_any_order() {
        let items = [
            edit("r1", "typo"),
            edit("r3", "typo!"),
            react("b", "r2", Some("👍")),
            react("b", "r4", Some("❤️")),
            react("a", "r5", Some("❤️")),
            react("a", "r6", None),
        ];
        let mut forward = Changes::default();
        items.iter().for_each(|i| forward.apply(i));
        let mut backward = Changes::default();
        items.iter().rev().for_each(|i| backward.apply(i));
        assert_eq!(forward, backward);
        let shown = forward.show(message(), "b");
        assert_eq!(
            shown.message.body,
            Body::Text {
                text: "typo!".into()
            }
        );
        assert_eq!(shown.edited, Some(2));
        assert_eq!(shown.reactions, BTreeMap::from([("❤️".to_owned(), 1)]));
        assert_eq!(shown.my_reaction.as_deref(), Some("❤️"));
        assert_eq!(forward.show(message(), "a").my_reaction, None);
    }

    #[test]
    fn a_deleted_message_shows_nothing_of_itself() {
        let mut changes = Changes::default();
        changes.apply(&edit("r1", "secret"));
        changes.apply(&react("b", "r2", Some("👍")));
        changes.apply(&InboxItem::Delete(DeleteItem {
            id: "m1".into(),
            conv: "dm:a:b".into(),
            from: "a".into(),
            rev: "r3".into(),
            ts: 9,
        }));
        changes.apply(&edit("r4", "after"));
        let shown = changes.show(message(), "b");
        assert_eq!(shown.message.body, Body::Deleted);
        assert_eq!(shown.edited, None);
        assert!(shown.reactions.is_empty());
        assert_eq!(
            shown.deleted,
            Some(Deletion {
                by: "a".into(),
                ts: 9
            })
        );
    }
}
