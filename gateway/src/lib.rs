//! Natter's gateway: the edge that clients hold a WebSocket to.
//!
//! - [`auth`]: JWT verification (and development tokens).
//! - [`config`]: file + env + flags.
//! - `http`: the axum router: `/v1/ws` upgrade, `/v1/inbox`, media, message info, `/healthz`.
//! - `session`: one task per socket: client frames in; `sent`, errors and inbox items out.
//! - `frames`: what each client frame does, one file per frame kind.
//! - `access`: who may read or write a conversation, see a file, follow someone.
//! - `live`: one subscription per online user and one dispatcher, per-socket mailboxes and
//!   cursors, batched inbox reads, the reconciler and the keepalive wheel.
//! - `direct`: one-on-one messages, written by the gateway into both inboxes.
//! - `receipts`: what a socket's acks make delivered (one-on-one receipts, group marks).
//! - `marks`: group receipt marks of every socket, stored together every few ms.
//! - `presence`: online state in Redis, heartbeats, changes relayed to watchers.
//! - `web`: the browser client's files and the development sign-in.
//! - `serve`: the accept loop (plain or TLS) with handshake deadlines.
//!
//! The gateway keeps no routing table: it subscribes to `live.<uid>` while it holds a
//! socket of that user, and NATS interest routing brings that user's items here. Any
//! gateway can serve any user.

mod access;
pub use natter_auth as auth;
mod charge;
pub mod config;
mod direct;
mod exchange;
mod frames;
mod http;
mod live;
mod marks;
mod presence;
mod receipts;
mod refusal;
mod serve;
mod session;
mod web;

use std::{future::Future, net::SocketAddr, sync::Arc};

use async_nats::jetstream;
use natter_fabric::{Inbox, groups::Groups, media::MediaStore, streams};
use tokio::{net::TcpListener, sync::broadcast};

use crate::live::{LiveHub, reads::Reads, reconcile::Opened, wheel::Wheel};

