//! One NATS subscription per online user per gateway, and one dispatcher for all of them.
//!
//! NATS interest routing is how a user's live traffic finds the gateway holding their
//! sockets: this gateway subscribes to `live.<uid>.*` while it holds at least one socket of
//! that user, and nowhere is there a table of who is connected where. Inbox items
//! (republished by JetStream on `live.<uid>.i`) and typing and presence notices (published
//! by gateways on `live.<uid>.n`) both come through that one subscription.
//!
//! What is shared: every live subscription delivers into one channel
//! (`subscribe_with_sender`, vendor/async-nats/NATTER-PATCH.md), read by one dispatcher
//! task that parses each message once and hands it to the mailboxes of that user's
//! sockets here. A subscription of its own per socket would cost a channel (~6.4 KB,
//! allocated up front) per socket; this costs an entry in a map.
//!
//! New subscriptions are flushed together: a socket waits for [`LiveHub::flushed`], which
//! joins the next flush of the connection rather than making one of its own.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_nats::Message;
use natter_fabric::subjects;
use tokio::sync::{Notify, OnceCell, mpsc, watch};

use super::mailbox::{Live, Mailbox};
use tokio_util::sync::CancellationToken;

/// Live messages waiting for the dispatcher, for all sockets together. Beyond this NATS
/// drops them (a slow-consumer event, which makes every socket check its inbox).
pub(crate) const DISPATCH_CAPACITY: usize = 16 * 1024;

/// This gateway's live subscriptions and the sockets they feed.
#[derive(Clone)]
pub(crate) struct LiveHub {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    users: Mutex<HashMap<Box<str>, User>>,
    /// Where every live subscription delivers.
    sink: mpsc::Sender<Message>,
    next_generation: AtomicU64,
    flusher: Flusher,
    /// Subscriptions to end (from `Drop`, which cannot wait).
    unsubscribe: mpsc::UnboundedSender<u64>,
}

struct User {
    /// Tells this user's entry from a later one (after the last socket left and a new
    /// one came).
    generation: u64,
    /// The subscription id, once the subscribe command went out. Every socket attaching
    /// waits for it; when subscribing fails, the next socket to attach tries again.
    sid: Arc<OnceCell<u64>>,
    sockets: Vec<Arc<Mailbox>>,
}

/// A socket attached to its user's live subscription; detaches when dropped.
pub(crate) struct Attached {
    hub: LiveHub,
    user: Box<str>,
    mailbox: Arc<Mailbox>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.hub.detach(&self.user, &self.mailbox);
    }
}

impl LiveHub {
    /// Starts the dispatcher (until `stop`) and returns the hub.
    pub fn start(nats: async_nats::Client, stop: CancellationToken) -> Self {
        let (sink, messages) = mpsc::channel(DISPATCH_CAPACITY);
        let (unsubscribe, unsubscribes) = mpsc::unbounded_channel();
        let hub = Self {
            inner: Arc::new(Inner {
                nats: nats.clone(),
                users: Mutex::default(),
                sink,
                next_generation: AtomicU64::new(1),
                flusher: Flusher::new(),
                unsubscribe,
            }),
        };
        tokio::spawn(hub.clone().dispatch(messages, stop.clone()));
        tokio::spawn(unsubscriber(nats.clone(), unsubscribes));
        tokio::spawn(hub.inner.flusher.clone().run(nats, stop));
        hub
    }

    /// Adds `mailbox` to `user`'s sockets here, subscribing to their live subject if this
    /// is the user's first socket. Call [`Self::flushed`] before reading the inbox.
    pub async fn attach(
        &self,
        user: &str,
        mailbox: Arc<Mailbox>,
    ) -> Result<Attached, async_nats::SubscribeError> {
        let attached = Attached {
            hub: self.clone(),
            user: user.into(),
            mailbox: mailbox.clone(),
        };
        let (generation, sid) = {
            let mut users = self.inner.users.lock().expect("live users lock");
            let entry = users.entry(user.into()).or_insert_with(|| User {
                generation: self.inner.next_generation.fetch_add(1, Ordering::Relaxed),
                sid: Arc::default(),
                sockets: Vec::new(),
            });
            entry.sockets.push(mailbox);
            (entry.generation, entry.sid.clone())
        };
        let subscribed = sid
            .get_or_try_init(|| {
                self.inner
                    .nats
                    .subscribe_with_sender(subjects::live(user), self.inner.sink.clone())
            })
            .await?; // dropping `attached` takes this socket out again
        let users = self.inner.users.lock().expect("live users lock");
        if users
            .get(user)
            .is_none_or(|entry| entry.generation != generation)
        {
            // Every socket left while subscribing: nobody will end this subscription.
            let _ = self.inner.unsubscribe.send(*subscribed);
        }
        Ok(attached)
    }

    fn detach(&self, user: &str, mailbox: &Arc<Mailbox>) {
        let mut users = self.inner.users.lock().expect("live users lock");
        let Some(entry) = users.get_mut(user) else {
            return;
        };
        entry.sockets.retain(|m| !Arc::ptr_eq(m, mailbox));
        if entry.sockets.is_empty() {
            let entry = users.remove(user).expect("present above");
            if let Some(sid) = entry.sid.get() {
                let _ = self.inner.unsubscribe.send(*sid);
            }
        }
    }

