//! Chat lists: a page of a user's conversations (`natter_history::conversations`), each
//! with its latest message as it is now, how many messages from others came after the
//! user's read marker, and a group's name.
//!
//! Read markers come from where reads already go: one-on-one, the watermark of the
//! peer's messages read by the user (`tr/<conv>/<peer>` in history, from the read
//! receipts in the peer's inbox), or the reads kept from the peer (`or/<conv>/<user>`,
//! read receipts off or a block); groups, the user's read watermark in the receipt
//! workers' checkpoint (at most about a second behind). In a group, messages from before
//! the user joined never count.

use natter_fabric::records::{ConversationsAnswer, ConversationsQuery};
use natter_history::{History, Store};

use crate::history::Readers;
use natter_schemas::{Conversation, ConversationSummary, HistoryMessage, ids::id_prefix_at};

/// Longest preview text, in characters.
const PREVIEW_CHARS: usize = 200;

/// One page of `query.user`'s chat list.
pub(crate) async fn page(
    history: &History<Store>,
    readers: &Readers<'_>,
    query: &ConversationsQuery,
) -> Result<ConversationsAnswer, String> {
    let Readers {
        groups, watermarks, ..
    } = readers;
    let user = query.user.as_str();
    let settings = readers.settings.of(user).await.map_err(|e| e.to_string())?;
    let now = natter_fabric::now_millis();
    let (listed, more) = history
        .conversations(user, query.before.as_deref(), query.limit)
        .await
        .map_err(|e| e.to_string())?;
    let mut conversations = Vec::with_capacity(listed.len());
    for entry in listed {
        let conv = Conversation::parse(&entry.conv).map_err(|e| e.to_string())?;
        let (name, read) = match &conv {
            Conversation::Group(gid) => {
                let group = groups.get(gid).await.map_err(|e| e.to_string())?;
                let (_, marks) = watermarks.load(gid).await.map_err(|e| e.to_string())?;
                let since = group
                    .as_ref()
                    .map(|g| id_prefix_at(g.member_since(user)))
                    .unwrap_or_default();
                let read = marks.read.get(user).cloned().unwrap_or_default();
                (group.map(|g| g.name.clone()), read.max(since))
            }
            direct => {
                let peer = direct.peer_of(user).unwrap_or(user);
                let (marks, own) = tokio::join!(
                    history.marks(&entry.conv, peer),
                    history.own_read(&entry.conv, user)
                );
                let told = marks.map_err(|e| e.to_string())?.read;
                (None, told.max(own.map_err(|e| e.to_string())?))
            }
        };
        let last = history
            .latest_message(&entry.conv, &entry.at, user)
            .await
            .map_err(|e| e.to_string())?
            .map(preview);
        let unread = history
            .unread(&entry.conv, &read, &entry.at, user)
            .await
            .map_err(|e| e.to_string())?;
        conversations.push(ConversationSummary {
            muted_until: settings.muted_at(&entry.conv, now),
            conv: entry.conv,
            at: entry.at,
            name,
            last,
            unread: unread as u32,
        });
    }
    Ok(ConversationsAnswer::Page {
        conversations,
        more,
    })
}

/// A message cut to what a chat list shows: text up to [`PREVIEW_CHARS`], no thumbnail.
fn preview(mut message: HistoryMessage) -> HistoryMessage {
    message.message.body = message.message.body.shortened(PREVIEW_CHARS);
    message
}
