//! Presence at the gateway: marks this gateway's sockets online in Redis, keeps them so
//! with a heartbeat, tells watchers when a user comes or goes, and sweeps up users whose
//! gateway died.
//!
//! Watchers hear about changes on `ephemeral.<watcher>`, the subject every socket already
//! subscribes to for typing notices: a change costs one publish per watcher and no
//! subscription per followed user. Redis being down only degrades presence: sockets stay
//! up, and the next heartbeat after Redis returns re-asserts every live socket and every
//! subscription, so presence rebuilds within one heartbeat interval.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use natter_fabric::subjects;
use natter_redis::presence::{Presence, State};
use natter_schemas::ServerFrame;
use tokio::{sync::watch, task::JoinHandle};

/// This gateway's sockets, as presence knows them.
#[derive(Clone)]
pub(crate) struct PresenceHub {
    inner: Arc<Inner>,
}

struct Inner {
    presence: Presence,
    nats: async_nats::Client,
    /// Socket id → its user and whom it follows.
    sockets: Mutex<HashMap<String, Socket>>,
    next_socket: AtomicU64,
    /// Unique per gateway run, so socket ids never collide across gateways.
    instance: String,
    sweep_every: Duration,
}

/// A watcher and the users it follows.
type Follows = (String, Vec<String>);

struct Socket {
    user: String,
    following: Vec<String>,
}

/// One socket's presence; [`PresenceHub::disconnected`] ends it.
pub(crate) struct Registration {
    socket: String,
    user: String,
    /// The "online" write, which the "offline" write must follow.
    online: JoinHandle<()>,
}

impl PresenceHub {
    pub fn new(presence: Presence, nats: async_nats::Client, sweep_every: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                presence,
                nats,
                sockets: Mutex::default(),
                next_socket: AtomicU64::new(0),
                instance: uuid::Uuid::new_v4().simple().to_string(),
                sweep_every,
            }),
        }
    }

    /// A socket of `user` opened: online now (written in the background, so a slow or
    /// absent Redis never delays the socket).
    pub fn connected(&self, user: &str) -> Registration {
        let n = self.inner.next_socket.fetch_add(1, Ordering::Relaxed);
        let socket = format!("{}-{n}", self.inner.instance);
        self.inner.sockets.lock().expect("sockets lock").insert(
            socket.clone(),
            Socket {
                user: user.to_owned(),
                following: Vec::new(),
            },
        );
        let (hub, user_owned, id) = (self.clone(), user.to_owned(), socket.clone());
        let online = tokio::spawn(async move {
            match hub.inner.presence.online(&user_owned, &id).await {
                Ok(true) => hub.announce(&user_owned, true, None).await,
                Ok(false) => {}
                Err(err) => redis_failed("online", &err),
            }
        });
        Registration {
            socket,
            user: user.to_owned(),
            online,
        }
    }

    /// The socket closed: offline if it was the user's last one anywhere.
    pub fn disconnected(&self, registration: Registration) {
        let Registration {
            socket,
            user,
            online,
        } = registration;
        self.inner
            .sockets
            .lock()
            .expect("sockets lock")
            .remove(&socket);
        let hub = self.clone();
        tokio::spawn(async move {
            let _ = online.await;
            match hub.inner.presence.offline(&user, &socket).await {
                Ok(Some(last_seen)) => hub.announce(&user, false, Some(last_seen)).await,
                Ok(None) => {}
                Err(err) => redis_failed("offline", &err),
            }
        });
    }

    /// `socket` follows `users` (already checked as allowed): their state now.
    pub async fn follow(
        &self,
        registration: &Registration,
        users: Vec<String>,
    ) -> Result<Vec<State>, natter_redis::RedisError> {
        if let Some(socket) = self
            .inner
            .sockets
            .lock()
            .expect("sockets lock")
            .get_mut(&registration.socket)
        {
            for user in &users {
                if !socket.following.contains(user) {
                    socket.following.push(user.clone());
                }
            }
        }
        self.inner
            .presence
            .watch(&registration.user, &users)
            .await?;
        self.inner.presence.status(&users).await
    }

    /// Tells everyone following `user` about a change.
    async fn announce(&self, user: &str, online: bool, last_seen: Option<u64>) {
        let watchers = match self.inner.presence.watchers(user).await {
            Ok(watchers) => watchers,
            Err(err) => return redis_failed("watchers", &err),
        };
        let frame = ServerFrame::Presence(natter_schemas::Presence {
            user: user.to_owned(),
            online,
            last_seen,
        });
        let payload = Bytes::from(frame.to_json());
        for watcher in &watchers {
            if let Err(err) = self
                .inner
                .nats
                .publish(subjects::ephemeral(watcher), payload.clone())
                .await
            {
                tracing::debug!(error = %err, "presence change not relayed");
            }
        }
        metrics::counter!("natter_gateway_presence_changes_total", "online" => online.to_string())
            .increment(1);
        metrics::counter!("natter_gateway_presence_relayed_total").increment(watchers.len() as u64);
    }

    /// Heartbeats every `ttl / 3` and sweeps every `sweep_every`, until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut heartbeat = tokio::time::interval(self.inner.presence.ttl() / 3);
        let mut sweep = tokio::time::interval(self.inner.sweep_every);
        for timer in [&mut heartbeat, &mut sweep] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    async fn heartbeat(&self) {
        let (sockets, following): (Vec<(String, String)>, Vec<Follows>) = {
            let sockets = self.inner.sockets.lock().expect("sockets lock");
            let live = sockets
                .iter()
                .map(|(id, s)| (s.user.clone(), id.clone()))
                .collect();
            let following = sockets
                .values()
                .filter(|s| !s.following.is_empty())
                .map(|s| (s.user.clone(), s.following.clone()))
                .collect();
            (live, following)
        };
        // Subscriptions first: after a Redis restart, the users revived below are
        // announced to watchers already known again.
        for (watcher, users) in following {
            if let Err(err) = self.inner.presence.watch(&watcher, &users).await {
                return redis_failed("watch", &err);
            }
        }
        match self.inner.presence.heartbeat(&sockets).await {
            Ok(revived) => {
                for user in revived {
                    self.announce(&user, true, None).await;
                }
            }
            Err(err) => redis_failed("heartbeat", &err),
        }
    }

    async fn sweep(&self) {
        match self.inner.presence.sweep().await {
            Ok(settled) => {
                for (user, last_seen) in settled {
                    self.announce(&user, false, last_seen).await;
                }
            }
            Err(err) => redis_failed("sweep", &err),
        }
    }
}

fn redis_failed(op: &'static str, err: &natter_redis::RedisError) {
    metrics::counter!("natter_gateway_redis_errors_total", "op" => op).increment(1);
    tracing::debug!(op, error = %err, "redis call failed; presence degraded");
}
