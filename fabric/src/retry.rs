//! How Natter waits before trying again: exponential waits with jitter, from `backon`.
//!
//! Jitter is the point. A stream leader election, a node restart or a KV bucket's watch
//! breaking reaches every gateway and worker at the same moment; retries at fixed or
//! doubling times would then come back at the same moments too, a thundering herd each
//! round. Every wait here is drawn at random between the step and twice the step.

use std::time::Duration;

pub use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

/// Waits that start at `first` and double up to `longest`, jittered, without end (the
/// caller decides when to stop). An iterator: `waits.next()` is the next wait.
pub fn waits(first: Duration, longest: Duration) -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(longest)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sleeps for the next of `waits` (from [`waits`] or [`after_lost_race`], which never
/// end).
pub async fn wait_next(waits: &mut backon::ExponentialBackoff) {
    tokio::time::sleep(waits.next().expect("waits without end")).await;
}

/// As [`waits`], for `backon`'s `retry`; the caller bounds it (by a deadline in `when`,
/// so the time its attempts take counts too).
pub fn exponential(first: Duration, longest: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(longest)
        .with_jitter()
        .without_max_times()
}

/// Waits between rounds of a compare-and-set lost to another writer: short, so a user's
/// action is not held up, and jittered, so two writers that collided do not collide again.
pub fn after_lost_race() -> backon::ExponentialBackoff {
    waits(Duration::from_millis(2), Duration::from_millis(100))
}

/// One wait between `step` and twice `step`, at random.
pub fn jittered(step: Duration) -> Duration {
    waits(step, step).next().expect("waits without end")
}

/// The wait before watching a KV bucket again after its watch broke: 0.5–1 s, so the
/// processes whose watches one leader election broke do not all come back at once.
pub fn before_rewatch() -> Duration {
    jittered(Duration::from_millis(500))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_their_bound_and_are_jittered() {
        let drawn: Vec<Duration> = waits(Duration::from_millis(10), Duration::from_millis(80))
            .take(50)
            .collect();
        assert_eq!(drawn.len(), 50, "no end of waits");
        // Each wait lies between its step and twice it; steps stop at the bound.
        for (i, wait) in drawn.iter().enumerate() {
            let step = Duration::from_millis(10 * 2u64.pow(i.min(3) as u32));
            assert!(*wait >= step && *wait <= step * 2, "wait {i}: {wait:?}");
        }
        let late = &drawn[10..];
        assert!(
            late.iter().any(|w| *w != late[0]),
            "jittered waits differ: {late:?}"
        );
    }
}
