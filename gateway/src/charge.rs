//! What each client action costs against its user's one token bucket, and taking it.
//!
//! Every frame that writes or fans out is charged before any work is done: one bucket per
//! user in Redis (shared by all their sockets on all gateways, refilled at
//! `limits.send_per_sec` up to `limits.send_burst`), one [cost table](cost_of). A frame
//! that costs nothing (`ack`, `ping`) is never refused; the others get
//! `error{rate_limited, retry_after_ms}` and did nothing.
//!
//! A socket takes tokens from Redis a few at a time and spends them locally (one round
//! trip per [`LEASE`] tokens, not one per frame). When Redis does not answer, the
//! gateway's own bucket for the user, with the same rate and burst, is the floor
//! ([`floor`]): chat goes on through a Redis outage, and a user still cannot flood, over
//! HTTP or by reconnecting either (across gateways, each gateway gives one bucket).
//!
//! Creating groups has a second, daily bucket (`limits.groups_per_day`): a group puts an
//! item into the inbox of each member, people who never agreed to it. Uploads have a
//! third, in MiB a day (`media.mib_per_day`). Each has its floor too.

mod floor;

use natter_redis::rate_limit::{Lease, RateLimiter};
use natter_schemas::{ClientFrame, Target};

use crate::App;
use floor::Floor;

/// Tokens a socket takes from Redis at once beyond what a frame costs.
pub(crate) const LEASE: u32 = 4;

/// What `frame` costs in tokens: 1 for an action that stores or relays one thing, more
/// for one that reaches many inboxes or asks for a lot. A group message or typing notice
/// costs by the group's size (`group_size`: members, as cached), since it is stored or
/// relayed once per member.
pub(crate) fn cost_of(frame: &ClientFrame, group_size: impl Fn(&str) -> Option<usize>) -> u32 {
    let per = |n: usize, each: usize| u32::try_from(n.div_ceil(each)).unwrap_or(u32::MAX);
    let group =
        |gid: &str, each: usize| 1u32.saturating_add(per(group_size(gid).unwrap_or(1), each));
    match frame {
        ClientFrame::Ack(_) | ClientFrame::Ping(_) => 0,
        ClientFrame::Send(send) => match Target::parse(&send.to) {
            // Stored once per member by fanout.
            Ok(Target::Group(gid)) => group(&gid, 64),
            _ => 1,
        },
        // Relayed to every member online, stored nowhere.
        ClientFrame::Typing(typing) => match typing.conv.strip_prefix("group:") {
            Some(gid) => group(gid, 128),
            None => 1,
        },
        ClientFrame::Read(_) => 1,
        // In a group, 1 per 64 members more once the group is known (`pay_more`).
        ClientFrame::Edit(_) | ClientFrame::Delete(_) | ClientFrame::React(_) => 1,
        ClientFrame::Block(_) | ClientFrame::Unblock(_) | ClientFrame::Blocks(_) => 1,
        ClientFrame::Settings(_) | ClientFrame::Mute(_) | ClientFrame::Unmute(_) => 1,
        ClientFrame::History(_) => 2,
        ClientFrame::Conversations(request) => chat_list_cost(
            request
                .limit
                .unwrap_or(crate::frames::conversations::DEFAULT_LIMIT),
        ),
        ClientFrame::PresenceSubscribe(subscribe) => {
            1u32.saturating_add(per(subscribe.users.len(), 16))
        }
        // An inbox item for every member told.
        ClientFrame::GroupCreate(create) => 10u32.saturating_add(per(create.members.len(), 16)),
        ClientFrame::GroupAdd(change) | ClientFrame::GroupRemove(change) => {
            2u32.saturating_add(per(change.members.len(), 16))
        }
        ClientFrame::GroupLeave(_) => 2,
    }
}

/// A chat list page of `limit` conversations: 2, and 1 more per 100 asked for.
pub(crate) fn chat_list_cost(limit: u32) -> u32 {
    2 + limit / 100
}

