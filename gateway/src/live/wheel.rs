//! Keepalive ticks for every socket from one timer.
//!
//! A timer per socket is a timer entry and a wakeup per socket per period, and memory in
//! every socket's task. Here one task walks [`SLOTS`] slots, one each `period / SLOTS`;
//! each socket waits on the slot it was given when it opened (round robin), so the
//! sockets' pings are spread over the period instead of all at once. A slot is a `watch`
//! counter, so a tick that comes while its socket is busy is not missed: the socket sees
//! it as soon as it waits again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How many groups the sockets' ticks are spread over.
pub(crate) const SLOTS: usize = 64;

/// The gateway's keepalive timer.
#[derive(Clone)]
pub(crate) struct Wheel {
    slots: Arc<[watch::Sender<u64>]>,
    next: Arc<AtomicUsize>,
}

/// One socket's place on the wheel.
pub(crate) struct Slot {
    ticks: watch::Receiver<u64>,
    #[cfg(test)]
    index: usize,
}

impl Wheel {
    /// Starts turning: every socket's slot comes up once per `period`, until `stop`.
    pub fn start(period: Duration, stop: CancellationToken) -> Self {
        let wheel = Self {
            slots: (0..SLOTS).map(|_| watch::Sender::new(0)).collect(),
            next: Arc::default(),
        };
        let slots = wheel.slots.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / SLOTS as u32);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for index in (0..SLOTS).cycle() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => slots[index].send_modify(|n| *n += 1),
                }
            }
        });
        wheel
    }

    pub fn slot(&self) -> Slot {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % SLOTS;
        let mut ticks = self.slots[index].subscribe();
        ticks.mark_unchanged();
        Slot {
            ticks,
            #[cfg(test)]
            index,
        }
    }
}

impl Slot {
    /// Resolves when this slot has come up since the last time it did (at once if that
    /// happened while the socket was busy); pending forever once the wheel stops.
    pub async fn tick(&mut self) {
        if self.ticks.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_slot_comes_up_once_a_period() {
        let period = Duration::from_secs(SLOTS as u64);
        let wheel = Wheel::start(period, CancellationToken::new());
        let mut slots: Vec<Slot> = (0..3).map(|_| wheel.slot()).collect();
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
        // A tick while the socket was busy is not lost.
        tokio::time::sleep(period * 2).await;
        let busy = tokio::time::Instant::now();
        slots[2].tick().await;
        assert_eq!(busy.elapsed(), Duration::ZERO, "seen at once");
    }
}
