//! Push: notifies users who have no device online that messages are waiting.
//!
//! The tail reader (`crate::tail`) hands every new inbox item to a [`Noter`]: a message
//! from someone else, for a user with no live socket (presence in Redis), is noted in the
//! push queue, which coalesces per user (see `natter_redis::push_queue`) and counts each
//! inbox sequence once, however often it is noted. A loop claims the notifications whose
//! window closed and hands each to the provider of each of the user's registered devices
//! (`natter_fabric::devices`).
//!
//! Providers: [`Webhook`] (an HTTP POST of JSON, signed with HMAC-SHA256, retried with
//! backoff) is the one shipped. APNs and FCM would be further [`Provider`] variants; they
//! need credentials this project cannot test here (an APNs key or certificate and team id
//! over HTTP/2 to api.push.apple.com; an FCM service account for OAuth2 tokens and the
//! HTTP v1 API), so devices may only register the kinds a deployment delivers.
//!
//! Pushes are best effort: a note Redis did not take is retried (up to
//! [`MAX_RETRYING`] notes wait), a notification whose every attempt failed is dropped
//! (counted). Only messages stored in the last [`MAX_AGE`] are noted, so a reader catching
//! up after downtime does not notify about the past. Message text goes into the payload
//! only when `include_text` is set.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{KeyInit, Mac};
use natter_fabric::{
    devices::{Devices, PushTarget},
    now_millis,
    settings::Settings,
    streams,
};
use natter_redis::push_queue::{Coalescing, NoteKind, Pending, PushQueue};
use natter_schemas::{Body, DeleteItem, MessageItem};
use serde::Serialize;

use crate::{SETUP_PATIENCE, WorkerError};
use tokio_util::sync::CancellationToken;

/// What a push worker needs beyond NATS.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub redis: natter_redis::RedisSettings,
    pub coalescing: Coalescing,
    /// Put message text in notifications (off: only who and how many).
    pub include_text: bool,
    pub webhook: Option<WebhookSettings>,
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `http://host:port/path` (plain HTTP: a relay next to the worker, or a test).
    pub url: String,
    /// Key of the `X-Natter-Signature` HMAC-SHA256 of each body.
    pub secret: String,
}

/// How often due notifications are claimed.
const CLAIM_EVERY: Duration = Duration::from_millis(250);
/// Notifications delivered at once.
const SEND_CONCURRENCY: usize = 16;
/// Attempts per notification and device, with doubling waits from `FIRST_BACKOFF`.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// One webhook call, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest text put in a notification.
const MAX_TEXT: usize = 200;
/// Messages older than this when read are not noted.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 60);
/// Notes waiting for Redis to come back; beyond this the oldest are dropped (counted).
pub const MAX_RETRYING: usize = 10_000;

/// Opens what notifying needs; returns the noter for the tail reader and the loop that
/// delivers due notifications.
pub async fn start(
    js: &jetstream::Context,
    replicas: usize,
    settings: &PushSettings,
    user_settings: Settings,
    stop: CancellationToken,
) -> Result<(Noter, crate::Task), WorkerError> {
    let redis = natter_redis::connect(&settings.redis).await?;
    let queue = PushQueue::new(redis, &settings.redis.prefix, settings.coalescing);
    let devices = streams::with_patience("devices bucket", SETUP_PATIENCE, || {
        Devices::open(js, replicas)
    })
    .await?;
    let provider = Provider::from_settings(settings);
    let noter = Noter {
        queue: queue.clone(),
        user_settings,
        include_text: settings.include_text,
        retrying: Arc::default(),
    };
    let send: crate::Task = Box::pin(send_loop(queue, devices, provider, stop));
    Ok((noter, send))
}

/// An inbox item as the noter sees it: whose inbox, at which sequence, and what.
#[derive(Debug, Clone)]
pub struct Note {
    pub user: String,
    pub seq: u64,
    pub noted: Noted,
}

/// What push cares about: a new message, or one deleted for everyone (a notification
/// waiting for it drops it). Edits and reactions are never pushed.
#[derive(Debug, Clone)]
pub enum Noted {
    Message(MessageItem),
    Deleted(DeleteItem),
}

impl Noted {
    fn sender_and_time(&self) -> (&str, u64) {
        match self {
            Self::Message(m) => (&m.from, m.ts),
            Self::Deleted(d) => (&d.from, d.ts),
        }
    }
}

