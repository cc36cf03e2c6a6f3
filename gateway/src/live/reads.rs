//! Batched inbox reads: the newest sequence of many users' inboxes in one JetStream
//! request, for sockets opening together and for the reconciler.
//!
//! A `multi_last` direct get (`$JS.API.DIRECT.GET.INBOX` with `{"multi_last": [...]}`)
//! answers up to 1,024 subjects with one message each (the subject's newest, headers
//! `Nats-Subject` and `Nats-Sequence`), then an empty `204 EOB`; a `404` means none of
//! them has anything. Measured here: 54,000 subjects a second in batches of 1,000, against
//! 25,000 for concurrent single direct gets and 4,300 one after another
//! (../shared/NATS-NOTES.md). async-nats has no call for a request with many answers, so
//! the answers come on one wildcard subscription of this gateway's own
//! (`_INBOX.<id>.reads.<n>`) and are routed to the request by its last token. That
//! subscription delivers into a channel of [`ANSWERS_CAPACITY`]: one request is answered by
//! up to 1,001 messages at once and a reconnect storm runs many requests together, so the
//! library's default (1,024 messages) dropped answers as a slow consumer, the requests
//! timed out, and the slow-consumer event set off a reconcile round of more reads.
//!
//! Direct gets are answered by any replica, which may lag the leader by a moment: callers
//! use the result to catch up or to notice lost republishes, and the reconcile that
//! follows a socket's opening covers a replica that was behind.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::Message;
use natter_fabric::{streams, subjects};
use tokio::sync::{Notify, mpsc, oneshot};

/// Subjects per request; the server answers at most 1,024 per request.
pub(crate) const MAX_SUBJECTS: usize = 1_000;
/// How long single lookups wait to be batched with others.
const GATHER: Duration = Duration::from_millis(2);
/// How long a request's answers may take.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Answers waiting to be routed to their requests (a few dozen full requests).
const ANSWERS_CAPACITY: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("inbox read not sent: {0}")]
    Send(String),
    #[error("inbox read unanswered within {0:?}")]
    Timeout(Duration),
    #[error("inbox read refused: {0}")]
    Refused(String),
}

/// A user whose inbox's newest sequence someone waits for.
type Lookup = (String, oneshot::Sender<Result<u64, ReadError>>);

/// Batched reads of inboxes' newest sequences.
#[derive(Clone)]
pub(crate) struct Reads {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    prefix: String,
    /// The answers' subscription, to tell its slow-consumer events from live ones.
    sid: u64,
    next: AtomicU64,
    /// Request token → where its answers go.
    answers: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    /// Single lookups waiting to be batched.
    waiting: Mutex<Vec<Lookup>>,
    wake: Notify,
}

impl Reads {
    /// Subscribes to the answers and starts the batcher.
    pub async fn start(nats: async_nats::Client) -> Result<Self, async_nats::SubscribeError> {
        let prefix = format!("{}.reads.", nats.new_inbox());
        let (sink, answers) = mpsc::channel(ANSWERS_CAPACITY);
        let sid = nats
            .subscribe_with_sender(format!("{prefix}*"), sink)
            .await?;
        let reads = Self {
            inner: Arc::new(Inner {
                nats,
                prefix,
                sid,
                next: AtomicU64::new(1),
                answers: Mutex::default(),
                waiting: Mutex::default(),
                wake: Notify::new(),
            }),
        };
        tokio::spawn(reads.clone().route(answers));
        tokio::spawn(reads.clone().gather());
        Ok(reads)
    }

    /// The subscription the answers come on: answers it drops cost a retry of their read,
    /// never a live item.
    pub fn answers_sid(&self) -> u64 {
        self.inner.sid
    }

    /// The newest sequence of `user`'s inbox (0 when empty), read together with the other
    /// lookups made within a couple of milliseconds.
    pub async fn newest(&self, user: &str) -> Result<u64, ReadError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .waiting
            .lock()
            .expect("reads lock")
            .push((user.to_owned(), tx));
        self.inner.wake.notify_one();
        rx.await
            .unwrap_or_else(|_| Err(ReadError::Send("the gateway is stopping".into())))
    }

    /// The newest sequence of each user's inbox (users with an empty inbox are absent).
    pub async fn newest_of(&self, users: &[String]) -> Result<HashMap<String, u64>, ReadError> {
        let mut newest = HashMap::with_capacity(users.len());
        for chunk in users.chunks(MAX_SUBJECTS) {
            newest.extend(self.multi_last(chunk).await?);
        }
        Ok(newest)
    }

    async fn multi_last(&self, users: &[String]) -> Result<HashMap<String, u64>, ReadError> {
        let token = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.inner
            .answers
            .lock()
            .expect("reads lock")
            .insert(token, tx);
        let _forget = Forget(self, token);
        let subjects: Vec<String> = users.iter().map(|u| subjects::inbox(u)).collect();
        let request = serde_json::json!({ "multi_last": subjects });
        self.inner
            .nats
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", streams::INBOX),
                format!("{}{token}", self.inner.prefix),
                request.to_string().into(),
            )
            .await
            .map_err(|e| ReadError::Send(e.to_string()))?;
        let mut newest = HashMap::with_capacity(users.len());
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let message = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| ReadError::Timeout(TIMEOUT))?
                .ok_or_else(|| ReadError::Send("answers stopped".into()))?;
            match message.status.map(|s| s.as_u16()) {
                None | Some(200) => {
                    let header = |name: &str| {
                        let headers = message.headers.as_ref()?;
                        Some(headers.get(name)?.as_str().to_owned())
                    };
                    if let (Some(subject), Some(seq)) =
                        (header("Nats-Subject"), header("Nats-Sequence"))
                        && let (Some(user), Ok(seq)) = (subject.strip_prefix("inbox."), seq.parse())
                    {
                        newest.insert(user.to_owned(), seq);
                    }
                }
                Some(204) | Some(404) => return Ok(newest),
                Some(code) => {
                    let why = message.description.clone().unwrap_or_default();
                    return Err(ReadError::Refused(format!("{code} {why}")));
                }
            }
        }
    }

    /// Routes each answer to its request.
    async fn route(self, mut answers: mpsc::Receiver<Message>) {
        while let Some(message) = answers.recv().await {
            let Some(token) = message
                .subject
                .strip_prefix(self.inner.prefix.as_str())
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let answers = self.inner.answers.lock().expect("reads lock");
            if let Some(tx) = answers.get(&token) {
                let _ = tx.send(message);
            }
        }
    }

    /// Answers single lookups in batches.
    async fn gather(self) {
        loop {
            self.inner.wake.notified().await;
            tokio::time::sleep(GATHER).await;
            let mut waiting = std::mem::take(&mut *self.inner.waiting.lock().expect("reads lock"));
            while !waiting.is_empty() {
                let batch: Vec<_> = waiting.drain(..waiting.len().min(MAX_SUBJECTS)).collect();
                let reads = self.clone();
                tokio::spawn(async move {
                    let users: Vec<String> = batch.iter().map(|(u, _)| u.clone()).collect();
                    let result = reads.multi_last(&users).await;
                    for (user, tx) in batch {
                        let answer = match &result {
                            Ok(newest) => Ok(newest.get(&user).copied().unwrap_or(0)),
                            Err(err) => Err(err.clone()),
                        };
                        let _ = tx.send(answer);
                    }
                });
            }
        }
    }
}

/// Forgets a request's route when the request ends, however it ends.
struct Forget<'a>(&'a Reads, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .inner
            .answers
            .lock()
            .expect("reads lock")
            .remove(&self.1);
    }
}
