//! A gateway's own token bucket per user: the floor of a limit while Redis does not
//! answer.
//!
//! Per user, not per socket or request: reconnecting, or asking over HTTP instead, does not
//! give anyone a fresh bucket. A bucket that has refilled is the same as none, so full
//! buckets are swept out whenever the table has doubled since the last sweep: the table
//! holds the users who spent recently, not everyone ever seen.

use std::{collections::HashMap, sync::Mutex};

use tokio::time::Instant;

use super::Limited;

/// Fewest buckets before a sweep is worth it.
const SWEEP_FROM: usize = 1_024;

pub(crate) struct Floor {
    rate: f64,
    burst: f64,
    table: Mutex<Table>,
}

struct Table {
    buckets: HashMap<String, Bucket>,
    sweep_at: usize,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
    }
}

impl Floor {
    /// Buckets refilling at `rate` tokens a second up to `burst`.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                sweep_at: SWEEP_FROM,
            }),
        }
    }

    /// Takes `cost` tokens (at most a full bucket) from `user`'s bucket, or says when
    /// there will be enough.
    pub(crate) fn take(&self, user: &str, cost: u32) -> Result<(), Limited> {
        let now = Instant::now();
        let mut table = self.table.lock().expect("not poisoned");
        if table.buckets.len() >= table.sweep_at {
            let (rate, burst) = (self.rate, self.burst);
            table.buckets.retain(|_, bucket| {
                bucket.refill(now, rate, burst);
                bucket.tokens < burst
            });
            table.sweep_at = (table.buckets.len() * 2).max(SWEEP_FROM);
        }
        let bucket = match table.buckets.get_mut(user) {
            Some(bucket) => bucket,
            None => table.buckets.entry(user.to_owned()).or_insert(Bucket {
                tokens: self.burst,
                refilled: now,
            }),
        };
        bucket.refill(now, self.rate, self.burst);
        let cost = f64::from(cost).min(self.burst);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            return Ok(());
        }
        let wait = (cost - bucket.tokens) / self.rate.max(f64::MIN_POSITIVE);
        Err(Limited {
            retry_after_ms: ((wait * 1000.0).ceil() as u64).max(1),
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap().buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_user_s_bucket_refills_at_the_rate_up_to_the_burst_and_is_theirs_alone() {
        let floor = Floor::new(5.0, 10.0);
        for _ in 0..10 {
            assert_eq!(floor.take("ann", 1), Ok(()));
        }
        let Err(Limited { retry_after_ms }) = floor.take("ann", 1) else {
            panic!("an empty bucket refused nothing");
        };
        assert_eq!(retry_after_ms, 200);
        assert_eq!(
            floor.take("bob", 1),
            Ok(()),
            "another user's bucket is full"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..10 {
            assert_eq!(floor.take("ann", 1), Ok(()));
        }
        assert!(floor.take("ann", 1).is_err(), "never beyond the burst");
        assert_eq!(
            floor.take("carl", 50),
            Ok(()),
            "more than a bucket: all of it"
        );
        assert!(floor.take("carl", 1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_swept_once_the_table_has_grown() {
        let floor = Floor::new(1.0, 2.0);
        for i in 0..SWEEP_FROM - 1 {
            floor.take(&format!("u{i}"), 1).unwrap();
        }
        floor.take("spender", 2).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        // The table is full enough, and everyone else has refilled: this take sweeps
        // them out; the spender's bucket (half refilled) stays, and is spent again.
        floor.take("spender", 1).unwrap();
        floor.take("late", 1).unwrap();
        assert_eq!(floor.len(), 2);
        assert!(
            floor.take("spender", 1).is_err(),
            "still empty after the sweep"
        );
    }
}
