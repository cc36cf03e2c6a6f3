//! How inbox items reach the socket: catch-up at open, then whatever the mailbox holds
//! (live items, notices, the reconciler's newest sequences), each through the cursor so a
//! device sees every item once and in order.

use axum::extract::ws::Message;
use natter_fabric::{StoredItem, now_millis};
use natter_schemas::inbox::{Sender, message_ts};

use super::{End, Session};
use crate::live::{cursor::DeliveryError, mailbox::Live};

impl Session {
    /// Everything from the cursor up to `newest`; later items come live.
    pub(super) async fn catch_up(&mut self, newest: u64) -> Result<(), End> {
        loop {
            let items = self
                .cursor
                .catch_up_page(&self.user, &self.app.inbox, newest)
                .await
                .map_err(|err| End::Internal(err.to_string()))?;
            if items.is_empty() {
                tracing::debug!(last = self.cursor.last(), "caught up");
                return Ok(());
            }
            metrics::counter!("natter_gateway_items_delivered_total", "path" => "catch_up")
                .increment(items.len() as u64);
            self.write_items(items).await?;
        }
    }

    /// Everything the mailbox holds, in order, written to the socket in one go; then
    /// what the cursor owes (a gap in the live items, items the reconciler found, or what
    /// the mailbox had to drop), read from the inbox a page at a time.
    pub(super) async fn on_mailbox(&mut self) -> Result<(), End> {
        let drained = self.mailbox.drain();
        let mut out = Vec::with_capacity(drained.items.len());
        for live in drained.items {
            match live {
                Live::Item { seq, prev, payload } => {
                    if let Some(item) = self.cursor.on_live((seq, prev, payload)) {
                        delivered_live(&item);
                        out.push(Out::Item(item));
                    }
                }
                Live::Notice(notice) => match String::from_utf8(notice.to_vec()) {
                    Ok(text) => out.push(Out::Notice(text)),
                    Err(_) => tracing::warn!("a notice that is not UTF-8; dropped"),
                },
                Live::Newest(newest) => self.cursor.note_newest(newest),
            }
        }
        if drained.repair {
            metrics::counter!("natter_gateway_mailbox_repairs_total").increment(1);
            // The newest sequence comes from a replica, which may lag: check again soon.
            self.app.opened.note(&self.user);
            match self.app.inbox.last_seq(&self.user).await {
                Ok(newest) => self.cursor.note_newest(newest),
                Err(err) => self.retry_later(&err),
            }
        }
        self.write_out(out).await?;
        self.repair().await
    }

    /// What the cursor owes, a page at a time, each written before the next is read.
    async fn repair(&mut self) -> Result<(), End> {
        while self.cursor.owes() {
            match self.cursor.repair_page(&self.user, &self.app.inbox).await {
                Ok(items) if items.is_empty() => break,
                Ok(items) => {
                    metrics::counter!("natter_gateway_items_delivered_total", "path" => "recovered")
                        .increment(items.len() as u64);
                    self.write_items(items).await?;
                }
                Err(DeliveryError::TooFarBehind(n)) => {
                    return Err(End::Behind(format!(
                        "more than {n} items behind; resume with after"
                    )));
                }
                Err(DeliveryError::Inbox(err)) => {
                    // Still owed: the reconciler's next look comes back here.
                    self.retry_later(&err);
                    break;
                }
            }
        }
        Ok(())
    }

    /// An inbox read failed (mid-election, say): the reconciler checks again in a second.
    fn retry_later(&self, err: &natter_fabric::InboxError) {
        tracing::warn!(error = %err, "inbox read failed; retrying shortly");
        self.app.opened.note(&self.user);
    }

    async fn write_items(&mut self, items: Vec<StoredItem>) -> Result<(), End> {
        self.write_out(items.into_iter().map(Out::Item).collect())
            .await
    }

    /// Writes inbox items (noting what each ack will cover) and notices, in order, one
    /// flush per [`WRITE_CHUNK`] bytes.
    async fn write_out(&mut self, out: Vec<Out>) -> Result<(), End> {
        if out.is_empty() {
            return Ok(());
        }
        let (user, unacked) = (&self.user, &mut self.unacked);
        let flushes = flushes(out, |seq, message| unacked.track(user, seq, message));
        for frames in flushes {
            self.send_all(frames).await?;
        }
        self.mailbox.set_sent(self.cursor.last());
        Ok(())
    }
}

