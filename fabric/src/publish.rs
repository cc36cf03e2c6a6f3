//! Publishing to JetStream so that a stream leader election does not lose a message.
//!
//! During an election publishes fail with "no stream found" for 4–8 s, and a retry that
//! races its own pending original is refused with "duplicate message id is in process"
//! (NATS-NOTES.md). Both are retried with the same `Nats-Msg-Id`, which makes the retry
//! idempotent, with jittered waits (`crate::retry`), for up to [`RETRY_FOR`].

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishErrorKind},
        publish::PublishAck,
    },
};
use bytes::Bytes;

use crate::retry::{self, Retryable};

/// How long a publish is retried before the caller hears about it.
pub const RETRY_FOR: Duration = Duration::from_secs(15);

/// A publish that could not be made durable within [`RETRY_FOR`], or never can be.
#[derive(Debug, thiserror::Error)]
#[error("publish to {subject} failed: {source}")]
pub struct PublishFailed {
    pub subject: String,
    #[source]
    pub source: jetstream::context::PublishError,
}

impl PublishFailed {
    /// Retrying cannot help (e.g. the payload is over the server's limit).
    pub fn is_permanent(&self) -> bool {
        is_permanent(self.source.kind())
    }

    /// The stream's own refusal of this item, when it answered with one: it is full, or
    /// the item is over one of its limits. Unlike a timeout or an election, the same item
    /// is refused again until something changes (an operator, items expiring).
    pub fn refusal(&self) -> Option<String> {
        refusal(&self.source)
    }
}

fn refusal(err: &jetstream::context::PublishError) -> Option<String> {
    use std::error::Error;
    let api = err.source()?.downcast_ref::<jetstream::Error>()?;
    REFUSALS
        .contains(&api.error_code().0)
        .then(|| api.to_string())
}

/// JetStream API error codes of a stream refusing what it was given: "insufficient
/// resources" (10023), a message over the stream's size limit (10054), and a store that
/// refused it, e.g. maximum bytes, messages, or messages per subject exceeded (10077).
const REFUSALS: [u64; 3] = [10023, 10054, 10077];

/// Publishes `payload` to `subject` with `Nats-Msg-Id = msg_id` and waits for the stream's
/// ack, retrying transient failures.
pub async fn publish_durable(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Bytes,
) -> Result<PublishAck, PublishFailed> {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    publish_durable_with(js, subject, headers, payload).await
}

/// [`publish_durable`] with any headers (`Nats-Msg-Id` among them, for retries to be
/// idempotent). A stream's refusal ([`PublishFailed::refusal`]) is returned at once: it
/// would be refused again.
pub async fn publish_durable_with(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAck, PublishFailed> {
    let attempt = || async {
        let ack: PublishAckFuture = js
            .publish_with_headers(subject.to_owned(), headers.clone(), payload.clone())
            .await?;
        ack.await
    };
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let waits = retry::exponential(Duration::from_millis(25), Duration::from_millis(800));
    attempt
        .retry(waits)
        .when(|err| {
            !is_permanent(err.kind())
                && refusal(err).is_none()
                && tokio::time::Instant::now() < deadline
        })
        .notify(
            |err, wait| tracing::debug!(%subject, error = %err, ?wait, "publish failed; retrying"),
        )
        .await
        .map_err(|source| PublishFailed {
            subject: subject.to_owned(),
            source,
        })
}

fn is_permanent(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
    )
}
