//! Per-user rate limits: a token bucket per (action, user) in Redis, refilled at `rate`
//! tokens a second up to `burst`, taken atomically by one script. All gateways share the
//! bucket, so a user cannot multiply their allowance by opening sockets on several.
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
        let key = format!("{}rl:{}:{user}", self.prefix, self.action);
        let args = vec![self.rate_per_sec.to_string(), self.burst.to_string()];
        let wait: i64 = self.take.run(&self.client, vec![key], args).await?;
        Ok(match u64::try_from(wait) {
            Ok(0) | Err(_) => Decision::Allowed,
            Ok(retry_after_ms) => Decision::Limited { retry_after_ms },
        })
    }
}

/// KEYS: bucket. ARGV: rate per second, burst. Returns 0 when a token was taken, else the
/// milliseconds until one is there.
const TAKE: &str = "
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
";
