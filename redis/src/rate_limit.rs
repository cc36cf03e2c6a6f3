//! Per-user rate limits: a token bucket per (action, user) in Redis, refilled at `rate`
//! tokens a second up to `burst`, taken atomically by one script. All gateways share the
//! bucket, so a user cannot multiply their allowance by opening sockets on several.
//!
//! Callers may take several tokens at once and spend them locally ([`RateLimiter::take`]):
//! the gateway leases a few per socket, so a steady sender does not pay a Redis round trip
//! on every message.
//!
//! **Fails open**: when Redis does not answer, the action is allowed (and counted by the
//! caller). A limiter outage must not stop everyone chatting; the gateway's per-socket
//! bounds (in-flight sends, frame size) still hold meanwhile.

use crate::{Client, RedisError, Script};

/// The outcome of taking a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused; a token will be there in this many milliseconds.
    Limited {
        retry_after_ms: u64,
    },
}

/// One action's limit, e.g. `send` at 20/s with bursts of 100.
#[derive(Clone)]
pub struct RateLimiter {
    client: Client,
    prefix: String,
    action: String,
    rate_per_sec: f64,
    burst: f64,
    take: Script,
}

impl RateLimiter {
    pub fn new(client: Client, prefix: &str, action: &str, rate_per_sec: f64, burst: f64) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            action: action.to_owned(),
            rate_per_sec,
            burst,
            take: Script::new(TAKE),
        }
    }

    /// Takes one token from `user`'s bucket.
    pub async fn check(&self, user: &str) -> Result<Decision, RedisError> {
        Ok(match self.take(user, 1).await? {
            Lease::Granted(_) => Decision::Allowed,
            Lease::Limited { retry_after_ms } => Decision::Limited { retry_after_ms },
        })
    }

    /// Takes up to `want` tokens from `user`'s bucket at once (at least one, or none): a
    /// caller spends them locally, so a steady sender costs one Redis round trip per
    /// `want` actions instead of one per action.
    pub async fn take(&self, user: &str, want: u32) -> Result<Lease, RedisError> {
        self.take_between(user, 1, want).await
    }

    /// Takes at least `least` and up to `most` tokens from `user`'s bucket, or none: an
    /// action that costs `least` tokens, plus some to spend locally on the next ones. A
    /// `least` above the burst is taken as the burst (a full bucket always suffices).
    pub async fn take_between(
        &self,
        user: &str,
        least: u32,
        most: u32,
    ) -> Result<Lease, RedisError> {
        let key = format!("{}rl:{}:{user}", self.prefix, self.action);
        let least = least.max(1);
        let args = vec![
            self.rate_per_sec.to_string(),
            self.burst.to_string(),
            least.to_string(),
            most.max(least).to_string(),
        ];
        let reply: Vec<i64> = self.take.run(&self.client, vec![key], args).await?;
        let (granted, wait) = (reply.first().copied(), reply.get(1).copied());
        Ok(match (granted, wait) {
            (Some(granted), _) if granted >= 1 => {
                Lease::Granted(u32::try_from(granted).unwrap_or(1))
            }
            (_, Some(wait)) => Lease::Limited {
                retry_after_ms: u64::try_from(wait).unwrap_or(1).max(1),
            },
            _ => return Err(RedisError::Reply(format!("take: {reply:?}"))),
        })
    }
}

/// What [`RateLimiter::take`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This many tokens (at least the fewest asked for).
    Granted(u32),
    /// None; the fewest asked for will be there in this many milliseconds.
    Limited { retry_after_ms: u64 },
}

/// KEYS: bucket. ARGV: rate per second, burst, fewest tokens to take, most tokens wanted.
/// Returns {tokens taken (whole tokens, between the two, or 0), milliseconds until the
/// fewest are there when none were taken}.
const TAKE: &str = "
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local least, want = math.min(tonumber(ARGV[3]), burst), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local granted = math.min(want, math.floor(tokens))
local wait = 0
if granted >= least then
  tokens = tokens - granted
else
  granted = 0
  wait = math.ceil((least - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return { granted, wait }
";
