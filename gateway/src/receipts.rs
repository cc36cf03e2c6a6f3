//! Delivered receipts from a socket's acks, as watermarks.
//!
//! A device acks inbox sequences ("I stored everything up to `seq`"). The gateway knows
//! what it sent to the socket, so it can tell, per conversation, the newest message from
//! someone else the device now has, without reading anything back:
//! - one-on-one: one `delivered` receipt into the peer's inbox, naming that newest message
//!   (a watermark: every earlier message of theirs is delivered too), written straight
//!   from the gateway, off the socket's path;
//! - groups: a [`GroupMark`] for the receipts worker, collected with other sockets' marks
//!   for a few milliseconds (`crate::marks`).
//!
//! What a socket keeps is bounded: up to [`MAX_TRACKED`] messages sent and not yet acked;
//! older ones are folded into one summary per conversation (at most [`MAX_FOLDED`]), which
//! is all a watermark needs. A device that never acks costs at most that.

use std::collections::{BTreeMap, HashMap, VecDeque};

use natter_fabric::watermarks::{GroupMark, SenderMark};
use natter_schemas::{Conversation, ReceiptItem, ReceiptStatus, inbox::Sender};

/// Messages sent to a socket and not acked yet, tracked one by one.
pub(crate) const MAX_TRACKED: usize = 1024;
/// Conversations whose older unacked messages are folded into one summary each; beyond
/// this, the oldest summaries are dropped (their receipts come with a later message).
pub(crate) const MAX_FOLDED: usize = 4096;

/// One message sent to the socket: which conversation, from whom, its id.
#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    conv: Box<str>,
    from: Box<str>,
    id: Box<str>,
}

/// Several acked-or-not messages of one conversation, reduced to what receipts need.
#[derive(Debug, Default)]
struct Folded {
    /// The newest sequence among them: an ack at or above it covers them all.
    seq: u64,
    /// Per sender, their newest message.
    newest: BTreeMap<Box<str>, Box<str>>,
}

/// What a socket sent and the device has not acked yet.
#[derive(Debug, Default)]
pub(crate) struct Unacked {
    recent: VecDeque<Sent>,
    older: HashMap<Box<str>, Folded>,
}

/// The receipts an ack produces.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Acked {
    /// One-on-one: (the sender to tell, the receipt).
    pub direct: Vec<(String, ReceiptItem)>,
    /// Groups: marks for the receipts worker.
    pub marks: Vec<GroupMark>,
}

impl Unacked {
    /// Notes an inbox item sent to the socket, if it is someone else's message.
    pub fn track(&mut self, me: &str, seq: u64, message: Option<Sender>) {
        let Some(message) = message.filter(|m| &*m.from != me) else {
            return;
        };
        if self.recent.len() >= MAX_TRACKED
            && let Some(oldest) = self.recent.pop_front()
        {
            self.fold(oldest);
        }
        self.recent.push_back(Sent {
            seq,
            conv: message.conv,
            from: message.from,
            id: message.id,
        });
    }

    fn fold(&mut self, sent: Sent) {
        if !self.older.contains_key(&sent.conv) && self.older.len() >= MAX_FOLDED {
            let oldest = self
                .older
                .iter()
                .min_by_key(|(_, f)| f.seq)
                .map(|(conv, _)| conv.clone());
            if let Some(conv) = oldest {
                self.older.remove(&conv);
                metrics::counter!("natter_gateway_receipts_dropped_total").increment(1);
            }
        }
        let folded = self.older.entry(sent.conv).or_default();
        folded.seq = folded.seq.max(sent.seq);
        let newest = folded.newest.entry(sent.from).or_default();
        if sent.id > *newest {
            *newest = sent.id;
        }
    }

    /// For a `read` in group `conv` up to `up_to`: per sender, the newest of their messages
    /// this socket was sent at or below it. (A read covers them whether or not they were
    /// acked; the receipts worker learns from this which senders' messages it covers.)
    pub fn senders_up_to(&self, conv: &str, up_to: &str) -> Vec<SenderMark> {
        let mut newest: BTreeMap<&str, &str> = BTreeMap::new();
        let recent = self
            .recent
            .iter()
            .filter(|s| &*s.conv == conv)
            .map(|s| (&*s.from, &*s.id));
        let folded = self
            .older
            .get(conv)
            .into_iter()
            .flat_map(|f| f.newest.iter().map(|(from, id)| (&**from, &**id)));
        for (from, id) in recent.chain(folded).filter(|(_, id)| *id <= up_to) {
            let slot = newest.entry(from).or_default();
            if id > *slot {
                *slot = id;
            }
        }
        newest
            .into_iter()
            .map(|(from, id)| SenderMark {
                from: from.to_owned(),
                id: id.to_owned(),
            })
            .collect()
    }

