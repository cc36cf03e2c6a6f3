//! When sockets must compare what they sent with their inboxes, for the whole gateway.
//!
//! RePublish is done by the `INBOX` leader only, asynchronously: items in flight when a
//! leader dies are stored but never republished, and a lost *last* item leaves no gap for
//! the sequence chain to see (../shared/NATS-NOTES.md). The same happens to this gateway
//! when its NATS connection drops, when NATS drops items for a slow subscriber, and in
//! the moment after a socket subscribes (interest reaches the stream leader's server a
//! little later). So the inboxes' newest sequences are read, in batches of up to 1,000
//! users per request (`super::reads`), and every socket that has sent less is told to
//! fetch the rest:
//! - users whose first socket opened a second ago;
//! - every user here, every `every` (30 s by default);
//! - every user here, a second after an `INBOX` leader-elected advisory, this gateway's
//!   own NATS reconnect, or a slow-consumer event on the live subscriptions (triggers
//!   within that second are coalesced into one round that runs after them all).
//!
//! A round whose read fails (mid-election) is tried again a second later.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use async_nats::Event;
use futures_util::{FutureExt, StreamExt};
use natter_fabric::subjects;
use tokio::sync::{broadcast, mpsc};

use super::{LiveHub, mailbox::Live, reads::Reads};
use tokio_util::sync::CancellationToken;

/// How long after opening a socket's inbox is checked again, and how long a trigger
/// waits for the new leader to republish what it can.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the reconciler looks for users that are due (a socket is checked between
/// `SETTLE` and `SETTLE + STEP` after it opened).
const STEP: Duration = Duration::from_millis(100);

/// Users whose sockets just opened, to check a second later.
#[derive(Clone)]
pub(crate) struct Opened {
    tx: mpsc::UnboundedSender<(Instant, String)>,
}

impl Opened {
    pub fn note(&self, user: &str) {
        let _ = self.tx.send((Instant::now(), user.to_owned()));
    }
}

/// Starts the reconciler; returns where to note newly opened sockets.
pub(crate) async fn start(
    nats: &async_nats::Client,
    hub: LiveHub,
    reads: Reads,
    events: broadcast::Receiver<Event>,
    every: Duration,
    stop: CancellationToken,
) -> Result<Opened, async_nats::SubscribeError> {
    let advisories = nats.subscribe(subjects::INBOX_LEADER_ELECTED).await?;
    let (tx, opened) = mpsc::unbounded_channel();
    tokio::spawn(run(hub, reads, advisories, events, opened, every, stop));
    Ok(Opened { tx })
}

async fn run(
    hub: LiveHub,
    reads: Reads,
    mut advisories: async_nats::Subscriber,
    mut events: broadcast::Receiver<Event>,
    mut opened: mpsc::UnboundedReceiver<(Instant, String)>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut step = tokio::time::interval(STEP);
    step.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full = Instant::now();
    // A trigger that asks for every user, and when it came.
    let mut everyone_since: Option<Instant> = None;
    let mut recent: Vec<(Instant, String)> = Vec::new();
    // Users whose check failed, and when to try them again.
    let mut retry: HashSet<String> = HashSet::new();
    let mut retry_at = Instant::now();
    loop {
        let reason = tokio::select! {
            _ = stop.cancelled() => return,
            _ = step.tick() => None,
            Some((at, user)) = opened.recv() => {
                recent.push((at, user));
                continue;
            }
            Some(_) = advisories.next() => Some("inbox leader elected"),
            event = events.recv() => match event {
                Ok(Event::Connected) => Some("NATS reconnected"),
                // Dropped read answers time their read out and it is tried again; only
                // dropped live items need a round.
                Ok(Event::SlowConsumer(sid)) if sid == reads.answers_sid() => {
                    metrics::counter!("natter_gateway_read_answers_dropped_total").increment(1);
                    continue;
                }
                Ok(Event::SlowConsumer(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    Some("slow consumer")
                }
                Ok(Event::Disconnected) => {
                    metrics::counter!("natter_gateway_nats_disconnects_total").increment(1);
                    continue;
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if let Some(reason) = reason {
            metrics::counter!("natter_gateway_resync_triggers_total", "reason" => reason)
                .increment(1);
            tracing::info!(reason, "re-checking every socket's inbox");
            everyone_since.get_or_insert(Instant::now());
            while advisories.next().now_or_never().flatten().is_some() {}
            continue;
        }
        // Every step: who is due.
        let mut due: HashSet<String> = if Instant::now() >= retry_at {
            std::mem::take(&mut retry)
        } else {
            HashSet::new()
        };
        let everyone =
            everyone_since.is_some_and(|t| t.elapsed() >= SETTLE) || last_full.elapsed() >= every;
        if everyone {
            everyone_since = None;
            last_full = Instant::now();
            due.extend(hub.sockets().into_iter().map(|(user, _)| user));
            recent.retain(|(at, _)| at.elapsed() < SETTLE);
        } else {
            let (ready, waiting): (Vec<_>, Vec<_>) =
                recent.drain(..).partition(|(at, _)| at.elapsed() >= SETTLE);
            recent = waiting;
            due.extend(ready.into_iter().map(|(_, user)| user));
        }
        if due.is_empty() {
            continue;
        }
        let users: Vec<String> = due.into_iter().collect();
        match reads.newest_of(&users).await {
            Ok(newest) => {
                let mut behind = 0;
                for (user, seq) in newest {
                    for mailbox in hub.sockets_of(&user) {
                        if seq > mailbox.sent() {
                            behind += 1;
                            mailbox.push(Live::Newest(seq));
                        }
                    }
                }
                metrics::counter!("natter_gateway_reconciled_users_total")
                    .increment(users.len() as u64);
                if behind > 0 {
                    tracing::info!(behind, "sockets behind their inbox; they fetch the rest");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, users = users.len(), "inbox check failed; retrying");
                retry.extend(users);
                // Jittered: a leader election fails every gateway's check at once.
                retry_at = Instant::now() + natter_fabric::retry::jittered(SETTLE);
            }
        }
    }
}
