//! Gateway configuration: a TOML file (`--config`), then environment variables, then
//! flags, over defaults that run against the local cluster started by `scripts/up`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use natter_fabric::connect::{NatsArgs, NatsSettings};
use natter_redis::RedisSettings;
use serde::Deserialize;

pub use limits::Limits;
pub use natter_auth::DEV_JWT_SECRET;

mod limits;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// WebSocket and HTTP listener.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listener; none to run without the exporter.
    pub metrics_listen: Option<SocketAddr>,
    pub nats: NatsSettings,
    pub jwt: JwtConfig,
    pub limits: Limits,
    pub media: MediaConfig,
    pub web: WebConfig,
    /// Presence, rate limits: see natter-redis.
    pub redis: RedisSettings,
    pub presence: PresenceConfig,
    pub push: PushConfig,
    pub tls: TlsConfig,
}

/// `wss://` and `https://`: both files set, or neither (plain, e.g. behind a proxy that
/// terminates TLS).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// Push registrations (`POST /v1/devices`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Provider kinds the push workers of this deployment deliver to; others are refused.
    pub kinds: Vec<String>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            kinds: vec!["webhook".to_owned()],
        }
    }
}

/// Online state and last seen.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A socket counts as online this long after the last heartbeat (sent every third of
    /// it), so a gateway that dies leaves its users offline after at most this.
    pub ttl_ms: u64,
    /// How often this gateway looks for users whose sockets all expired.
    pub sweep_every_ms: u64,
    /// Most users one `presence_subscribe` names.
    pub max_follow: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 30_000,
            sweep_every_ms: 1_000,
            max_follow: 256,
        }
    }
}

/// The browser client.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Folder of the web client's files, served at `/`; none serves no client.
    pub dir: Option<PathBuf>,
    /// `POST /v1/dev/sign-in` mints a token for any user: local development only.
    pub dev_sign_in: bool,
    /// When set, requests carrying an `Origin` header (browsers) must come from one of
    /// these (e.g. `https://chat.example.com`); others get 403. Requests without `Origin`
    /// (native apps, servers) are not affected.
    pub allowed_origins: Vec<String>,
}

/// Uploads (`POST /v1/media`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest upload, in bytes (413 beyond it).
    pub max_bytes: u64,
    /// `Content-Type`s accepted; the common ones are also checked against the file's
    /// leading bytes.
    pub allowed_types: Vec<String>,
    /// How long files are kept, in days; 0 keeps them as long as history (forever).
    /// Applied to the store at every gateway start: lowering it deletes the older files.
    pub max_age_days: u64,
    /// All files together, in bytes (0: unbounded): the media stream's `max_bytes`, kept
    /// well below the servers' `max_file_store` so media can never take the storage the
    /// messages need. Past it uploads are refused (507) until files expire.
    pub max_total_bytes: u64,
    /// MiB one user may upload a day (0: no quota); an upload without `Content-Length`
    /// counts as `max_bytes`.
    pub mib_per_day: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_bytes: natter_fabric::media::DEFAULT_MAX_BYTES,
            allowed_types: [
                "image/jpeg",
                "image/png",
                "image/gif",
                "image/webp",
                "video/mp4",
                "video/webm",
                "video/quicktime",
                "audio/mpeg",
                "audio/mp4",
                "audio/ogg",
                "audio/webm",
                "audio/wav",
                "application/pdf",
                "application/zip",
                "text/plain",
                "application/octet-stream",
            ]
            .map(String::from)
            .to_vec(),
            max_age_days: 30,
            max_total_bytes: 8 * 1024 * 1024 * 1024,
            mib_per_day: 1024,
        }
    }
}