    /// The device stored everything up to `seq`: the receipts that makes due.
    pub fn ack(&mut self, me: &str, seq: u64, ts: u64) -> Acked {
        // Conversation → sender → newest message of theirs now acked.
        let mut newest: BTreeMap<Box<str>, BTreeMap<Box<str>, Box<str>>> = BTreeMap::new();
        let covered: Vec<Box<str>> = self
            .older
            .iter()
            .filter(|(_, f)| f.seq <= seq)
            .map(|(conv, _)| conv.clone())
            .collect();
        for conv in covered {
            if let Some(folded) = self.older.remove(&conv) {
                newest.entry(conv).or_default().extend(folded.newest);
            }
        }
        while self.recent.front().is_some_and(|s| s.seq <= seq) {
            let sent = self.recent.pop_front().expect("checked above");
            let senders = newest.entry(sent.conv).or_default();
            let slot = senders.entry(sent.from).or_default();
            if sent.id > *slot {
                *slot = sent.id;
            }
        }
        let mut acked = Acked::default();
        for (conv, senders) in newest {
            let Some(up_to) = senders.values().max().cloned() else {
                continue;
            };
            match Conversation::parse(&conv) {
                Ok(Conversation::Group(group)) => acked.marks.push(GroupMark {
                    group,
                    by: me.to_owned(),
                    status: ReceiptStatus::Delivered,
                    up_to: up_to.into(),
                    senders: senders
                        .into_iter()
                        .map(|(from, id)| SenderMark {
                            from: from.into(),
                            id: id.into(),
                        })
                        .collect(),
                }),
                Ok(direct) => {
                    for (from, id) in senders {
                        if direct.peer_of(me) == Some(&*from) {
                            acked.direct.push((
                                from.into(),
                                ReceiptItem {
                                    conv: conv.to_string(),
                                    id: id.into(),
                                    by: me.to_owned(),
                                    status: ReceiptStatus::Delivered,
                                    ts,
                                    all: None,
                                },
                            ));
                        }
                    }
                }
                Err(_) => {}
            }
        }
        acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conv: &str, from: &str, id: &str) -> Option<Sender> {
        Some(Sender {
            id: id.into(),
            conv: conv.into(),
            from: from.into(),
        })
    }

    #[test]
    fn an_ack_covers_what_was_sent_up_to_it_once() {
        let mut u = Unacked::default();
        u.track("bob", 1, msg("dm:amy:bob", "amy", "01"));
        u.track("bob", 2, msg("dm:amy:bob", "bob", "02"));
        u.track("bob", 3, None); // a receipt
        u.track("bob", 4, msg("dm:amy:bob", "amy", "04"));
        u.track("bob", 5, msg("group:g", "cat", "05"));
        u.track("bob", 6, msg("group:g", "amy", "06"));
        let acked = u.ack("bob", 4, 9);
        assert_eq!(acked.direct.len(), 1, "one watermark: {acked:?}");
        assert_eq!(acked.direct[0].0, "amy");
        assert_eq!(acked.direct[0].1.id, "04", "the newest of amy's");
        assert!(acked.marks.is_empty());
        let read = u.senders_up_to("group:g", "05");
        assert_eq!(read.len(), 1, "a read covers what was sent, acked or not");
        assert_eq!((read[0].from.as_str(), read[0].id.as_str()), ("cat", "05"));
        let acked = u.ack("bob", 6, 9);
        assert_eq!(acked.marks.len(), 1);
        let mark = &acked.marks[0];
        assert_eq!((mark.group.as_str(), mark.up_to.as_str()), ("g", "06"));
        assert_eq!(mark.senders.len(), 2);
        assert_eq!(u.ack("bob", 6, 9), Acked::default(), "nothing twice");
    }

    #[test]
    fn a_device_that_does_not_ack_costs_a_bounded_summary() {
        let mut u = Unacked::default();
        for seq in 1..=(MAX_TRACKED as u64 + 500) {
            let conv = format!("dm:amy:u{}", seq % 3);
            u.track(
                &format!("u{}", seq % 3),
                seq,
                msg(&conv, "amy", &format!("{seq:06}")),
            );
        }
        assert_eq!(u.recent.len(), MAX_TRACKED);
        assert_eq!(u.older.len(), 3, "folded per conversation");
        // u0's acks see only u0's messages in this test's single tracker, so ack as u1.
        let acked = u.ack("u1", u64::MAX, 9);
        let newest = acked
            .direct
            .iter()
            .find(|(to, r)| to == "amy" && r.conv == "dm:amy:u1")
            .map(|(_, r)| r.id.clone());
        assert_eq!(
            newest.as_deref(),
            Some(&*format!("{:06}", MAX_TRACKED + 500 - 2))
        );
        assert!(u.older.is_empty() && u.recent.is_empty());
    }
}
