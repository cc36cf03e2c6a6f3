//! Presence at the gateway: marks this gateway's sockets online in Redis, keeps them so
//! with a heartbeat, tells watchers when a user comes or goes, and sweeps up users whose
//! gateway died.
//!
//! Watchers hear about changes on `live.<watcher>.n`, the subject the gateway holding their
//! sockets already subscribes to for their inbox items and typing notices: a change costs one publish per watcher and no
//! subscription per followed user. Redis being down only degrades presence: sockets stay
//! up, and the next heartbeat after Redis returns re-asserts every live socket and every
//! subscription, so presence rebuilds within one heartbeat interval.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use natter_fabric::{settings::Settings, subjects};
use natter_redis::presence::{Admission, Presence, State};
use natter_schemas::{Audience, ServerFrame};
use tokio_util::sync::CancellationToken;

/// This gateway's sockets, as presence knows them.
#[derive(Clone)]
pub(crate) struct PresenceHub {
    inner: Arc<Inner>,
}

struct Inner {
    presence: Presence,
    nats: async_nats::Client,
    /// Who may see each user's online state and last seen.
    settings: Settings,
    /// This gateway's sockets.
    local: Mutex<Local>,
    next_socket: AtomicU64,
    /// Unique per gateway run, so socket ids never collide across gateways.
    instance: String,
    sweep_every: Duration,
}

#[derive(Default)]
struct Local {
    /// Socket id → its user and whom it follows.
    sockets: HashMap<String, Socket>,
    /// Sockets per user.
    per_user: HashMap<String, usize>,
}

/// Why a `presence_subscribe` could not be recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FollowError {
    #[error("a socket follows at most {0} users")]
    TooMany(usize),
    #[error(transparent)]
    Redis(#[from] natter_redis::RedisError),
}

/// A user already holds as many sockets as allowed.
#[derive(Debug)]
pub(crate) struct TooMany;

/// A watcher and the users it follows.
type Follows = (String, HashSet<String>);

struct Socket {
    user: String,
    following: HashSet<String>,
}

/// One socket's place in presence; dropping it (the socket ended, or its upgrade failed)
/// takes the socket out, and the user offline if it was their last.
pub(crate) struct Registration {
    hub: PresenceHub,
    socket: String,
    user: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.disconnected(&self.socket, &self.user);
    }
}

