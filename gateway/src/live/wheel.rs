//! Keepalive ticks for every socket from one timer.
//!
//! A timer per socket is a timer entry and a wakeup per socket per period, and memory in
//! every socket's task. Here one task walks [`SLOTS`] slots, one each `period / SLOTS`;
//! each socket waits on the slot it was given when it opened (round robin), so the
//! sockets' pings are spread over the period instead of all at once. A tick that comes
//! while its socket is busy is missed, and the next one comes a period later: keepalive
//! tolerates that (a socket is dropped only after three silent periods).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

/// How many groups the sockets' ticks are spread over.
pub(crate) const SLOTS: usize = 64;

/// The gateway's keepalive timer.
#[derive(Clone)]
pub(crate) struct Wheel {
    slots: Arc<[Notify]>,
    next: Arc<AtomicUsize>,
}

/// One socket's place on the wheel.
pub(crate) struct Slot {
    slots: Arc<[Notify]>,
    index: usize,
}

impl Wheel {
    /// Starts turning: every socket's slot comes up once per `period`, until `stop`.
    pub fn start(period: Duration, mut stop: watch::Receiver<bool>) -> Self {
        let wheel = Self {
            slots: (0..SLOTS).map(|_| Notify::new()).collect(),
            next: Arc::default(),
        };
        let slots = wheel.slots.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / SLOTS as u32);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for index in (0..SLOTS).cycle() {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => slots[index].notify_waiters(),
                }
            }
        });
        wheel
    }

    pub fn slot(&self) -> Slot {
        Slot {
            slots: self.slots.clone(),
            index: self.next.fetch_add(1, Ordering::Relaxed) % SLOTS,
        }
    }
}

impl Slot {
    /// Resolves the next time this slot comes up.
    pub async fn tick(&self) {
        self.slots[self.index].notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_slot_comes_up_once_a_period() {
        let (_stop, stopped) = watch::channel(false);
        let period = Duration::from_secs(SLOTS as u64);
        let wheel = Wheel::start(period, stopped);
        let slots: Vec<Slot> = (0..3).map(|_| wheel.slot()).collect();
        assert_eq!(
            slots.iter().map(|s| s.index).collect::<Vec<_>>(),
            [0, 1, 2],
            "handed out in turn"
        );
        let started = tokio::time::Instant::now();
        slots[2].tick().await;
        assert!(
            started.elapsed() <= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let again = tokio::time::Instant::now();
        slots[2].tick().await;
        assert_eq!(again.elapsed(), period, "then once a period");
    }
}
