//! Who is online: each live socket is a member of its user's sorted set, scored by when it
//! expires. Gateways re-assert their sockets every `ttl / 3`; a gateway that dies stops
//! doing so, and its sockets fall out after the TTL with no cleanup code. "Online" means
//! at least one unexpired socket.
//!
//! Keys (under the prefix): `p:<user>` sockets → expiry; `ls:<user>` last seen (ms);
//! `deadlines` user → latest expiry of any socket, which [`Presence::sweep`] reads to
//! notice users whose sockets all expired (so their watchers hear "offline");
//! `w:<user>` watcher → expiry: who follows this user's presence.

use std::time::Duration;

use crate::{Client, RedisError, Script, as_u64};

/// Most (user, socket) pairs re-asserted by one script call.
const HEARTBEAT_BATCH: usize = 500;
/// Most expired users one sweep settles.
const SWEEP_BATCH: usize = 500;

/// A user's presence as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub user: String,
    pub online: bool,
    /// Milliseconds since the epoch; `None` for a user never seen.
    pub last_seen: Option<u64>,
}

/// What [`Presence::online`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The user's first live socket: tell their watchers.
    CameOnline,
    AlreadyOnline,
    /// Refused: the user has as many sockets as allowed.
    TooMany,
}

/// Presence in Redis, for sockets that live `ttl` without a heartbeat.
#[derive(Clone)]
pub struct Presence {
    client: Client,
    prefix: String,
    ttl: Duration,
    online: Script,
    heartbeat: Script,
    offline: Script,
    status: Script,
    watch: Script,
    watchers: Script,
    sweep: Script,
}

impl Presence {
    pub fn new(client: Client, prefix: &str, ttl: Duration) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            ttl,
            online: Script::new(ONLINE),
            heartbeat: Script::new(HEARTBEAT),
            offline: Script::new(OFFLINE),
            status: Script::new(STATUS),
            watch: Script::new(WATCH),
            watchers: Script::new(WATCHERS),
            sweep: Script::new(SWEEP),
        }
    }

    /// How long a socket counts as online after its last heartbeat.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(&self, kind: &str, user: &str) -> String {
        format!("{}{kind}:{user}", self.prefix)
    }

    fn ttl_ms(&self) -> String {
        self.ttl.as_millis().to_string()
    }

    /// Marks `socket` of `user` online unless the user already has `max_sockets` live
    /// sockets (over all gateways).
    pub async fn online(
        &self,
        user: &str,
        socket: &str,
        max_sockets: usize,
    ) -> Result<Admission, RedisError> {
        let keys = vec![
            self.key("p", user),
            self.key("ls", user),
            format!("{}deadlines", self.prefix),
        ];
        let args = vec![
            socket.to_owned(),
            self.ttl_ms(),
            user.to_owned(),
            max_sockets.to_string(),
            self.prefix.clone(),
        ];
        let before: i64 = self.online.run(&self.client, keys, args).await?;
        Ok(match before {
            0 => Admission::CameOnline,
            n if n < 0 => Admission::TooMany,
            _ => Admission::AlreadyOnline,
        })
    }

    /// Re-asserts live sockets; returns the users that were offline in Redis (e.g. after
    /// Redis restarted empty), whose watchers should hear they are online.
    pub async fn heartbeat(&self, sockets: &[(String, String)]) -> Result<Vec<String>, RedisError> {
        let mut revived = Vec::new();
        for batch in sockets.chunks(HEARTBEAT_BATCH) {
            let mut args = vec![self.prefix.clone(), self.ttl_ms()];
            for (user, socket) in batch {
                args.push(user.clone());
                args.push(socket.clone());
            }
            let users: Vec<String> = self.heartbeat.run(&self.client, vec![], args).await?;
            revived.extend(users);
        }
        revived.sort();
        revived.dedup();
        Ok(revived)
    }

    /// Marks `socket` gone. `Some(last_seen)` when it was the user's last live socket.
    pub async fn offline(&self, user: &str, socket: &str) -> Result<Option<u64>, RedisError> {
        let keys = vec![
            self.key("p", user),
            self.key("ls", user),
            format!("{}deadlines", self.prefix),
        ];
        let args = vec![socket.to_owned(), user.to_owned()];
        let seen: i64 = self.offline.run(&self.client, keys, args).await?;
        Ok(u64::try_from(seen).ok())
    }

    /// Each user's presence now.
    pub async fn status(&self, users: &[String]) -> Result<Vec<State>, RedisError> {
        let mut states = Vec::with_capacity(users.len());
        for user in users {
            let keys = vec![self.key("p", user), self.key("ls", user)];
            let reply: Vec<fred::types::Value> =
                self.status.run(&self.client, keys, vec![]).await?;
            let online = reply.first().and_then(as_u64).unwrap_or(0) > 0;
            let last_seen = reply.get(1).and_then(as_u64);
            states.push(State {
                user: user.clone(),
                online,
                last_seen,
            });
        }
        Ok(states)
    }

    /// Records that each watcher follows its users for the next TTL (renewed by the
    /// watcher's heartbeat), in script calls of at most 500 pairs.
    pub async fn watch<U>(&self, watching: &[(String, U)]) -> Result<(), RedisError>
    where
        for<'a> &'a U: IntoIterator<Item = &'a String>,
    {
        let pairs: Vec<(&String, &String)> = watching
            .iter()
            .flat_map(|(watcher, users)| users.into_iter().map(move |user| (watcher, user)))
            .collect();
        for batch in pairs.chunks(HEARTBEAT_BATCH) {
            let mut args = vec![self.prefix.clone(), self.ttl_ms()];
            for (watcher, user) in batch {
                args.push((*watcher).clone());
                args.push((*user).clone());
            }
            let _: i64 = self.watch.run(&self.client, vec![], args).await?;
        }
        Ok(())
    }

    /// Who follows `user`'s presence now.
    pub async fn watchers(&self, user: &str) -> Result<Vec<String>, RedisError> {
        let keys = vec![self.key("w", user)];
        self.watchers.run(&self.client, keys, vec![]).await
    }

    /// Settles users whose sockets all expired (their gateway died): each is marked
    /// offline once, whichever gateway sweeps first, and returned with their last seen.
    pub async fn sweep(&self) -> Result<Vec<(String, Option<u64>)>, RedisError> {
        let keys = vec![format!("{}deadlines", self.prefix)];
        let args = vec![SWEEP_BATCH.to_string(), self.prefix.clone()];
        let flat: Vec<fred::types::Value> = self.sweep.run(&self.client, keys, args).await?;
        let mut settled = Vec::new();
        for pair in flat.chunks(2) {
            let user = pair[0]
                .as_string()
                .ok_or_else(|| RedisError::Reply("sweep: user is not text".into()))?;
            let seen = pair.get(1).and_then(as_u64).filter(|&ms| ms > 0);
            settled.push((user, seen));
        }
        Ok(settled)
    }
}

