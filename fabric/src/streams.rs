//! The JetStream streams and their settings, in one place.
//!
//! | stream | subjects | why |
//! | --- | --- | --- |
//! | `MSGS` | `msg.<p>.>` | group messages and group changes, in order per partition, for fanout |
//! | `INBOX` | `inbox.<uid>` | each user's durable inbox, republished to `live.<uid>.i`; a one-on-one message is stored here directly (both sides' copies) |
//! | `RCPT` | `rcpt.<p>` | group receipt marks collected by gateways, for the receipts worker of partition `p` |
//! | `DEAD` | `dead.<worker>` | what a worker could not store and stopped retrying, with the reason, for an operator to replay (`crate::dead`) |
//!
//! All are file-backed and replicated (`replicas`, 3 on the local cluster). The duplicate
//! window (10 min) outlasts the longest redelivery of a worker (30 s ack wait, retried) and
//! a client's retry of an unanswered `send` after a reconnect.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, Republish, StorageType},
};

use crate::retry::{self, Retryable};

pub const MSGS: &str = "MSGS";
pub const INBOX: &str = "INBOX";
pub const RCPT: &str = "RCPT";
pub const DEAD: &str = "DEAD";

/// How long `Nats-Msg-Id` deduplication remembers an id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Inbox items wait this long for a device to come back; history keeps them for longer.
pub const INBOX_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Receipt events are consumed within seconds; a week covers a long worker outage.
pub const RCPT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Parked items wait this long for an operator, as long as an inbox item would have.
pub const DEAD_MAX_AGE: Duration = INBOX_MAX_AGE;
/// `DEAD`'s own bound, reserved by JetStream: parking still works when the other
/// streams have filled the servers' storage.
pub const DEAD_MAX_BYTES: i64 = 256 * 1024 * 1024;

fn base(name: &str, subjects: &str, replicas: usize, max_age: Duration) -> Config {
    Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: StorageType::File,
        num_replicas: replicas,
        max_age,
        duplicate_window: DUPLICATE_WINDOW,
        // Nothing is dropped to make room: with a size limit (none is set today) or the
        // servers' storage full, a write is refused and its sender told (`unavailable`),
        // never an older item silently discarded. Only `max_age` removes items.
        discard: DiscardPolicy::New,
        ..Default::default()
    }
}

pub fn msgs(replicas: usize) -> Config {
    base(MSGS, "msg.>", replicas, INBOX_MAX_AGE)
}

pub fn inbox(replicas: usize) -> Config {
    Config {
        allow_direct: true,
        republish: Some(Republish {
            source: "inbox.*".to_owned(),
            destination: "live.{{wildcard(1)}}.i".to_owned(),
            headers_only: false,
        }),
        ..base(INBOX, "inbox.*", replicas, INBOX_MAX_AGE)
    }
}

pub fn rcpt(replicas: usize) -> Config {
    base(RCPT, "rcpt.*", replicas, RCPT_MAX_AGE)
}

pub fn dead(replicas: usize) -> Config {
    Config {
        max_bytes: DEAD_MAX_BYTES,
        ..base(DEAD, "dead.*", replicas, DEAD_MAX_AGE)
    }
}

/// Creates the streams, or updates them to these settings, all four at once (on a cluster
/// that has just formed, each new stream waits seconds for its first leader election; at
/// once, those waits overlap). Safe to run from every process at every start.
pub async fn ensure(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<(), jetstream::context::CreateStreamError> {
    let configs = [
        msgs(replicas),
        inbox(replicas),
        rcpt(replicas),
        dead(replicas),
    ];
    futures_util::future::try_join_all(configs.into_iter().map(|config| async move {
        let name = config.name.clone();
        js.create_or_update_stream(config).await?;
        tracing::debug!(stream = %name, replicas, "stream ready");
        Ok(())
    }))
    .await
    .map(drop)
}

/// How long one set-up request may take before it is asked again. On a cluster that has
/// just formed, a stream create is answered only once the new stream has elected its
/// leader, seconds later; with the connection's 10 s timeout `scripts/up` spent 45 s on
/// four streams (nats-server 2.14). Asked again sooner, the next request finds the
/// stream made.
const SETUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until JetStream answers and the streams exist: a fresh cluster needs a few
/// seconds to elect its meta leader and its first stream leaders.
pub async fn ensure_with_patience(
    js: &jetstream::Context,
    replicas: usize,
    patience: Duration,
) -> Result<(), jetstream::context::CreateStreamError> {
    let mut setup = js.clone();
    setup.set_timeout(SETUP_REQUEST_TIMEOUT);
    with_patience("JetStream streams", patience, || ensure(&setup, replicas)).await
}

/// Retries a JetStream set-up call (creating streams or consumers) until it succeeds or
/// `patience` runs out: right after a cluster starts or loses a node, the JetStream API
/// times out for a few seconds.
pub async fn with_patience<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    patience: Duration,
    attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + patience;
    let waits = retry::exponential(Duration::from_millis(250), Duration::from_secs(2));
    attempt
        .retry(waits)
        .when(|_| tokio::time::Instant::now() < deadline)
        .notify(|err, _| tracing::info!(error = %err, "{what}: JetStream not ready yet; retrying"))
        .await
}
