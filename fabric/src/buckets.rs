//! What every KV bucket here shares: opening one, telling a lost compare-and-set, and
//! reading a key as the bucket's leader has it.
//!
//! Why not `kv::Store::entry`: with `allow_direct` (set on every bucket async-nats
//! creates) that is a direct get, answered by any replica, and a follower may not have a
//! write that was acked a moment ago (5–8 % right after an ack, NATS-NOTES.md). A member
//! just added to a group, a push target just registered, a file just shared must be
//! seen by the next reader, so [`read_latest`] asks the stream leader (a message get,
//! ~0.2 ms). While a leader is being elected nobody answers that, for seconds; then a
//! replica's answer is better than none, as it was before.
//!
//! The receipt book keeps replica reads: its every change is a compare-and-set, so a stale
//! read costs a retry, while a slow one (an event handled for longer than its ack wait)
//! would have the event handled twice.

use std::{error::Error as StdError, time::Duration};

use async_nats::jetstream::{self, kv, stream::LastRawMessageErrorKind};
use bytes::Bytes;

/// Whether a KV compare-and-set lost to another writer: async-nats said so (`recognized`:
/// `WrongLastRevision` / `AlreadyExists`), or the JetStream error under it has one of the
/// codes for that. nats-server 2.14 answers 10164 (`STREAM_WRONG_LAST_SEQUENCE_CONSTANT`),
/// which async-nats 0.51 does not map to a kind (it knows 10071 only), so the code found
/// in the error's source chain decides.
pub(crate) fn lost_race(recognized: bool, err: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::{self, ErrorCode};
    let lost = [
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
    ];
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(js) = err.downcast_ref::<jetstream::Error>()
            && lost.contains(&js.error_code())
        {
            return true;
        }
        source = err.source();
    }
    recognized
}

/// A KV bucket operation failed: which one, and the NATS error under it (kept as the
/// source, so a caller can still look at its kind or JetStream code).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct KvError {
    what: String,
    #[source]
    source: Box<dyn StdError + Send + Sync>,
}

impl KvError {
    pub(crate) fn new(
        what: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// Opens a KV bucket, creating it when it does not exist yet.
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, KvError> {
    match js.get_key_value(&config.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => {
            let bucket = config.bucket.clone();
            js.create_key_value(config)
                .await
                .map_err(|e| KvError::new(format!("opening bucket {bucket}"), e))
        }
    }
}

/// How long the leader has to answer before a replica is asked instead.
const LEADER_PATIENCE: Duration = Duration::from_secs(1);

/// The value of `key` and its revision, from the bucket's stream leader (from a replica
/// when the leader does not answer within [`LEADER_PATIENCE`]); `None` when the key was
/// never written, or was deleted or purged.
pub(crate) async fn read_latest(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(u64, Bytes)>, KvError> {
    let subject = format!("{}{key}", kv.prefix);
    let asked = kv.stream.get_last_raw_message_by_subject(&subject);
    match tokio::time::timeout(LEADER_PATIENCE, asked).await {
        Ok(Ok(message)) => {
            let removed = message
                .headers
                .get("KV-Operation")
                .is_some_and(|op| op.as_str() != "PUT")
                || message.headers.get("Nats-Marker-Reason").is_some();
            Ok((!removed).then_some((message.sequence, message.payload)))
        }
        Ok(Err(err)) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Ok(Err(_)) | Err(_) => {
            metrics::counter!("natter_kv_replica_reads_total").increment(1);
            let read = kv.entry(key).await;
            match read.map_err(|e| KvError::new(format!("reading {key} of {}", kv.name), e))? {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    Ok(Some((entry.revision, entry.value)))
                }
                _ => Ok(None),
            }
        }
    }
}