/// A limit: each user's bucket in Redis, shared by every gateway, and this gateway's
/// floor for when Redis does not answer.
pub(crate) struct Limit {
    redis: RateLimiter,
    floor: Floor,
}

impl Limit {
    /// `redis` refills at `rate` tokens a second up to `burst`; the floor does the same.
    pub(crate) fn new(redis: RateLimiter, rate: f64, burst: f64) -> Self {
        Self {
            redis,
            floor: Floor::new(rate, burst),
        }
    }

    /// Takes between `least` and `most` tokens of `user`'s in Redis; `least` from the
    /// floor (counted) when Redis does not answer.
    async fn take_between(&self, user: &str, least: u32, most: u32) -> Result<u32, Limited> {
        match self.redis.take_between(user, least, most).await {
            Ok(Lease::Granted(n)) => Ok(n),
            Ok(Lease::Limited { retry_after_ms }) => Err(Limited { retry_after_ms }),
            Err(err) => {
                metrics::counter!("natter_gateway_rate_limit_unchecked_total").increment(1);
                tracing::debug!(error = %err, "limit not checked in Redis; the gateway's floor");
                self.floor.take(user, least).map(|()| least)
            }
        }
    }
}

/// A socket's tokens leased from its user's bucket in Redis.
#[derive(Default)]
pub(crate) struct Wallet {
    leased: u32,
}

/// Refused: try again in this many milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub retry_after_ms: u64,
}

impl Wallet {
    /// Takes `cost` tokens of `user`'s, or says when to try again.
    pub(crate) async fn pay(&mut self, app: &App, user: &str, cost: u32) -> Result<(), Limited> {
        let Some(limit) = app.action_limit.as_ref() else {
            return Ok(());
        };
        self.spend(cost, |least, most| limit.take_between(user, least, most))
            .await
    }

    /// Spends `cost` from what is leased, or takes between `cost` and `cost + LEASE`
    /// with `take` (the user's bucket) and keeps what is left over.
    async fn spend<F: Future<Output = Result<u32, Limited>>>(
        &mut self,
        cost: u32,
        take: impl FnOnce(u32, u32) -> F,
    ) -> Result<(), Limited> {
        if cost == 0 {
            return Ok(());
        }
        if self.leased >= cost {
            self.leased -= cost;
            return Ok(());
        }
        let taken = take(cost, cost + LEASE).await?;
        // Fewer than `cost` when it was more than a full bucket (taken as the burst).
        self.leased += taken.saturating_sub(cost);
        Ok(())
    }
}

/// Takes one group creation from `user`'s daily allowance.
pub(crate) async fn new_group(app: &App, user: &str) -> Result<(), Limited> {
    take_exactly(app.group_limit.as_ref(), user, 1).await
}

/// Charges an HTTP request of `user` (`GET /v1/inbox`, an upload, message info) to their
/// bucket.
pub(crate) async fn pay_http(app: &App, user: &str, cost: u32) -> Result<(), Limited> {
    take_exactly(app.action_limit.as_ref(), user, cost).await
}

/// Charges what a frame's cost could not know when it was read: a change to a group
/// message costs 1 per 64 members on top, once the message's group is known.
pub(crate) async fn pay_more(app: &App, user: &str, cost: u32) -> Result<(), Limited> {
    take_exactly(app.action_limit.as_ref(), user, cost).await
}

/// Takes `mib` from `user`'s daily upload quota.
pub(crate) async fn upload(app: &App, user: &str, mib: u32) -> Result<(), Limited> {
    take_exactly(app.upload_quota.as_ref(), user, mib).await
}