use crate::{auth::Verifier, config::Config};
use tokio_util::sync::CancellationToken;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("JWT configuration: {0}")]
    Auth(#[from] auth::AuthError),
    #[error(
        "no JWT secret: set NATTER_JWT_SECRET (at least {min} bytes), or pass --dev for a local setup",
        min = config::MIN_SECRET_BYTES
    )]
    NoSecret,
    #[error("the JWT secret is shorter than {min} bytes", min = config::MIN_SECRET_BYTES)]
    ShortSecret,
    #[error("configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("development sign-in {0}")]
    DevSignIn(String),
    #[error(
        "the configured JWT secret is the public development secret: set your own, or pass --dev without one"
    )]
    PublicSecret,
    #[error("cannot read the JWT public key {path}: {source}")]
    PublicKey {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] natter_fabric::ConnectFailed),
    #[error("cannot set up JetStream streams: {0}")]
    Streams(#[from] jetstream::context::CreateStreamError),
    #[error("cannot open a stream: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("cannot open the inbox: {0}")]
    Inbox(#[from] natter_fabric::InboxError),
    #[error("cannot open the groups bucket: {0}")]
    Groups(#[from] natter_fabric::groups::GroupsError),
    #[error("cannot open the media buckets: {0}")]
    Media(#[from] natter_fabric::media::MediaError),
    #[error("cannot open the devices bucket: {0}")]
    Devices(#[from] natter_fabric::devices::DevicesError),
    #[error("cannot open the blocks bucket: {0}")]
    Blocks(#[from] natter_fabric::blocks::BlocksError),
    #[error("cannot open the deletions bucket: {0}")]
    Deletions(#[from] natter_fabric::deletions::DeletionsError),
    #[error("cannot open the settings bucket: {0}")]
    Settings(#[from] natter_fabric::settings::SettingsError),
    #[error("Redis settings: {0}")]
    Redis(#[from] natter_redis::RedisError),
    #[error("cannot subscribe to advisories: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("cannot start the metrics exporter: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// What every socket task shares.
pub(crate) struct Shared {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub msgs: jetstream::stream::Stream<()>,
    pub inbox: Inbox,
    /// Group membership (cached, watched) and group changes.
    pub groups: Groups,
    /// Group receipt marks waiting to be stored (collected from every socket).
    pub marks: marks::MarkSink,
    /// Where each device's push notifications go.
    pub devices: natter_fabric::devices::Devices,
    /// Uploaded files and who may fetch them.
    pub media: MediaStore,
    /// Who blocked whom.
    pub blocks: natter_fabric::blocks::Blocks,
    /// Messages deleted for everyone a moment ago (history may not know yet).
    pub deletions: natter_fabric::deletions::Deletions,
    /// Users' privacy settings and muted conversations.
    pub settings: natter_fabric::settings::Settings,
    pub verifier: Verifier,
    /// Online state of this gateway's sockets.
    pub presence: presence::PresenceHub,
    /// Per-user token bucket every costly action is charged to (`crate::charge`); `None`
    /// when unlimited.
    pub action_limit: Option<charge::Limit>,
    /// Per-user daily bucket of group creations; `None` when unlimited.
    pub group_limit: Option<charge::Limit>,
    /// Per-user daily upload quota, in MiB; `None` when unlimited.
    pub upload_quota: Option<charge::Limit>,
    /// The secret `POST /v1/dev/sign-in` signs with; `None` when that is off.
    pub dev_secret: Option<String>,
    /// Uploads and downloads in progress, per user (`limits.transfers_per_user`).
    pub transfers: Arc<exchange::Transfers>,
    pub config: Config,
    /// The live subscriptions of this gateway's users, and their sockets' mailboxes.
    pub live: LiveHub,
    /// Batched reads of inboxes' newest sequences.
    pub reads: Reads,
    /// The inbox's oldest sequence, for `hello`'s `resumed`.
    pub oldest: live::oldest::Oldest,
    /// Sockets just opened, for the reconciler to check a second later.
    pub opened: Opened,
    /// Every socket's keepalive tick.
    pub wheel: Wheel,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// Every socket's task, so shutdown can wait for them to close with 1001.
    pub sessions: tokio_util::task::TaskTracker,
}

pub(crate) type App = Arc<Shared>;

/// Serves clients on `listener` until `shutdown` completes, then closes every socket
/// with 1001 (going away) so clients reconnect elsewhere.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    config.check().map_err(GatewayError::Config)?;
    let verifier = verifier(&config)?;
    let tls = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => Some(serve::tls_acceptor(cert, key).map_err(GatewayError::Tls)?),
        (None, None) => None,
        _ => {
            return Err(GatewayError::Tls(
                "tls needs both cert_file and key_file".into(),
            ));
        }
    };
    let listening = listener.local_addr().unwrap_or(config.listen);
    let dev_secret = dev_secret(&config, listening)?;
    if let Some(listen) = config.metrics_listen {
        natter_fabric::telemetry::install(listen)?;
    }
    // Present at zero, so dashboards show 0 rather than no data.
    metrics::counter!("natter_gateway_nats_disconnects_total").increment(0);
    metrics::counter!("natter_gateway_rate_limit_unchecked_total").increment(0);
    for op in [
        "online",
        "offline",
        "heartbeat",
        "watch",
        "watchers",
        "sweep",
    ] {
        metrics::counter!("natter_gateway_redis_errors_total", "op" => op).increment(0);
    }
    let (events_tx, events_rx) = broadcast::channel(64);
    let nats =
        natter_fabric::connect(&config.nats, events_tx, std::time::Duration::from_secs(30)).await?;
    let js = jetstream::new(nats.clone());
    streams::ensure_with_patience(
        &js,
        config.nats.replicas,
        std::time::Duration::from_secs(60),
    )
    .await?;
    let msgs = js.get_stream_no_info(streams::MSGS).await?;
    let inbox = Inbox::open(&js).await?;
    let patience = std::time::Duration::from_secs(60);
    let replicas = config.nats.replicas;
    let cached = config.limits.cached_group_members;
    let groups = streams::with_patience("groups bucket", patience, || {
        Groups::open(&js, replicas, cached)
    })
    .await?;
    let devices = streams::with_patience("devices bucket", patience, || {
        natter_fabric::devices::Devices::open(&js, replicas)
    })
    .await?;
    let blocks = streams::with_patience("blocks bucket", patience, || {
        natter_fabric::blocks::Blocks::open(&js, replicas)
    })
    .await?;
    let deletions = streams::with_patience("deletions bucket", patience, || {
        natter_fabric::deletions::Deletions::open(&js, replicas)
    })
    .await?;
    let settings = streams::with_patience("settings bucket", patience, || {
        natter_fabric::settings::Settings::open(&js, replicas)
    })
    .await?;
    let media_age = config.media.max_age();
    let media = streams::with_patience("media buckets", patience, || {
        MediaStore::open(&js, replicas, media_age, config.media.max_total_bytes)
    })
    .await?;

    // Redis may be down: the gateway serves chat without it (presence degraded).
    let redis = natter_redis::connect(&config.redis).await?;
    let prefix = config.redis.prefix.as_str();
    let presence = presence::PresenceHub::new(
        natter_redis::presence::Presence::new(redis.clone(), prefix, config.presence.ttl()),
        nats.clone(),
        settings.clone(),
        config.presence.sweep_every(),
    );
    let limits = &config.limits;
    // The bucket keeps its old name ("send"): sends were its only charge before.
    let limit = |action: &str, rate: f64, burst: f64| {
        let redis =
            natter_redis::rate_limit::RateLimiter::new(redis.clone(), prefix, action, rate, burst);
        charge::Limit::new(redis, rate, burst)
    };
    let action_limit = (limits.send_per_sec > 0.0)
        .then(|| limit("send", limits.send_per_sec, limits.send_burst.max(1.0)));
    let per_day = |action: &str, per_day: u32| {
        (per_day > 0).then(|| {
            let per_day = f64::from(per_day);
            limit(action, per_day / 86_400.0, per_day)
        })
    };
    let group_limit = per_day("groups", limits.groups_per_day);
    let upload_quota = per_day("media", config.media.mib_per_day);

    let stop = CancellationToken::new();
    let live = LiveHub::start(nats.clone(), stop.clone());
    let reads = Reads::start(nats.clone()).await?;
    let oldest = live::oldest::Oldest::start(inbox.clone(), stop.clone()).await;
    let opened = live::reconcile::start(
        &nats,
        live.clone(),
        reads.clone(),
        events_rx,
        config.limits.reconcile_every(),
        stop.clone(),
    )
    .await?;
    let wheel = Wheel::start(config.limits.ping_every(), stop.clone());
    let sessions = tokio_util::task::TaskTracker::new();
    let app: App = Arc::new(Shared {
        nats: nats.clone(),
        js,
        msgs,
        inbox,
        groups: groups.clone(),
        marks: marks::MarkSink::default(),
        devices,
        media,
        blocks,
        deletions,
        settings: settings.clone(),
        verifier,
        presence: presence.clone(),
        action_limit,
        group_limit,
        upload_quota,
        dev_secret,
        transfers: Arc::default(),
        config,
        live,
        reads,
        oldest,
        opened,
        wheel,
        shutdown: stop.clone(),
        sessions: sessions.clone(),
    });
    tokio::spawn(groups.watch(stop.clone()));
    tokio::spawn(app.blocks.clone().watch(stop.clone()));
    tokio::spawn(settings.watch(stop.clone()));
    tokio::spawn(presence.run(stop.clone()));
    // Receipts go out until the sockets have closed (their last acks count too).
    let marks_stop = CancellationToken::new();
    let marks_flushed = tokio::spawn(app.marks.clone().run(app.js.clone(), marks_stop.clone()));

    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, scheme, "gateway listening");
    let handshake_timeout = app.config.limits.handshake_timeout();
    let max_connections = app.config.limits.max_connections;
    let limits = serve::Limits {
        handshake_timeout,
        request_timeout: app.config.limits.request_timeout(),
        max_connections,
        max_per_address: app.config.limits.max_connections_per_address,
    };
    serve::serve(listener, tls, http::router(app), limits, stop).await;
    // Sockets close themselves with 1001 on shutdown, and leave presence as they go.
    sessions.close();
    let _ = tokio::time::timeout(serve::DRAIN, sessions.wait()).await;
    // The last acks' receipts are stored before the process ends.
    marks_stop.cancel();
    let _ = tokio::time::timeout(serve::DRAIN, marks_flushed).await;
    Ok(())
}

/// The secret development sign-ins are signed with, when they are on. Sign-in mints a
/// token for whoever asks, so it is refused unless those tokens could be minted by anyone
/// anyway (the public development secret) and only this machine can reach it (loopback).
fn dev_secret(config: &Config, listening: SocketAddr) -> Result<Option<String>, GatewayError> {
    if !config.web.dev_sign_in {
        return Ok(None);
    }
    let jwt = &config.jwt;
    if jwt.algorithm != "HS256" {
        return Err(GatewayError::DevSignIn(format!(
            "needs HS256 tokens (jwt.algorithm is {})",
            jwt.algorithm
        )));
    }
    if jwt.secret.is_some() || !jwt.allow_dev_secret {
        return Err(GatewayError::DevSignIn(
            "signs only with the development secret (--dev, no NATTER_JWT_SECRET)".into(),
        ));
    }
    // The configured address too: it is what the binary binds.
    for addr in [listening, config.listen] {
        if !addr.ip().is_loopback() {
            return Err(GatewayError::DevSignIn(format!(
                "is for a loopback listener only (listening on {addr})"
            )));
        }
    }
    tracing::warn!("development sign-in is on: anyone can sign in as anyone");
    Ok(Some(config::DEV_JWT_SECRET.to_owned()))
}

fn verifier(config: &Config) -> Result<Verifier, GatewayError> {
    let jwt = &config.jwt;
    let (iss, aud) = (jwt.issuer.as_deref(), jwt.audience.as_deref());
    if jwt.algorithm == "HS256" {
        let secret = match (&jwt.secret, jwt.allow_dev_secret) {
            (Some(secret), _) if secret.len() < config::MIN_SECRET_BYTES => {
                return Err(GatewayError::ShortSecret);
            }
            // The development secret is public: configured, it would let anyone mint tokens.
            (Some(secret), _) if secret == config::DEV_JWT_SECRET => {
                return Err(GatewayError::PublicSecret);
            }
            (Some(secret), _) => secret.as_str(),
            (None, true) => {
                tracing::warn!(
                    "development mode: accepting tokens signed with the built-in development secret"
                );
                config::DEV_JWT_SECRET
            }
            (None, false) => return Err(GatewayError::NoSecret),
        };
        return Ok(Verifier::hs256(secret.as_bytes(), iss, aud)?);
    }
    // Public-key tokens usually come from an identity provider that signs for many
    // services: without `iss` and `aud`, a token it made for another one would do here.
    if iss.is_none() || aud.is_none() {
        return Err(GatewayError::Config(format!(
            "{} tokens need jwt.issuer and jwt.audience",
            jwt.algorithm
        )));
    }
    let path = jwt.public_key_file.clone().unwrap_or_default();
    let pem = std::fs::read(&path).map_err(|source| GatewayError::PublicKey { path, source })?;
    Ok(Verifier::public_key(&jwt.algorithm, &pem, iss, aud)?)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn dev_config(secret: Option<&str>, dev: bool) -> Config {
        let mut config = Config::default();
        config.web.dev_sign_in = true;
        config.jwt.secret = secret.map(str::to_owned);
        config.jwt.allow_dev_secret = dev;
        config
    }

    const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
    const PUBLIC: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);

    #[test]
    fn development_sign_in_runs_only_with_the_public_secret_on_loopback() {
        let dev = dev_config(None, true);
        assert_eq!(
            dev_secret(&dev, LOOPBACK).unwrap().as_deref(),
            Some(config::DEV_JWT_SECRET)
        );
        // It would mint real tokens with a production secret.
        let own = dev_config(Some("a-production-secret-of-at-least-32-bytes"), true);
        assert!(matches!(
            dev_secret(&own, LOOPBACK),
            Err(GatewayError::DevSignIn(_))
        ));
        assert!(matches!(
            dev_secret(&dev_config(None, false), LOOPBACK),
            Err(GatewayError::DevSignIn(_))
        ));
        // Anyone on the network could sign in as anyone.
        assert!(matches!(
            dev_secret(&dev, PUBLIC),
            Err(GatewayError::DevSignIn(_))
        ));
        let mut off = dev_config(Some("a-production-secret-of-at-least-32-bytes"), false);
        off.web.dev_sign_in = false;
        assert_eq!(dev_secret(&off, PUBLIC).unwrap(), None);
    }

    #[test]
    fn the_public_development_secret_is_refused_as_a_configured_secret() {
        let configured = dev_config(Some(config::DEV_JWT_SECRET), false);
        assert!(matches!(
            verifier(&configured),
            Err(GatewayError::PublicSecret)
        ));
        assert!(verifier(&dev_config(None, true)).is_ok());
        assert!(matches!(
            verifier(&dev_config(Some("short"), false)),
            Err(GatewayError::ShortSecret)
        ));
        let mut public_key = dev_config(None, false);
        public_key.jwt.algorithm = "EdDSA".into();
        assert!(matches!(
            verifier(&public_key),
            Err(GatewayError::Config(_))
        ));
    }
}