    /// Resolves once every subscription made before the call has reached the server.
    pub async fn flushed(&self) -> Result<(), FlushFailed> {
        self.inner.flusher.flushed().await
    }

    /// Every user with sockets here, with their mailboxes (for the reconciler).
    pub fn sockets(&self) -> Vec<(String, Vec<Arc<Mailbox>>)> {
        let users = self.inner.users.lock().expect("live users lock");
        users
            .iter()
            .map(|(user, entry)| (user.to_string(), entry.sockets.clone()))
            .collect()
    }

    /// The mailboxes of `user`'s sockets here.
    pub fn sockets_of(&self, user: &str) -> Vec<Arc<Mailbox>> {
        let users = self.inner.users.lock().expect("live users lock");
        users
            .get(user)
            .map(|u| u.sockets.clone())
            .unwrap_or_default()
    }

    /// Hands every live message to the mailboxes of its user's sockets.
    async fn dispatch(self, mut messages: mpsc::Receiver<Message>, stop: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                message = messages.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let Some((user, kind)) = message
                .subject
                .strip_prefix("live.")
                .and_then(|rest| rest.rsplit_once('.'))
            else {
                continue;
            };
            let Some(live) = parse(kind, &message) else {
                continue;
            };
            let users = self.inner.users.lock().expect("live users lock");
            if let Some(entry) = users.get(user) {
                for mailbox in &entry.sockets {
                    mailbox.push(live.clone());
                }
            }
        }
    }
}

/// An inbox item (`live.<uid>.i`, republished by JetStream: it carries `Nats-Sequence`),
/// a notice (`live.<uid>.n`: a `typing` or `presence` frame), or nothing: anything else is
/// passed to no socket.
fn parse(kind: &str, message: &Message) -> Option<Live> {
    let number = |name: &str| {
        let value = message.headers.as_ref()?.get(name)?;
        value.as_str().parse::<u64>().ok()
    };
    if kind == "i"
        && let Some(seq) = number("Nats-Sequence")
    {
        return Some(Live::Item {
            seq,
            prev: number("Nats-Last-Sequence").unwrap_or(0),
            payload: message.payload.clone(),
        });
    }
    if kind != "n" {
        metrics::counter!("natter_gateway_live_refused_total").increment(1);
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    match serde_json::from_slice::<Probe>(&message.payload) {
        Ok(Probe {
            kind: "typing" | "presence",
        }) => Some(Live::Notice(message.payload.clone())),
        _ => {
            metrics::counter!("natter_gateway_live_refused_total").increment(1);
            None
        }
    }
}

async fn unsubscriber(nats: async_nats::Client, mut sids: mpsc::UnboundedReceiver<u64>) {
    while let Some(sid) = sids.recv().await {
        if let Err(err) = nats.unsubscribe_id(sid).await {
            tracing::debug!(error = %err, "unsubscribe failed (the connection is closing)");
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the NATS connection could not flush: {0}")]
pub(crate) struct FlushFailed(String);

/// The last flush request a finished flush covered, and why it failed if it did.
type Flushed = (u64, Option<String>);

/// Flushes the connection once for everyone who asked since the last flush started.
#[derive(Clone)]
struct Flusher {
    state: Arc<FlushState>,
}

struct FlushState {
    /// Requests so far; a flush that starts after request `n` covers it.
    requested: AtomicU64,
    wake: Notify,
    /// The last request covered by a finished flush, and whether it failed; `None` once
    /// the gateway stops.
    done: Mutex<Option<watch::Sender<Flushed>>>,
}

impl Flusher {
    fn new() -> Self {
        let (done, _) = watch::channel((0, None));
        Self {
            state: Arc::new(FlushState {
                requested: AtomicU64::new(0),
                wake: Notify::new(),
                done: Mutex::new(Some(done)),
            }),
        }
    }

    async fn flushed(&self) -> Result<(), FlushFailed> {
        let mut done = {
            let sender = self.state.done.lock().expect("flush lock");
            match sender.as_ref() {
                Some(sender) => sender.subscribe(),
                None => return Err(FlushFailed("the gateway is stopping".into())),
            }
        };
        let mine = self.state.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.wake.notify_one();
        let (covered, failure) = done
            .wait_for(|(covered, _)| *covered >= mine)
            .await
            .map_err(|_| FlushFailed("the gateway is stopping".into()))?
            .clone();
        debug_assert!(covered >= mine);
        match failure {
            Some(why) => Err(FlushFailed(why)),
            None => Ok(()),
        }
    }

    async fn run(self, nats: async_nats::Client, stop: CancellationToken) {
        let Some(sender) = self.state.done.lock().expect("flush lock").clone() else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.state.wake.notified() => {}
            }
            let target = self.state.requested.load(Ordering::SeqCst);
            let failure = nats.flush().await.err().map(|e| e.to_string());
            sender.send_replace((target, failure));
        }
        self.state.done.lock().expect("flush lock").take();
    }
}
