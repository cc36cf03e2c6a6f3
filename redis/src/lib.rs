//! Natter's state that may be lost, in Redis: who is online, when they were last seen, who
//! follows whose presence, per-user rate limits, and pending push notifications.
//!
//! Nothing here is a promise: messages never touch Redis. If Redis is down or restarted
//! empty, chat goes on; presence rebuilds from the gateways' next heartbeat (every live
//! socket is re-asserted), rate limits let traffic through (they fail open, see
//! [`rate_limit`]), and pushes wait for Redis to come back.
//!
//! Every multi-step change is one Lua script, so it is atomic, and every script reads the
//! clock from Redis (`TIME`), so gateways with skewed clocks agree. The scripts touch keys
//! derived from their arguments, which a single Redis (or Sentinel pair) allows; on Redis
//! Cluster the per-user keys would need one hash tag per user.
//!
//! - [`presence`]: online devices with a TTL, last seen, watchers, and the sweep that
//!   notices devices whose gateway died.
//! - [`rate_limit`]: a token bucket per user and action.
//! - [`push_queue`]: coalesces notifications per user.

pub mod presence;
pub mod push_queue;
pub mod rate_limit;

use std::time::Duration;

use fred::prelude::{EventInterface, ReconnectPolicy};
use serde::Deserialize;

pub use fred::prelude::{Client, ClientLike};

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS.
    pub url: String,
    /// With `rediss://`: the PEM certificate(s) to trust for the server (its CA, or a
    /// self-signed certificate); without it, the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// A command not answered within this fails (Redis down): callers carry on without it.
    pub command_timeout_ms: u64,
    /// Prefix of every key, so several deployments can share one Redis.
    pub prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            tls_ca_file: None,
            command_timeout_ms: 500,
            prefix: "natter:".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis URL: {0}")]
    Url(fred::error::Error),
    #[error("redis: {0}")]
    Command(#[from] fred::error::Error),
    #[error("Redis TLS: {0}")]
    Tls(String),
    #[error("redis is not connected")]
    Down,
    #[error("unexpected reply from a Redis script: {0}")]
    Reply(String),
}

/// How long [`connect`] waits for the first connection before going on without it.
const FIRST_CONNECT_PATIENCE: Duration = Duration::from_secs(2);

/// A client that connects in the background and keeps reconnecting: it never fails
/// because Redis is down, and commands sent while it is fail at once. Waits a moment for
/// the first connection, so a process that starts with Redis up starts connected.
pub async fn connect(settings: &RedisSettings) -> Result<Client, RedisError> {
    let mut config = fred::prelude::Config::from_url(&settings.url).map_err(RedisError::Url)?;
    config.fail_fast = false;
    if let Some(ca) = &settings.tls_ca_file {
        config.tls = Some(tls_trusting(ca)?.into());
    }
    let timeout = Duration::from_millis(settings.command_timeout_ms);
    let client = fred::prelude::Builder::from_config(config)
        .with_performance_config(|perf| perf.default_command_timeout = timeout)
        .with_connection_config(|conn| {
            conn.connection_timeout = timeout;
            conn.internal_command_timeout = timeout;
            conn.max_command_attempts = 1;
        })
        // Forever, every 250 ms: Redis coming back is noticed quickly.
        .set_policy(ReconnectPolicy::new_constant(0, 250))
        .build()
        .map_err(RedisError::Url)?;
    // Runs the connection (and its reconnects) in the background.
    let _connection = client.connect();
    // The listeners run as tasks of their own; their handles are not needed.
    drop(client.on_error(|(err, server)| async move {
        tracing::warn!(error = %err, ?server, "redis connection failed; retrying");
        Ok(())
    }));
    drop(client.on_reconnect(|server| async move {
        tracing::info!(%server, "redis connected");
        Ok(())
    }));
    if tokio::time::timeout(FIRST_CONNECT_PATIENCE, client.wait_for_connect())
        .await
        .is_err()
    {
        tracing::warn!(url = %settings.url, "redis not reachable yet; going on without it");
    }
    Ok(client)
}

/// A TLS client (on the ring provider, the process's only one) trusting the
/// certificates in `ca_file`.
fn tls_trusting(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, RedisError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let tls = |e: &dyn std::fmt::Display| RedisError::Tls(format!("{}: {e}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| tls(&e))? {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Redis's clock, as milliseconds since the epoch (Lua prelude of every script).
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// A Lua script with the clock prelude, run by hash and loaded again when Redis forgot
/// it (after a restart).
#[derive(Clone)]
struct Script(fred::types::scripts::Script);

impl Script {
    fn new(body: &str) -> Self {
        Self(fred::types::scripts::Script::from_lua(format!(
            "{NOW}{body}"
        )))
    }

    async fn run<R: fred::types::FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, RedisError> {
        // While Redis is away, fail at once rather than queue behind the reconnect: callers
        // carry on without Redis, and must not wait for it on every message.
        if !client.is_connected() {
            return Err(RedisError::Down);
        }
        Ok(self.0.evalsha_with_reload(client, keys, args).await?)
    }
}

/// A reply's value as an integer (Lua numbers come back as integers, strings as text).
fn as_u64(value: &fred::types::Value) -> Option<u64> {
    match value {
        fred::types::Value::Integer(n) => u64::try_from(*n).ok(),
        other => other.as_string()?.parse().ok(),
    }
}
