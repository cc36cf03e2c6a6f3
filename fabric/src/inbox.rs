//! Reading a user's inbox by direct get: no consumer per device or per reconnect.
//!
//! Direct gets are served by any replica, and right after an ack a replica may not have
//! the newest item yet (NATS-NOTES.md). So a read that runs out of items asks the stream
//! leader once more for the next one before concluding that there is none.

use async_nats::jetstream::{
    self,
    stream::{DirectGetErrorKind, RawMessageErrorKind, Stream},
};
use bytes::Bytes;

use crate::{streams, subjects};

/// One stored inbox item.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub seq: u64,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("inbox stream unavailable: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("direct get failed: {0}")]
    DirectGet(#[from] jetstream::stream::DirectGetError),
    #[error("leader get failed: {0}")]
    LeaderGet(#[from] jetstream::stream::RawMessageError),
    #[error("stream info failed: {0}")]
    Info(#[from] jetstream::stream::InfoError),
}

/// How much one read of an inbox returns at most: `items` items, and no more items once
/// their payloads reach `bytes` (a page holds at least one item, so it may pass `bytes`
/// by one item's size). Bytes bound what a reader holds whatever the items' sizes.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub items: usize,
    pub bytes: usize,
}

/// A handle on the `INBOX` stream.
#[derive(Debug, Clone)]
pub struct Inbox {
    stream: Stream<()>,
}

impl Inbox {
    pub async fn open(js: &jetstream::Context) -> Result<Self, InboxError> {
        let stream = js.get_stream_no_info(streams::INBOX).await?;
        Ok(Self { stream })
    }

    /// Items of `uid` with `after < seq <= up_to`, oldest first, at most one `page`.
    pub async fn read_after(
        &self,
        uid: &str,
        after: u64,
        up_to: u64,
        page: Page,
    ) -> Result<Vec<StoredItem>, InboxError> {
        let subject = subjects::inbox(uid);
        let mut items = Vec::new();
        let mut bytes = 0;
        let Some(mut next) = after.checked_add(1) else {
            return Ok(items);
        };
        while items.len() < page.items && bytes < page.bytes && next <= up_to {
            let Some(item) = self.next_at_or_after(&subject, next).await? else {
                break;
            };
            if item.seq > up_to {
                break;
            }
            next = item.seq + 1;
            bytes += item.payload.len();
            items.push(item);
        }
        Ok(items)
    }

    /// The item stored at `seq`, as the stream leader has it (an item a publish was just
    /// told is a duplicate of: a replica may not have it yet).
    pub async fn get(&self, seq: u64) -> Result<StoredItem, InboxError> {
        let message = self.stream.get_raw_message(seq).await?;
        Ok(StoredItem {
            seq: message.sequence,
            payload: message.payload,
        })
    }

    /// The oldest sequence the inbox stream still holds (of any user): everything before
    /// it has expired.
    pub async fn oldest_seq(&self) -> Result<u64, InboxError> {
        Ok(self.stream.get_info().await?.state.first_sequence)
    }

    /// The sequence of `uid`'s newest item, 0 when the inbox is empty. Served by a replica,
    /// so it may lag the leader by a moment; callers use it to notice lost live items.
    pub async fn last_seq(&self, uid: &str) -> Result<u64, InboxError> {
        match self
            .stream
            .direct_get_last_for_subject(subjects::inbox(uid))
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => Ok(0),
            Err(err) => Err(err.into()),
        }
    }

    /// The sequence of `uid`'s newest item as the stream leader has it (no replica lag),
    /// 0 when the inbox is empty.
    pub async fn last_seq_from_leader(&self, uid: &str) -> Result<u64, InboxError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&subjects::inbox(uid))
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(err) if matches!(err.kind(), RawMessageErrorKind::NoMessageFound) => Ok(0),
            Err(err) => Err(err.into()),
        }
    }

    async fn next_at_or_after(
        &self,
        subject: &str,
        seq: u64,
    ) -> Result<Option<StoredItem>, InboxError> {
        match self
            .stream
            .direct_get_next_for_subject(subject, Some(seq))
            .await
        {
            Ok(m) => {
                return Ok(Some(StoredItem {
                    seq: m.sequence,
                    payload: m.payload,
                }));
            }
            Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => {}
            Err(err) => return Err(err.into()),
        }
        match self
            .stream
            .get_first_raw_message_by_subject(subject, seq)
            .await
        {
            Ok(m) => Ok(Some(StoredItem {
                seq: m.sequence,
                payload: m.payload,
            })),
            Err(err) if matches!(err.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}