/// The frames for `out`, in order, cut into flushes of about [`WRITE_CHUNK`] bytes each
/// (a flush goes over once it reaches it). `track` is told of each inbox item framed:
/// its sequence and, for a message, what its ack will tick. An item that is not a JSON
/// object (or already carries a `seq`) is skipped.
fn flushes(out: Vec<Out>, mut track: impl FnMut(u64, Option<Sender>)) -> Vec<Vec<Message>> {
    let mut flushes = Vec::new();
    let mut frames = Vec::with_capacity(out.len());
    let mut bytes = 0;
    for next in out {
        if bytes >= WRITE_CHUNK {
            flushes.push(std::mem::take(&mut frames));
            bytes = 0;
        }
        match next {
            Out::Item(item) => match natter_schemas::inbox::frame(item.seq, &item.payload) {
                Some(framed) => {
                    bytes += framed.frame.len();
                    track(item.seq, framed.message);
                    frames.push(Message::Text(framed.frame.into()));
                }
                None => {
                    tracing::error!(seq = item.seq, "inbox item is not a JSON object; skipped")
                }
            },
            Out::Notice(text) => {
                bytes += text.len();
                frames.push(Message::Text(text.into()));
            }
        }
    }
    flushes.push(frames);
    flushes
}

/// Counts an item forwarded live, and its time from the gateway that accepted the send
/// (its `ts`) to now. Catch-up and repaired items would measure offline time.
fn delivered_live(item: &StoredItem) {
    metrics::counter!("natter_gateway_items_delivered_total", "path" => "live").increment(1);
    if let Some(ts) = message_ts(&item.payload) {
        let millis = now_millis().saturating_sub(ts);
        metrics::histogram!("natter_gateway_send_to_deliver_seconds")
            .record(millis as f64 / 1000.0);
    }
}

/// Bytes of frames written per flush (each flush has its own write deadline).
const WRITE_CHUNK: usize = 64 * 1024;

/// What goes out to the socket.
pub(super) enum Out {
    Item(StoredItem),
    Notice(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, json: &str) -> Out {
        Out::Item(StoredItem {
            seq,
            payload: bytes::Bytes::from(json.to_owned()),
        })
    }

    fn texts(flush: &[Message]) -> Vec<String> {
        flush
            .iter()
            .map(|m| m.to_text().expect("text frames").to_owned())
            .collect()
    }

    #[test]
    fn items_are_framed_with_their_sequence_in_order_and_messages_are_tracked_for_acks() {
        let msg = r#"{"type":"msg","id":"m1","conv":"dm:a:b","from":"b","ts":1}"#;
        let out = vec![
            item(7, msg),
            Out::Notice(r#"{"type":"typing"}"#.into()),
            item(8, r#"{"type":"receipt","id":"m0"}"#),
            item(9, "[1,2]"),
            item(10, r#"{"seq":3,"type":"msg"}"#),
            item(11, "{}"),
        ];
        let mut tracked = Vec::new();
        let flushes = flushes(out, |seq, message| {
            tracked.push((seq, message.map(|m| m.id.to_string())));
        });
        assert_eq!(flushes.len(), 1);
        assert_eq!(
            texts(&flushes[0]),
            [
                format!(r#"{{"seq":7,{}"#, &msg[1..]),
                r#"{"type":"typing"}"#.to_owned(),
                r#"{"seq":8,"type":"receipt","id":"m0"}"#.to_owned(),
                r#"{"seq":11}"#.to_owned(),
            ]
        );
        // Every item sent is tracked (the ack covers it); only a `msg` carries a sender.
        assert_eq!(tracked, [(7, Some("m1".to_owned())), (8, None), (11, None)]);
    }

    #[test]
    fn a_flush_closes_once_it_reaches_the_chunk_size_and_nothing_is_lost_between_flushes() {
        let body = "x".repeat(10_000);
        let out: Vec<Out> = (1..=20)
            .map(|seq| item(seq, &format!(r#"{{"type":"msg","body":"{body}"}}"#)))
            .collect();
        let flushes = flushes(out, |_, _| {});
        // Each frame is ~10 KB: a flush closes at the first frame that takes it to 64 KiB.
        let per_flush = WRITE_CHUNK.div_ceil(10_030);
        assert_eq!(flushes[0].len(), per_flush);
        assert!(flushes.len() > 1);
        let seqs: Vec<u64> = flushes
            .iter()
            .flatten()
            .map(|m| {
                let frame: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                frame["seq"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
        for flush in &flushes {
            let bytes: usize = flush.iter().map(|m| m.to_text().unwrap().len()).sum();
            assert!(bytes < WRITE_CHUNK + 10_100, "a flush of {bytes} bytes");
        }
    }
}