impl PresenceHub {
    pub fn new(
        presence: Presence,
        nats: async_nats::Client,
        settings: Settings,
        sweep_every: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                presence,
                nats,
                settings,
                local: Mutex::default(),
                next_socket: AtomicU64::new(0),
                instance: uuid::Uuid::new_v4().simple().to_string(),
                sweep_every,
            }),
        }
    }

    /// A socket of `user` wants to open: admitted unless the user already holds
    /// `max_sockets`, counted over all gateways in Redis and, as a backstop that holds
    /// while Redis is down, on this gateway alone. Admitting marks the user online.
    pub async fn admit(&self, user: &str, max_sockets: usize) -> Result<Registration, TooMany> {
        let n = self.inner.next_socket.fetch_add(1, Ordering::Relaxed);
        let socket = format!("{}-{n}", self.inner.instance);
        {
            let mut local = self.inner.local.lock().expect("sockets lock");
            let count = local.per_user.entry(user.to_owned()).or_default();
            if *count >= max_sockets {
                return Err(TooMany);
            }
            *count += 1;
        }
        // From here on the guard gives the slot back however this ends, including when
        // the upgrade request is dropped while Redis answers.
        let registration = Registration {
            hub: self.clone(),
            socket,
            user: user.to_owned(),
        };
        match self
            .inner
            .presence
            .online(user, &registration.socket, max_sockets)
            .await
        {
            Ok(Admission::CameOnline) => {
                let (hub, user) = (self.clone(), user.to_owned());
                tokio::spawn(async move { hub.announce(&user, true, None).await });
            }
            Ok(Admission::AlreadyOnline) => {}
            Ok(Admission::TooMany) => return Err(TooMany),
            // Admitted without Redis; the next heartbeat marks the socket online.
            Err(err) => redis_failed("online", &err),
        }
        // Only now is the socket heartbeated: a heartbeat cannot add it to Redis ahead of
        // the capped admission above.
        self.inner
            .local
            .lock()
            .expect("sockets lock")
            .sockets
            .insert(
                registration.socket.clone(),
                Socket {
                    user: user.to_owned(),
                    following: HashSet::new(),
                },
            );
        Ok(registration)
    }

    /// The socket closed: offline if it was the user's last one anywhere.
    fn disconnected(&self, socket: &str, user: &str) {
        self.forget(socket, user);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // shutting down: the TTL takes it out
        };
        let (hub, socket, user) = (self.clone(), socket.to_owned(), user.to_owned());
        runtime.spawn(async move {
            match hub.inner.presence.offline(&user, &socket).await {
                Ok(Some(last_seen)) => hub.announce(&user, false, Some(last_seen)).await,
                Ok(None) => {}
                Err(err) => redis_failed("offline", &err),
            }
        });
    }

    fn forget(&self, socket: &str, user: &str) {
        let mut local = self.inner.local.lock().expect("sockets lock");
        local.sockets.remove(socket);
        if let Some(count) = local.per_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                local.per_user.remove(user);
            }
        }
    }

    /// `socket` follows `users` (already checked as allowed), up to `max_follow` users in
    /// all: their state now.
    pub async fn follow(
        &self,
        registration: &Registration,
        users: Vec<String>,
        max_follow: usize,
    ) -> Result<Vec<State>, FollowError> {
        if let Some(socket) = self
            .inner
            .local
            .lock()
            .expect("sockets lock")
            .sockets
            .get_mut(&registration.socket)
        {
            let new = users
                .iter()
                .filter(|u| !socket.following.contains(*u))
                .count();
            if socket.following.len() + new > max_follow {
                return Err(FollowError::TooMany(max_follow));
            }
            socket.following.extend(users.iter().cloned());
        }
        let watching = [(registration.user.clone(), users.clone())];
        self.inner.presence.watch(&watching).await?;
        Ok(self.inner.presence.status(&users).await?)
    }

    /// Tells everyone following `user` about their state as it is now (after a change
    /// of their privacy settings).
    pub async fn restate(&self, user: &str) {
        match self.inner.presence.status(&[user.to_owned()]).await {
            Ok(states) => {
                for state in states {
                    self.announce(&state.user, state.online, state.last_seen)
                        .await;
                }
            }
            Err(err) => redis_failed("status", &err),
        }
    }

    /// What followers are shown of a state: nothing online while `online` is `nobody`,
    /// no last seen while `last_seen` is. (`contacts` is everyone who may follow.)
    pub async fn shown(&self, state: State) -> natter_schemas::Presence {
        let settings = match self.inner.settings.of(&state.user).await {
            Ok(settings) => settings,
            Err(err) => {
                tracing::warn!(error = %err, "settings unavailable; presence shown as offline");
                Arc::new(natter_schemas::UserSettings {
                    last_seen: Audience::Nobody,
                    online: Audience::Nobody,
                    ..Default::default()
                })
            }
        };
        natter_schemas::Presence {
            user: state.user,
            online: state.online && settings.online != Audience::Nobody,
            last_seen: state
                .last_seen
                .filter(|_| settings.last_seen != Audience::Nobody),
        }
    }

    /// Tells everyone following `user` about a change, as their settings let them see it.
    async fn announce(&self, user: &str, online: bool, last_seen: Option<u64>) {
        let watchers = match self.inner.presence.watchers(user).await {
            Ok(watchers) => watchers,
            Err(err) => return redis_failed("watchers", &err),
        };
        let state = State {
            user: user.to_owned(),
            online,
            last_seen,
        };
        let frame = ServerFrame::Presence(self.shown(state).await);
        let payload = Bytes::from(frame.to_json());
        for watcher in &watchers {
            if let Err(err) = self
                .inner
                .nats
                .publish(subjects::notice(watcher), payload.clone())
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
    pub async fn run(self, stop: CancellationToken) {
        let mut heartbeat = tokio::time::interval(self.inner.presence.ttl() / 3);
        let mut sweep = tokio::time::interval(self.inner.sweep_every);
        for timer in [&mut heartbeat, &mut sweep] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    async fn heartbeat(&self) {
        let (sockets, following): (Vec<(String, String)>, Vec<Follows>) = {
            let local = self.inner.local.lock().expect("sockets lock");
            let sockets = &local.sockets;
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
        // announced to watchers already known again. A failure here does not stop the
        // heartbeat itself.
        if let Err(err) = self.inner.presence.watch(&following).await {
            redis_failed("watch", &err);
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
