//! Push: notifies users who have no device online that messages are waiting.
//!
//! A durable consumer reads every new inbox item. A message from someone else, for a user
//! with no live socket (presence in Redis), is noted in the push queue, which coalesces
//! per user (see `natter_redis::push_queue`). A loop claims the notifications whose window
//! closed and hands each to the provider of each of the user's registered devices
//! (`natter_fabric::devices`).
//!
//! Providers: [`Webhook`] (an HTTP POST of JSON, signed with HMAC-SHA256, retried with
//! backoff) is the one shipped. APNs and FCM would be further [`Provider`] variants; they
//! need credentials this project cannot test here (an APNs key or certificate and team id
//! over HTTP/2 to api.push.apple.com; an FCM service account for OAuth2 tokens and the
//! HTTP v1 API), so devices may only register the kinds a deployment delivers.
//!
//! Pushes are best effort: a notification whose every attempt failed is dropped (counted),
//! and an inbox item noted twice after a redelivery counts twice in the message count.
//! Message text goes into the payload only when `include_text` is set.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{KeyInit, Mac};
use natter_fabric::{
    devices::{Devices, PushTarget},
    now_millis, streams,
};
use natter_redis::push_queue::{Coalescing, Pending, PushQueue};
use natter_schemas::{Body, InboxItem};
use serde::Serialize;
use tokio::sync::watch;

use crate::{SETUP_PATIENCE, WorkerError, stopped};

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

/// Inbox items noted at once by one process.
const CONCURRENCY: usize = 64;
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

pub async fn start(
    js: &jetstream::Context,
    replicas: usize,
    settings: &PushSettings,
    stop: watch::Receiver<bool>,
) -> Result<Vec<crate::Task>, WorkerError> {
    let redis = natter_redis::connect(&settings.redis).await?;
    let queue = PushQueue::new(redis, &settings.redis.prefix, settings.coalescing);
    let devices = streams::with_patience("devices bucket", SETUP_PATIENCE, || {
        Devices::open(js, replicas)
    })
    .await?;
    let stream = js.get_stream(streams::INBOX).await?;
    // Only what arrives from now on: a first start does not notify about the past. Not
    // `DeliverPolicy::New`: each replica of a new consumer takes "new" from its own
    // moment of creation, and a leader that was created late skips what came before
    // (seen as a lost push right after the cluster started).
    let next = stream.cached_info().state.last_sequence + 1;
    let config = pull::Config {
        durable_name: Some("push".into()),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: next,
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        // Redelivered until noted (Redis may be down for a while), with growing waits.
        max_deliver: -1,
        max_ack_pending: 4_096,
        ..Default::default()
    };
    let consumer: jetstream::consumer::PullConsumer =
        streams::with_patience("push consumer", SETUP_PATIENCE, || {
            stream.get_or_create_consumer("push", config.clone())
        })
        .await?;
    let provider = Provider::from_settings(settings);
    let note: crate::Task = Box::pin(note_loop(
        consumer,
        queue.clone(),
        settings.include_text,
        stop.clone(),
    ));
    let send: crate::Task = Box::pin(send_loop(queue, devices, provider, stop));
    Ok(vec![note, send])
}

/// Notes every message for an offline recipient.
async fn note_loop(
    consumer: jetstream::consumer::PullConsumer,
    queue: PushQueue,
    include_text: bool,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let messages = crate::pull::messages(consumer, crate::pull::BATCH);
    let work = messages.for_each_concurrent(CONCURRENCY, |next| {
        let queue = &queue;
        async move {
            let message = match next {
                Ok(message) => message,
                Err(err) => {
                    tracing::warn!(error = %err, "push consumer hiccup");
                    return;
                }
            };
            let ack = match noted(queue, &message, include_text).await {
                Ok(()) => AckKind::Ack,
                Err(err) => {
                    metrics::counter!("natter_push_note_failures_total").increment(1);
                    tracing::debug!(error = %err, "push not noted; retrying");
                    let attempt = message.info().map_or(1, |info| info.delivered).max(1);
                    AckKind::Nak(Some(renote_after(attempt)))
                }
            };
            if let Err(err) = message.ack_with(ack).await {
                tracing::debug!(error = %err, "push ack failed; the item comes back");
            }
        }
    });
    tokio::select! {
        _ = stopped(stop) => Ok(()),
        _ = work => Err(WorkerError::ConsumerEnded("push".into())),
    }
}

/// How long before an item that could not be noted comes back: 1 s, doubling up to a
/// minute.
fn renote_after(attempt: i64) -> Duration {
    let exponent = u32::try_from(attempt.clamp(1, 7) - 1).unwrap_or(0);
    Duration::from_secs(2u64.pow(exponent)).min(Duration::from_secs(60))
}

async fn noted(
    queue: &PushQueue,
    message: &jetstream::Message,
    include_text: bool,
) -> Result<(), natter_redis::RedisError> {
    let Some(user) = message.subject.strip_prefix("inbox.") else {
        return Ok(());
    };
    let Ok(InboxItem::Msg(m)) = serde_json::from_slice::<InboxItem>(&message.payload) else {
        return Ok(()); // receipts and group events do not notify
    };
    if m.from == user {
        return Ok(()); // one's own message, echoed to one's other devices
    }
    let text = match (&m.body, include_text) {
        (Body::Text { text }, true) => text.chars().take(MAX_TEXT).collect(),
        _ => String::new(),
    };
    if queue.note(user, &m.conv, &m.from, &text).await? {
        metrics::counter!("natter_push_noted_total").increment(1);
        tracing::debug!(%user, "push noted");
    } else {
        tracing::debug!(%user, "recipient online; no push");
    }
    Ok(())
}

/// Claims due notifications and delivers them.
async fn send_loop(
    queue: PushQueue,
    devices: Devices,
    provider: Provider,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let mut tick = tokio::time::interval(CLAIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
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
/// failures, 429 and 5xx with doubling backoff.
pub struct Webhook {
    url: String,
    secret: String,
}

impl Webhook {
    async fn send(&self, notification: &Notification<'_>) -> &'static str {
        let body = Bytes::from(serde_json::to_vec(notification).expect("notifications serialize"));
        let signature = sign(self.secret.as_bytes(), &body);
        let mut backoff = FIRST_BACKOFF;
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
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        tracing::warn!("push webhook failed {ATTEMPTS} times; notification dropped");
        "failed"
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2_hmac::Sha256>::new_from_slice(secret)
        .expect("HMAC takes keys of any length");
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