impl MediaConfig {
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_days * 24 * 3600)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` (shared secret), `RS256` or `EdDSA` (public key file).
    pub algorithm: String,
    pub secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Without a secret, fall back to the built-in development secret. Only for a local
    /// setup: anyone can mint tokens with it.
    pub allow_dev_secret: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            nats: NatsSettings {
                name: "natter-gateway".into(),
                ..NatsSettings::default()
            },
            jwt: JwtConfig::default(),
            limits: Limits::default(),
            media: MediaConfig::default(),
            web: WebConfig::default(),
            redis: RedisSettings::default(),
            presence: PresenceConfig::default(),
            push: PushConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            allow_dev_secret: false,
        }
    }
}

impl Config {
    /// Refuses values the gateway cannot run with.
    pub fn check(&self) -> Result<(), String> {
        let presence = &self.presence;
        if presence.ttl_ms < 300 || presence.sweep_every_ms == 0 {
            return Err("presence.ttl_ms must be at least 300 and sweep_every_ms above 0".into());
        }
        self.limits.check()
    }
}

impl PresenceConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
    pub fn sweep_every(&self) -> Duration {
        Duration::from_millis(self.sweep_every_ms)
    }
}

/// Shortest HS256 secret accepted, in bytes (RFC 7518 asks for at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Command line of `natter-gateway`.
#[derive(Debug, clap::Parser)]
#[command(name = "natter-gateway", about = "Natter's WebSocket/HTTP edge")]
pub struct Cli {
    /// TOML config file (see gateway/natter-gateway.example.toml).
    #[arg(long, env = "NATTER_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "NATTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus listen address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "NATTER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// HS256 secret for client tokens.
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "NATTER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Local development: accept tokens signed with the built-in development secret when
    /// no secret is configured (what `natter token` signs with by default).
    #[arg(long, env = "NATTER_DEV")]
    pub dev: bool,
    #[arg(long, env = "NATTER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Redis for presence and rate limits, e.g. redis://127.0.0.1:6379.
    #[arg(long, env = "NATTER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Sends per second per user (0: unlimited).
    #[arg(long, env = "NATTER_SEND_PER_SEC")]
    pub send_per_sec: Option<f64>,
    /// Sends a user may make at once.
    #[arg(long, env = "NATTER_SEND_BURST")]
    pub send_burst: Option<f64>,
    /// PEM certificate chain: serve wss:// and https:// (with --tls-key).
    #[arg(long, env = "NATTER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "NATTER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve the web client from this folder (e.g. web/).
    #[arg(long, env = "NATTER_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Local development: let the web client sign in as any user (POST /v1/dev/sign-in).
    #[arg(long, env = "NATTER_DEV_SIGN_IN")]
    pub dev_sign_in: bool,
    #[command(flatten)]
    pub nats: NatsArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl Cli {
    /// File, then environment and flags (clap merges those two), over the defaults.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.metrics_listen.is_some() {
            config.metrics_listen = self.metrics_listen;
        }
        if self.jwt_secret.is_some() {
            config.jwt.secret.clone_from(&self.jwt_secret);
        }
        if self.dev {
            config.jwt.allow_dev_secret = true;
        }
        if self.jwt_issuer.is_some() {
            config.jwt.issuer.clone_from(&self.jwt_issuer);
        }
        if self.jwt_audience.is_some() {
            config.jwt.audience.clone_from(&self.jwt_audience);
        }
        if let Some(url) = &self.redis_url {
            config.redis.url.clone_from(url);
        }
        if let Some(rate) = self.send_per_sec {
            config.limits.send_per_sec = rate;
        }
        if let Some(burst) = self.send_burst {
            config.limits.send_burst = burst;
        }
        if self.tls_cert.is_some() {
            config.tls.cert_file.clone_from(&self.tls_cert);
        }
        if self.tls_key.is_some() {
            config.tls.key_file.clone_from(&self.tls_key);
        }
        if self.web_dir.is_some() {
            config.web.dir.clone_from(&self.web_dir);
        }
        if self.dev_sign_in {
            config.web.dev_sign_in = true;
        }
        self.nats.apply(&mut config.nats);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_matches_the_defaults() {
        let text = include_str!("../natter-gateway.example.toml");
        let config: Config = toml::from_str(text).unwrap();
        let defaults = Config::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.nats.urls, defaults.nats.urls);
        assert_eq!(config.nats.replicas, defaults.nats.replicas);
        assert_eq!(config.limits.max_inflight, defaults.limits.max_inflight);
        assert_eq!(
            config.limits.reconcile_every_ms,
            defaults.limits.reconcile_every_ms
        );
        assert_eq!(
            config.limits.max_frame_bytes,
            defaults.limits.max_frame_bytes
        );
        assert_eq!(
            config.limits.max_group_members,
            defaults.limits.max_group_members
        );
        assert_eq!(config.limits.send_per_sec, defaults.limits.send_per_sec);
        assert_eq!(config.limits.send_burst, defaults.limits.send_burst);
        assert_eq!(config.redis.url, defaults.redis.url);
        assert_eq!(config.presence.ttl_ms, defaults.presence.ttl_ms);
        assert_eq!(config.media.max_bytes, defaults.media.max_bytes);
        assert_eq!(config.media.allowed_types, defaults.media.allowed_types);
        assert_eq!(config.media.max_age_days, defaults.media.max_age_days);
        assert_eq!(config.media.max_total_bytes, defaults.media.max_total_bytes);
        assert_eq!(config.media.mib_per_day, defaults.media.mib_per_day);
        assert_eq!(config.limits.groups_per_day, defaults.limits.groups_per_day);
        assert_eq!(
            config.limits.body_timeout_ms,
            defaults.limits.body_timeout_ms
        );
        assert_eq!(
            config.limits.max_connections_per_address,
            defaults.limits.max_connections_per_address
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("lisen = \"127.0.0.1:1\"").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("natter-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n[nats]\nreplicas = 1\n").unwrap();
        let cli = <Cli as clap::Parser>::parse_from([
            "natter-gateway",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
        ]);
        let config = cli.load().unwrap();
        assert_eq!(config.listen.port(), 9001);
        assert_eq!(config.nats.replicas, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