/// Notes messages for offline users (see the module docs).
#[derive(Clone)]
pub struct Noter {
    queue: PushQueue,
    /// Muted conversations are not notified.
    user_settings: Settings,
    include_text: bool,
    retrying: Arc<Mutex<VecDeque<Note>>>,
}

impl Noter {
    /// Notes every recent message (or deletion) for someone other than its sender, after
    /// any notes still waiting for Redis. Returns when Redis answered or refused each.
    pub async fn note_all(&self, notes: Vec<Note>) {
        let now = now_millis();
        let mut fresh = Vec::new();
        for note in notes {
            let (from, ts) = note.noted.sender_and_time();
            if from == note.user || now.saturating_sub(ts) > MAX_AGE.as_millis() as u64 {
                continue;
            }
            // A mention is notified even in a muted conversation.
            if let Noted::Message(message) = &note.noted
                && !message.mentions.contains(&note.user)
                && self.muted(&note.user, &message.conv, now).await
            {
                metrics::counter!("natter_push_muted_total").increment(1);
                continue;
            }
            fresh.push(note);
        }
        let todo: Vec<Note> = {
            let mut retrying = self.retrying.lock().expect("push retry lock");
            retrying.drain(..).chain(fresh).collect()
        };
        if todo.is_empty() {
            return;
        }
        let texts: Vec<String> = todo
            .iter()
            .map(|n| match &n.noted {
                Noted::Message(m) => self.text_of(m),
                Noted::Deleted(_) => String::new(),
            })
            .collect();
        let notes: Vec<natter_redis::push_queue::Note> = todo
            .iter()
            .zip(&texts)
            .map(|(n, text)| {
                let (kind, id, conv, from) = match &n.noted {
                    Noted::Message(m) => (NoteKind::Message, &m.id, &m.conv, &m.from),
                    Noted::Deleted(d) => (NoteKind::Deleted, &d.id, &d.conv, &d.from),
                };
                natter_redis::push_queue::Note {
                    kind,
                    user: &n.user,
                    seq: n.seq,
                    id,
                    conv,
                    from,
                    text,
                }
            })
            .collect();
        match self.queue.note_all(&notes).await {
            Ok(queued) => {
                metrics::counter!("natter_push_noted_total").increment(queued);
            }
            Err(err) => {
                tracing::debug!(error = %err, "pushes not noted; will retry");
                metrics::counter!("natter_push_note_failures_total").increment(todo.len() as u64);
                let mut retrying = self.retrying.lock().expect("push retry lock");
                retrying.extend(todo);
                let over = retrying.len().saturating_sub(MAX_RETRYING);
                if over > 0 {
                    retrying.drain(..over);
                    metrics::counter!("natter_push_notes_dropped_total").increment(over as u64);
                }
            }
        }
    }

    /// Whether `user` muted `conv` (their settings as this worker's copy has them; when
    /// they cannot be read, not muted: a notification too many beats one lost).
    async fn muted(&self, user: &str, conv: &str, now: u64) -> bool {
        match self.user_settings.of(user).await {
            Ok(settings) => settings.muted_at(conv, now).is_some(),
            Err(err) => {
                tracing::debug!(error = %err, "settings unavailable; notifying");
                false
            }
        }
    }

    /// What a notification may say of `message`.
    fn text_of(&self, message: &MessageItem) -> String {
        match (&message.body, self.include_text) {
            (Body::Text { text }, true) => text.chars().take(MAX_TEXT).collect(),
            _ => String::new(),
        }
    }
}

/// Claims due notifications and delivers them.
async fn send_loop(
    queue: PushQueue,
    devices: Devices,
    provider: Provider,
    stop: CancellationToken,
) -> Result<(), WorkerError> {
    let mut tick = tokio::time::interval(CLAIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let due = match queue.claim_due().await {
            Ok(due) => due,
            Err(err) => {
                tracing::debug!(error = %err, "cannot claim pushes; Redis away?");
                continue;
            }
        };
        futures_util::stream::iter(due)
            .for_each_concurrent(SEND_CONCURRENCY, |pending| {
                deliver(&devices, &provider, pending)
            })
            .await;
    }
}