/// Takes exactly `cost` tokens of `user`'s from `limit` (none configured: allowed).
async fn take_exactly(limit: Option<&Limit>, user: &str, cost: u32) -> Result<(), Limited> {
    match limit {
        Some(limit) => limit.take_between(user, cost, cost).await.map(drop),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use natter_schemas::ClientFrame;

    use super::*;

    /// A bucket of `tokens` that grants up to what is asked and what it holds.
    struct Bucket {
        tokens: RefCell<u32>,
        asked: RefCell<Vec<(u32, u32)>>,
    }

    impl Bucket {
        fn new(tokens: u32) -> Self {
            Self {
                tokens: RefCell::new(tokens),
                asked: RefCell::default(),
            }
        }

        async fn take(&self, least: u32, most: u32) -> Result<u32, Limited> {
            self.asked.borrow_mut().push((least, most));
            let mut tokens = self.tokens.borrow_mut();
            if *tokens < least {
                return Err(Limited {
                    retry_after_ms: 100,
                });
            }
            let taken = most.min(*tokens);
            *tokens -= taken;
            Ok(taken)
        }
    }

    #[tokio::test]
    async fn a_wallet_takes_a_lease_and_spends_it_before_asking_the_bucket_again() {
        let bucket = Bucket::new(20);
        let mut wallet = Wallet::default();
        let pay = async |wallet: &mut Wallet, cost| {
            wallet
                .spend(cost, |least, most| bucket.take(least, most))
                .await
        };
        // Free frames never reach the bucket.
        assert_eq!(pay(&mut wallet, 0).await, Ok(()));
        assert!(bucket.asked.borrow().is_empty());
        // The first frame takes its cost and a lease; the next ones spend the lease.
        assert_eq!(pay(&mut wallet, 1).await, Ok(()));
        assert_eq!(*bucket.asked.borrow(), [(1, 1 + LEASE)]);
        for _ in 0..LEASE {
            assert_eq!(pay(&mut wallet, 1).await, Ok(()));
        }
        assert_eq!(
            bucket.asked.borrow().len(),
            1,
            "the lease was spent locally"
        );
        // A frame dearer than what is left asks again, for its whole cost.
        assert_eq!(pay(&mut wallet, 3).await, Ok(()));
        assert_eq!(bucket.asked.borrow()[1], (3, 3 + LEASE));
        assert_eq!(*bucket.tokens.borrow(), 20 - 2 * (1 + LEASE) - 2);
    }

    #[tokio::test]
    async fn a_refused_frame_spends_nothing_and_the_lease_never_outgrows_the_bucket() {
        let bucket = Bucket::new(3);
        let mut wallet = Wallet::default();
        let pay = async |wallet: &mut Wallet, cost| {
            wallet
                .spend(cost, |least, most| bucket.take(least, most))
                .await
        };
        assert_eq!(
            pay(&mut wallet, 5).await,
            Err(Limited {
                retry_after_ms: 100
            })
        );
        assert_eq!(*bucket.tokens.borrow(), 3, "refused: nothing taken");
        // Granted less than cost + LEASE: what is left after the cost is the lease.
        assert_eq!(pay(&mut wallet, 2).await, Ok(()));
        assert_eq!(wallet.leased, 1);
        assert_eq!(pay(&mut wallet, 1).await, Ok(()));
        assert_eq!(wallet.leased, 0);
        assert!(pay(&mut wallet, 1).await.is_err(), "the bucket is empty");
    }

    /// Group `g1024` has 1,024 members; any other group 3.
    fn cost(json: &str) -> u32 {
        let size = |gid: &str| Some(if gid == "g1024" { 1_024 } else { 3 });
        cost_of(&ClientFrame::parse(json).unwrap(), size)
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
            2
        );
        assert_eq!(
            cost(&format!(
                r#"{{"type":"send","id":"a","to":"group:g1024",{text}}}"#
            )),
            17
        );
        assert_eq!(
            cost(r#"{"type":"typing","conv":"group:g1","state":"start"}"#),
            2
        );
        assert_eq!(
            cost(r#"{"type":"typing","conv":"group:g1024","state":"start"}"#),
            9
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
}
