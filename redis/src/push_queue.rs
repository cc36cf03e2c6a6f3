//! Pending push notifications, coalesced per user: the first message for an offline user
//! opens a window; more messages only raise its count; when the window closes, one
//! notification goes out with the count and the latest message's conversation and sender.
//! A user is notified at most once per `min_interval`, so a burst of 20 messages is one
//! push, and a chatty conversation is one push every `min_interval`.
//!
//! Keys: `pq:<user>` hash {count, conv, from, text, id (the latest message's)}; `pqm:<user>`
//! the ids of the messages counted; `pdue` user → when their window closes; `pl:<user>`
//! when they were last notified; `pn:<user>` the newest inbox sequence noted, so an item
//! noted again (a reader replaying after a restart, or a second reader) counts once. A
//! message deleted for everyone while its notification waits is taken out of it: no longer
//! counted, its text not shown, and no notification at all when it was the only one. Whether the user is online is read
//! from presence's `p:<user>` in the same script, so a user who is online is never queued,
//! and one who came online before their window closed is not notified.

use std::time::Duration;

use crate::{Client, RedisError, Script, as_u64};

/// Most notifications one [`PushQueue::claim_due`] hands out.
const CLAIM_BATCH: usize = 200;
/// Most messages noted by one script call.
const NOTE_BATCH: usize = 500;

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

/// One message to note, or one deleted for everyone to take back.
#[derive(Debug, Clone, Copy)]
pub struct Note<'a> {
    pub kind: NoteKind,
    pub user: &'a str,
    /// Its inbox sequence (each message is counted once).
    pub seq: u64,
    /// The message's id.
    pub id: &'a str,
    pub conv: &'a str,
    pub from: &'a str,
    /// Its text when notifications carry text, else empty.
    pub text: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// A new message for the user.
    Message,
    /// A message deleted for everyone: out of the waiting notification.
    Deleted,
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
        id: &str,
        conv: &str,
        from: &str,
        text: &str,
    ) -> Result<bool, RedisError> {
        let note = Note {
            kind: NoteKind::Message,
            user,
            seq,
            id,
            conv,
            from,
            text,
        };
        Ok(self.note_all(&[note]).await? > 0)
    }

    /// Records several messages in one script call (a tail reader's batch); how many were
    /// queued (the others' users were online, or they were noted before).
    pub async fn note_all(&self, notes: &[Note<'_>]) -> Result<u64, RedisError> {
        let mut total = 0;
        for chunk in notes.chunks(NOTE_BATCH) {
            let keys = vec![format!("{}pdue", self.prefix)];
            let mut args = Vec::with_capacity(3 + chunk.len() * 7);
            args.push(self.prefix.clone());
            args.push(self.coalescing.window.as_millis().to_string());
            args.push(self.coalescing.min_interval.as_millis().to_string());
            for note in chunk {
                let kind = match note.kind {
                    NoteKind::Message => "m",
                    NoteKind::Deleted => "d",
                };
                args.extend([
                    kind.to_owned(),
                    note.user.to_owned(),
                    note.seq.to_string(),
                    note.id.to_owned(),
                    note.conv.to_owned(),
                    note.from.to_owned(),
                    note.text.to_owned(),
                ]);
            }
            let queued: i64 = self.note.run(&self.client, keys, args).await?;
            total += queued.max(0) as u64;
        }
        Ok(total)
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

/// KEYS: pdue. ARGV: prefix, window ms, min interval ms, then for each note: kind (`m` a
/// message, `d` a deletion), user, inbox sequence, message id, conv, from, text. A
/// message is skipped when its sequence was noted before (`pn:<user>`) or the user is
/// online (`p:<user>`); otherwise counted in `pq:<user>` (its id in `pqm:<user>`), and the
/// user is scheduled in `pdue` when this opens their window. A deletion uncounts its
/// message if it is waiting (and unschedules a notification left with none). Returns how
/// many messages were queued.
const NOTE: &str = "
local prefix = ARGV[1]
local window, min_interval = tonumber(ARGV[2]), tonumber(ARGV[3])
local queued = 0
for i = 4, #ARGV, 7 do
  local kind, user, seq, id = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local q, qm = prefix .. 'pq:' .. user, prefix .. 'pqm:' .. user
  if kind == 'd' then
    if redis.call('SREM', qm, id) == 1 then
      if redis.call('HINCRBY', q, 'count', -1) <= 0 then
        redis.call('DEL', q, qm)
        redis.call('ZREM', KEYS[1], user)
      elseif redis.call('HGET', q, 'id') == id then
        redis.call('HSET', q, 'text', '')
      end
    end
  else
    local pn = prefix .. 'pn:' .. user
    if seq > (tonumber(redis.call('GET', pn)) or 0) then
      redis.call('SET', pn, seq, 'PX', 86400000)
      if redis.call('ZCOUNT', prefix .. 'p:' .. user, now, '+inf') == 0 then
        local count = redis.call('HINCRBY', q, 'count', 1)
        redis.call('HSET', q, 'conv', ARGV[i + 4], 'from', ARGV[i + 5], 'text', ARGV[i + 6], 'id', id)
        redis.call('SADD', qm, id)
        redis.call('PEXPIRE', q, 86400000)
        redis.call('PEXPIRE', qm, 86400000)
        if count == 1 then
          local last = tonumber(redis.call('GET', prefix .. 'pl:' .. user)) or 0
          redis.call('ZADD', KEYS[1], 'NX', math.max(now + window, last + min_interval), user)
        end
        queued = queued + 1
      end
    end
  end
end
return queued
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
  redis.call('DEL', q, prefix .. 'pqm:' .. user)
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