/// Sends one notification to every device of its user.
async fn deliver(devices: &Devices, provider: &Provider, pending: Pending) {
    let targets = match devices.of(&pending.user).await {
        Ok(targets) => targets,
        Err(err) => {
            tracing::warn!(error = %err, user = %pending.user, "push targets unreadable");
            return outcome("unreadable_targets");
        }
    };
    if targets.is_empty() {
        tracing::debug!(user = %pending.user, "no registered device to push to");
        return outcome("no_device");
    }
    for (device, target) in targets {
        let notification = Notification {
            user: &pending.user,
            device: &device,
            kind: &target.kind,
            token: &target.token,
            count: pending.count,
            conv: &pending.conv,
            from: &pending.from,
            text: (!pending.text.is_empty()).then_some(pending.text.as_str()),
            ts: now_millis(),
        };
        outcome(provider.send(&target, &notification).await);
    }
}

fn outcome(label: &'static str) {
    metrics::counter!("natter_push_notifications_total", "outcome" => label).increment(1);
}

/// The JSON a provider is given (and the webhook's body).
#[derive(Debug, Serialize)]
pub struct Notification<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub kind: &'a str,
    pub token: &'a str,
    /// Messages since the previous notification.
    pub count: u64,
    /// The latest message's conversation and sender.
    pub conv: &'a str,
    pub from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    pub ts: u64,
}

/// The providers this process delivers to.
pub enum Provider {
    Webhook(Webhook),
    /// None configured: notifications are counted and dropped.
    Nothing,
}

impl Provider {
    fn from_settings(settings: &PushSettings) -> Self {
        match &settings.webhook {
            Some(webhook) => Self::Webhook(Webhook {
                url: webhook.url.clone(),
                secret: webhook.secret.clone(),
            }),
            None => Self::Nothing,
        }
    }

    /// Delivers to one device; the outcome's metric label.
    async fn send(&self, target: &PushTarget, notification: &Notification<'_>) -> &'static str {
        match (self, target.kind.as_str()) {
            (Self::Webhook(webhook), "webhook") => webhook.send(notification).await,
            _ => "no_provider",
        }
    }
}

/// POSTs each notification as JSON to one URL, with
/// `X-Natter-Signature: sha256=<hex HMAC-SHA256 of the body>`, retrying connection
/// failures, 429 and 5xx with doubling, jittered waits (`natter_fabric::retry`).
pub struct Webhook {
    url: String,
    secret: String,
}

impl Webhook {
    async fn send(&self, notification: &Notification<'_>) -> &'static str {
        let body = Bytes::from(serde_json::to_vec(notification).expect("notifications serialize"));
        let signature = sign(self.secret.as_bytes(), &body);
        let mut waits = natter_fabric::retry::waits(FIRST_BACKOFF, FIRST_BACKOFF * 8);
        for attempt in 1..=ATTEMPTS {
            let call = post(&self.url, body.clone(), &signature);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(status)) if status.is_success() => return "sent",
                Ok(Ok(status)) if status.as_u16() != 429 && status.is_client_error() => {
                    tracing::warn!(%status, "push webhook refused a notification");
                    return "refused";
                }
                Ok(Ok(status)) => tracing::debug!(%status, attempt, "push webhook failed"),
                Ok(Err(err)) => tracing::debug!(error = %err, attempt, "push webhook failed"),
                Err(_) => tracing::debug!(attempt, "push webhook timed out"),
            }
            if attempt < ATTEMPTS {
                natter_fabric::retry::wait_next(&mut waits).await;
            }
        }
        tracing::warn!("push webhook failed {ATTEMPTS} times; notification dropped");
        "failed"
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("bad webhook URL: {0}")]
    Url(String),
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// One HTTP/1.1 POST on a fresh connection; the response status.
async fn post(url: &str, body: Bytes, signature: &str) -> Result<hyper::StatusCode, CallError> {
    let uri: hyper::Uri = url.parse().map_err(|e| CallError::Url(format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(CallError::Url("only http:// is supported".into()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| CallError::Url("no host".into()))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((authority.host(), port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "push webhook connection ended");
        }
    });
    let request = hyper::Request::post(uri)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("x-natter-signature", signature)
        .body(http_body_util::Full::new(body))?;
    Ok(sender.send_request(request).await?.status())
}

#[cfg(test)]
mod tests {
    use super::sign;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
