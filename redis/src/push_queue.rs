//! Pending push notifications, coalesced per user: the first message for an offline user
//! opens a window; more messages only raise its count; when the window closes, one
//! notification goes out with the count and the latest message's conversation and sender.
//! A user is notified at most once per `min_interval`, so a burst of 20 messages is one
//! push, and a chatty conversation is one push every `min_interval`.
//!
//! Keys: `pq:<user>` hash {count, conv, from, text}; `pdue` user → when their window
//! closes; `pl:<user>` when they were last notified; `pn:<user>` the newest inbox sequence
//! noted, so an item noted again (a reader replaying after a restart, or a second reader)
//! counts once. Whether the user is online is read
//! from presence's `p:<user>` in the same script, so a user who is online is never queued,
//! and one who came online before their window closed is not notified.

use std::time::Duration;

use crate::{Client, RedisError, Script, as_u64};

/// Most notifications one [`PushQueue::claim_due`] hands out.
const CLAIM_BATCH: usize = 200;

/// What a user is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub user: String,
    /// Messages since the last notification.
    pub count: u64,
    /// The latest one's conversation and sender.
    pub conv: String,
    pub from: String,
    /// Its text, when the deployment puts text in notifications (empty otherwise).
    pub text: String,
}

/// How notifications are coalesced.
#[derive(Debug, Clone, Copy)]
pub struct Coalescing {
    /// How long a window stays open after its first message.
    pub window: Duration,
    /// Least time between two notifications to one user.
    pub min_interval: Duration,
}

#[derive(Clone)]
pub struct PushQueue {
    client: Client,
    prefix: String,
    coalescing: Coalescing,
    note: Script,
    claim: Script,
}

impl PushQueue {
    pub fn new(client: Client, prefix: &str, coalescing: Coalescing) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            coalescing,
            note: Script::new(NOTE),
            claim: Script::new(CLAIM),
        }
    }

    /// Records a message for `user`, stored at inbox sequence `seq`. `false` when the user
    /// is online, or this item (or a later one) was noted already: nothing queued.
    pub async fn note(
        &self,
        user: &str,
        seq: u64,
        conv: &str,
        from: &str,
        text: &str,
    ) -> Result<bool, RedisError> {
        let key = |kind: &str| format!("{}{kind}:{user}", self.prefix);
        let keys = vec![
            key("p"),
            key("pq"),
            format!("{}pdue", self.prefix),
            key("pl"),
            key("pn"),
        ];
        let args = vec![
            user.to_owned(),
            conv.to_owned(),
            from.to_owned(),
            text.to_owned(),
            self.coalescing.window.as_millis().to_string(),
            self.coalescing.min_interval.as_millis().to_string(),
            seq.to_string(),
        ];
        let count: i64 = self.note.run(&self.client, keys, args).await?;
        Ok(count > 0)
    }

    /// Takes the notifications whose window has closed, for users still offline. Each is
    /// handed to exactly one caller.
    pub async fn claim_due(&self) -> Result<Vec<Pending>, RedisError> {
        let keys = vec![format!("{}pdue", self.prefix)];
        let remember = self.coalescing.min_interval.max(Duration::from_secs(1)) * 2;
        let args = vec![
            CLAIM_BATCH.to_string(),
            self.prefix.clone(),
            remember.as_millis().to_string(),
        ];
        let flat: Vec<fred::types::Value> = self.claim.run(&self.client, keys, args).await?;
        let text = |v: &fred::types::Value| v.as_string().unwrap_or_default();
        Ok(flat
            .chunks(5)
            .filter(|row| row.len() == 5)
            .map(|row| Pending {
                user: text(&row[0]),
                count: as_u64(&row[1]).unwrap_or(1),
                conv: text(&row[2]),
                from: text(&row[3]),
                text: text(&row[4]),
            })
            .collect())
    }
}

/// KEYS: p, pq, pdue, pl, pn. ARGV: user, conv, from, text, window ms, min interval ms,
/// inbox sequence. Returns the pending count, or 0 when the user is online or the item was
/// noted before.
const NOTE: &str = "
local seq = tonumber(ARGV[7])
if seq <= (tonumber(redis.call('GET', KEYS[5])) or 0) then return 0 end
redis.call('SET', KEYS[5], seq, 'PX', 86400000)
if redis.call('ZCOUNT', KEYS[1], now, '+inf') > 0 then return 0 end
local count = redis.call('HINCRBY', KEYS[2], 'count', 1)
redis.call('HSET', KEYS[2], 'conv', ARGV[2], 'from', ARGV[3], 'text', ARGV[4])
redis.call('PEXPIRE', KEYS[2], 86400000)
if count == 1 then
  local last = tonumber(redis.call('GET', KEYS[4])) or 0
  local due = math.max(now + tonumber(ARGV[5]), last + tonumber(ARGV[6]))
  redis.call('ZADD', KEYS[3], 'NX', due, ARGV[1])
end
return count
";

/// KEYS: pdue. ARGV: batch, prefix, how long to remember a notification (ms). Returns
/// user, count, conv, from, text for each claimed notification.
const CLAIM: &str = "
local prefix = ARGV[2]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, user in ipairs(due) do
  redis.call('ZREM', KEYS[1], user)
  local q = prefix .. 'pq:' .. user
  local h = redis.call('HMGET', q, 'count', 'conv', 'from', 'text')
  redis.call('DEL', q)
  local online = redis.call('ZCOUNT', prefix .. 'p:' .. user, now, '+inf') > 0
  if h[1] and not online then
    redis.call('SET', prefix .. 'pl:' .. user, now, 'PX', tonumber(ARGV[3]))
    for _, v in ipairs({ user, h[1], h[2] or '', h[3] or '', h[4] or '' }) do
      table.insert(out, v)
    end
  end
end
return out
";
