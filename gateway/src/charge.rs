//! What each client action costs against its user's one token bucket, and taking it.
//!
//! Every frame that writes or fans out is charged before any work is done: one bucket per
//! user in Redis (shared by all their sockets on all gateways, refilled at
//! `limits.send_per_sec` up to `limits.send_burst`), one [cost table](cost_of). A frame
//! that costs nothing (`ack`, `ping`) is never refused; the others get
//! `error{rate_limited, retry_after_ms}` and did nothing.
//!
//! A socket takes tokens from Redis a few at a time and spends them locally (one round
//! trip per [`LEASE`] tokens, not one per frame). When Redis does not answer, the socket's
//! own bucket with the same rate and burst is the floor: chat goes on through a Redis
//! outage, and one socket still cannot flood (a user's sockets are bounded per gateway by
//! `limits.max_sockets_per_user` meanwhile).
//!
//! Creating groups has a second, daily bucket (`limits.groups_per_day`): a group puts an
//! item into the inbox of each member, people who never agreed to it.

use natter_schemas::{ClientFrame, Target};
use tokio::time::Instant;

use crate::App;

/// Tokens a socket takes from Redis at once beyond what a frame costs.
pub(crate) const LEASE: u32 = 4;

/// What `frame` costs in tokens: 1 for an action that stores or relays one thing, more
/// for one that reaches many inboxes or asks for a lot.
pub(crate) fn cost_of(frame: &ClientFrame) -> u32 {
    let per = |n: usize, each: usize| u32::try_from(n.div_ceil(each)).unwrap_or(u32::MAX);
    match frame {
        ClientFrame::Ack(_) | ClientFrame::Ping(_) => 0,
        ClientFrame::Send(send) => match Target::parse(&send.to) {
            // A group message is stored once per member by fanout.
            Ok(Target::Group(_)) => 4,
            _ => 1,
        },
        ClientFrame::Typing(typing) if typing.conv.starts_with("group:") => 4,
        ClientFrame::Typing(_) | ClientFrame::Read(_) => 1,
        ClientFrame::History(_) => 2,
        ClientFrame::PresenceSubscribe(subscribe) => 1 + per(subscribe.users.len(), 16),
        // An inbox item for every member told.
        ClientFrame::GroupCreate(create) => 10 + per(create.members.len(), 16),
        ClientFrame::GroupAdd(change) | ClientFrame::GroupRemove(change) => {
            2 + per(change.members.len(), 16)
        }
        ClientFrame::GroupLeave(_) => 2,
    }
}

/// A socket's tokens: leased from the user's bucket in Redis, and its own bucket for when
/// Redis does not answer.
pub(crate) struct Wallet {
    leased: u32,
    local: f32,
    refilled: Instant,
}

impl Default for Wallet {
    fn default() -> Self {
        Self {
            leased: 0,
            local: f32::MAX,
            refilled: Instant::now(),
        }
    }
}

/// Refused: try again in this many milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub retry_after_ms: u64,
}

impl Wallet {
    /// Takes `cost` tokens of `user`'s, or says when to try again.
    pub(crate) async fn pay(&mut self, app: &App, user: &str, cost: u32) -> Result<(), Limited> {
        let Some(limiter) = app.action_limit.as_ref() else {
            return Ok(());
        };
        if cost == 0 {
            return Ok(());
        }
        if self.leased >= cost {
            self.leased -= cost;
            return Ok(());
        }
        use natter_redis::rate_limit::Lease;
        match limiter.take_between(user, cost, cost + LEASE).await {
            Ok(Lease::Granted(n)) => {
                // Fewer than `cost` when it was more than a full bucket (taken as the burst).
                self.leased += n.saturating_sub(cost);
                Ok(())
            }
            Ok(Lease::Limited { retry_after_ms }) => Err(Limited { retry_after_ms }),
            Err(err) => {
                metrics::counter!("natter_gateway_rate_limit_unchecked_total").increment(1);
                tracing::debug!(error = %err, "rate limit not checked in Redis; the socket's own");
                let limits = &app.config.limits;
                self.pay_locally(cost, limits.send_per_sec as f32, limits.send_burst as f32)
            }
        }
    }

