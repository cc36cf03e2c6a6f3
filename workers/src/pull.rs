//! A durable consumer's messages that keep coming when a pull request is lost.
//!
//! async-nats's pull stream sends its next pull request only when the previous one is
//! used up or has expired (its expiry plus 5 s). A request that found no consumer leader
//! ("no responders": a few percent of the first pulls of a new consumer, see
//! NATS-NOTES.md, and again while a leader is elected) or whose leader went away (missed
//! heartbeats) is never answered, so the process received nothing for that long: 35 s
//! with the default expiry, while another process's pull may have been lost the same way.
//! Here such a stream is dropped and a new one pulls after a short pause. Nothing is lost
//! either way: what was delivered and not acked comes back after the consumer's ack wait.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{
        PullConsumer,
        pull::{MessagesError, MessagesErrorKind},
    },
};
use futures_util::{Stream, StreamExt};

/// Most messages one pull request asks for, unless a worker batches differently.
pub(crate) const BATCH: usize = 200;
/// A pull request's lifetime: short enough that a request lost without a word is
/// replaced soon. Heartbeats come three times as often.
const EXPIRES: Duration = Duration::from_secs(10);
/// The pause before pulling again after a lost request, doubling while they keep failing.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// The consumer's messages, pulled `batch` at a time. Errors are passed on for the caller
/// to log; the stream ends only when the consumer is gone (deleted).
pub(crate) fn messages(
    consumer: PullConsumer,
    batch: usize,
) -> impl Stream<Item = Result<jetstream::Message, MessagesError>> + Send + Unpin {
    let puller = Puller {
        consumer,
        batch,
        current: None,
        pause: FIRST_PAUSE,
        lost: false,
    };
    Box::pin(futures_util::stream::unfold(
        puller,
        |mut puller| async move {
            let next = puller.next().await?;
            Some((next, puller))
        },
    ))
}

struct Puller {
    consumer: PullConsumer,
    batch: usize,
    current: Option<jetstream::consumer::pull::Stream>,
    pause: Duration,
    /// The last pull request was lost: wait `pause` before the next.
    lost: bool,
}

impl Puller {
    async fn next(&mut self) -> Option<Result<jetstream::Message, MessagesError>> {
        if self.current.is_none() {
            self.current = Some(self.open().await);
        }
        let stream = self.current.as_mut().expect("opened above");
        let next = stream.next().await?;
        match &next {
            Ok(_) => self.pause = FIRST_PAUSE,
            Err(err) if lost_request(err.kind()) => {
                metrics::counter!("natter_worker_pull_restarts_total").increment(1);
                self.current = None;
                self.lost = true;
            }
            Err(_) => {}
        }
        Some(next)
    }

    /// A new pull stream, retried (with growing pauses) until the server takes it.
    async fn open(&mut self) -> jetstream::consumer::pull::Stream {
        loop {
            if self.lost {
                tokio::time::sleep(self.pause).await;
                self.pause = (self.pause * 2).min(LONGEST_PAUSE);
            }
            let pulled = self
                .consumer
                .stream()
                .max_messages_per_batch(self.batch)
                .expires(EXPIRES)
                .heartbeat(EXPIRES / 3)
                .messages()
                .await;
            match pulled {
                Ok(stream) => {
                    self.lost = false;
                    return stream;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot pull from a consumer; trying again");
                    self.lost = true;
                }
            }
        }
    }
}

/// Whether the stream's pending pull request will never be answered.
fn lost_request(kind: MessagesErrorKind) -> bool {
    matches!(
        kind,
        MessagesErrorKind::NoResponders
            | MessagesErrorKind::MissingHeartbeat
            | MessagesErrorKind::Pull
    )
}