/// KEYS: p, ls, deadlines. ARGV: socket, ttl ms, user, most sockets, prefix. Returns the
/// live sockets before, or -1 when that many are already live (nothing added). A user
/// coming online is not notified of what is pending (see `push_queue`).
const ONLINE: &str = "
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local before = redis.call('ZCARD', KEYS[1])
if before >= tonumber(ARGV[4]) then return -1 end
if before == 0 then
  redis.call('DEL', ARGV[5] .. 'pq:' .. ARGV[3])
  redis.call('ZREM', ARGV[5] .. 'pdue', ARGV[3])
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], now)
redis.call('ZADD', KEYS[3], 'GT', now + ttl, ARGV[3])
return before
";

/// ARGV: prefix, ttl ms, then user and socket pairs. Returns users offline before.
const HEARTBEAT: &str = "
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
local revived = {}
for i = 3, #ARGV, 2 do
  local user, socket = ARGV[i], ARGV[i + 1]
  local p = prefix .. 'p:' .. user
  redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
  if redis.call('ZCARD', p) == 0 then table.insert(revived, user) end
  redis.call('ZADD', p, now + ttl, socket)
  redis.call('PEXPIRE', p, ttl)
  redis.call('SET', prefix .. 'ls:' .. user, now)
  redis.call('ZADD', prefix .. 'deadlines', 'GT', now + ttl, user)
end
return revived
";

/// KEYS: p, ls, deadlines. ARGV: socket, user. Returns last seen when this removed the
/// user's last live socket, else -1 (still online, or someone else already settled it).
const OFFLINE: &str = "
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if removed == 0 or redis.call('ZCARD', KEYS[1]) > 0 then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('SET', KEYS[2], now)
return now
";

/// KEYS: p, ls. Returns {live sockets, last seen or nil}.
const STATUS: &str = "
return { redis.call('ZCOUNT', KEYS[1], now, '+inf'), redis.call('GET', KEYS[2]) }
";

/// ARGV: prefix, ttl ms, then watcher and watched user pairs.
const WATCH: &str = "
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local w = prefix .. 'w:' .. ARGV[i + 1]
  redis.call('ZADD', w, now + ttl, ARGV[i])
  redis.call('PEXPIRE', w, ttl)
end
return 0
";

/// KEYS: w. Returns the watchers not expired.
const WATCHERS: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// KEYS: deadlines. ARGV: batch, prefix. Returns user, last seen pairs settled offline.
const SWEEP: &str = "
local prefix = ARGV[2]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local settled = {}
for _, user in ipairs(due) do
  local p = prefix .. 'p:' .. user
  redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
  local newest = redis.call('ZRANGE', p, -1, -1, 'WITHSCORES')
  if #newest == 0 then
    redis.call('ZREM', KEYS[1], user)
    table.insert(settled, user)
    table.insert(settled, redis.call('GET', prefix .. 'ls:' .. user) or '0')
  else
    redis.call('ZADD', KEYS[1], newest[2], user)
  end
end
return settled
";