    /// The socket's own token bucket, the floor while Redis is away.
    fn pay_locally(&mut self, cost: u32, rate: f32, burst: f32) -> Result<(), Limited> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f32();
        self.refilled = now;
        self.local = (self.local.min(burst) + elapsed * rate).min(burst);
        let cost = cost as f32;
        if self.local >= cost {
            self.local -= cost;
            return Ok(());
        }
        let wait = (cost - self.local) / rate.max(f32::MIN_POSITIVE);
        Err(Limited {
            retry_after_ms: ((wait * 1000.0).ceil() as u64).max(1),
        })
    }
}

/// Takes one group creation from `user`'s daily allowance. Fails open when Redis does not
/// answer (the action bucket's floor still holds).
pub(crate) async fn new_group(app: &App, user: &str) -> Result<(), Limited> {
    take_exactly(app.group_limit.as_ref(), user, 1, "group creation cap").await
}

/// Charges an HTTP request of `user` (`GET /v1/inbox`, an upload, message info) to their
/// bucket. There is no socket to keep a local floor in, so it fails open when Redis does
/// not answer; the connection caps still bound what one client can do meanwhile.
pub(crate) async fn pay_http(app: &App, user: &str, cost: u32) -> Result<(), Limited> {
    take_exactly(app.action_limit.as_ref(), user, cost, "rate limit").await
}

/// Takes `mib` from `user`'s daily upload quota. Fails open when Redis does not answer
/// (the media store's own bound still holds).
pub(crate) async fn upload(app: &App, user: &str, mib: u32) -> Result<(), Limited> {
    take_exactly(app.upload_quota.as_ref(), user, mib, "upload quota").await
}

/// Takes `cost` tokens of `user`'s from `limiter` (none configured: allowed), failing open
/// (counted) when Redis does not answer.
async fn take_exactly(
    limiter: Option<&natter_redis::rate_limit::RateLimiter>,
    user: &str,
    cost: u32,
    what: &str,
) -> Result<(), Limited> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    match limiter.take_between(user, cost, cost).await {
        Ok(natter_redis::rate_limit::Lease::Limited { retry_after_ms }) => {
            Err(Limited { retry_after_ms })
        }
        Ok(_) => Ok(()),
        Err(err) => {
            metrics::counter!("natter_gateway_rate_limit_unchecked_total").increment(1);
            tracing::debug!(error = %err, "{what} not checked");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use natter_schemas::ClientFrame;

    use super::*;

    fn cost(json: &str) -> u32 {
        cost_of(&ClientFrame::parse(json).unwrap())
    }

    #[test]
    fn frames_cost_by_how_far_they_reach() {
        assert_eq!(cost(r#"{"type":"ack","seq":1}"#), 0);
        assert_eq!(cost(r#"{"type":"ping"}"#), 0);
        let text = r#""body":{"kind":"text","text":"hi"}"#;
        assert_eq!(
            cost(&format!(
                r#"{{"type":"send","id":"a","to":"user:bob",{text}}}"#
            )),
            1
        );
        assert_eq!(
            cost(&format!(
                r#"{{"type":"send","id":"a","to":"group:g1",{text}}}"#
            )),
            4
        );
        assert_eq!(
            cost(r#"{"type":"typing","conv":"group:g1","state":"start"}"#),
            4
        );
        assert_eq!(
            cost(r#"{"type":"typing","conv":"dm:a:b","state":"start"}"#),
            1
        );
        let users: Vec<String> = (0..256).map(|i| format!("\"u{i}\"")).collect();
        let subscribe = format!(
            r#"{{"type":"presence_subscribe","users":[{}]}}"#,
            users.join(",")
        );
        assert_eq!(cost(&subscribe), 17);
        let create = format!(
            r#"{{"type":"group_create","name":"g","members":[{}]}}"#,
            users.join(",")
        );
        assert_eq!(cost(&create), 26);
    }

    #[test]
    fn the_socket_s_own_bucket_refills_at_the_rate_up_to_the_burst() {
        let mut wallet = Wallet::default();
        for _ in 0..10 {
            assert_eq!(wallet.pay_locally(1, 5.0, 10.0), Ok(()));
        }
        let Err(Limited { retry_after_ms }) = wallet.pay_locally(1, 5.0, 10.0) else {
            panic!("an empty bucket refused nothing");
        };
        assert!((150..=200).contains(&retry_after_ms), "{retry_after_ms}");
        wallet.refilled -= std::time::Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(wallet.pay_locally(1, 5.0, 10.0), Ok(()));
        }
        assert!(
            wallet.pay_locally(1, 5.0, 10.0).is_err(),
            "never beyond the burst"
        );
    }
}
