//! Subject names. Every id that goes in here was checked by `natter_schemas::ids`.
//!
//! `MSGS` subjects carry a partition token: `msg.<p>.dm.<a>.<b>` and `msg.<p>.grp.<gid>`,
//! with `p` a stable hash of the conversation id modulo [`PARTITIONS`]. Each partition has
//! its own ordered fanout consumer, so one conversation's messages reach inboxes in the
//! order they were stored while different partitions are fanned out in parallel.

use natter_schemas::Conversation;

/// Request/reply subject of history pages (served by the history workers, queue group
/// `history`).
pub const HISTORY_PAGE: &str = "history.page";
/// Request/reply subject of "message info" (per-member receipts of a group message),
/// served by the history workers like pages.
pub const HISTORY_INFO: &str = "history.info";
/// Request/reply subject of one message by id, for a gateway checking an edit, delete or
/// reaction; served by the history workers like pages.
pub const HISTORY_MESSAGE: &str = "history.message";
/// Request/reply subject of a page of a user's chat list; served by the history workers.
pub const HISTORY_CONVERSATIONS: &str = "history.conversations";

/// Number of `MSGS` partitions. Changing it moves conversations between partitions, so
/// it is fixed for the life of a deployment's `MSGS` stream.
pub const PARTITIONS: u32 = 16;

/// FNV-1a: stable across processes, versions and platforms (unlike std's hasher).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

pub fn partition_of(conv: &Conversation) -> u32 {
    fnv1a(&conv.to_string()) % PARTITIONS
}

/// The `MSGS` subject a message of `conv` is published to.
pub fn msg(conv: &Conversation) -> String {
    let p = partition_of(conv);
    match conv {
        Conversation::Direct { a, b } => format!("msg.{p}.dm.{a}.{b}"),
        Conversation::Group(gid) => format!("msg.{p}.grp.{gid}"),
    }
}

/// The filter of one partition's fanout consumer.
pub fn msg_partition(p: u32) -> String {
    format!("msg.{p}.>")
}

/// A user's durable inbox.
pub fn inbox(uid: &str) -> String {
    format!("inbox.{uid}")
}

/// Everything live for a user's connected devices, which a gateway holding their sockets
/// subscribes to with this one subject: `live.<uid>.i` (`INBOX` republishes their items
/// there, with `Nats-Sequence`) and `live.<uid>.n` (typing and presence notices, published
/// by gateways over core NATS, never stored). Two subjects, so NATS permissions can let
/// gateways publish notices but not items; one subscription.
pub fn live(uid: &str) -> String {
    format!("live.{uid}.*")
}

/// Where gateways publish typing and presence notices for `uid`'s devices.
pub fn notice(uid: &str) -> String {
    format!("live.{uid}.n")
}

/// Where `INBOX` republishes `uid`'s items (the stream does it: see `streams::inbox`).
pub fn live_item(uid: &str) -> String {
    format!("live.{uid}.i")
}

/// Where gateways put the group receipt marks of partition `p` (the partition of the
/// group's conversation, as for `MSGS`), for the receipts worker that owns it.
pub fn rcpt(p: u32) -> String {
    format!("rcpt.{p}")
}

/// Announced by JetStream when `INBOX` gets a new leader: republishes may have been lost.
pub const INBOX_LEADER_ELECTED: &str = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.INBOX";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_always_lands_in_the_same_partition() {
        let c = Conversation::direct("alice", "bob");
        assert_eq!(msg(&c), msg(&Conversation::direct("bob", "alice")));
        assert!(msg(&c).starts_with("msg.") && msg(&c).ends_with(".dm.alice.bob"));
        // Pinned: a change here would move live conversations between partitions.
        assert_eq!(fnv1a("a"), 0xe40c_292c); // the published FNV-1a test vector
        assert_eq!(fnv1a("dm:alice:bob"), 0xe147_4cf1);
        let spread: std::collections::HashSet<u32> = (0..200)
            .map(|i| partition_of(&Conversation::Group(format!("g{i}"))))
            .collect();
        assert_eq!(spread.len(), PARTITIONS as usize);
    }
}
