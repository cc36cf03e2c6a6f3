//! One NATS connection per process, with the options Natter relies on.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::broadcast;

use crate::retry;

/// Where and as whom to connect (the `[nats]` table of a config file).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// Comma-separated server URLs; the client fails over between them.
    pub urls: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Shown in the servers' connection list.
    pub name: String,
    /// Replicas of each stream: 3 on the local cluster, 1 on a single server.
    pub replicas: usize,
    /// Messages buffered per subscription before NATS reports a slow consumer and drops.
    /// On the gateway a live subscription's drops are repaired from the inbox, so this bounds
    /// memory per socket; the JetStream request/reply buffer shares it.
    pub subscription_capacity: usize,
    /// Also use the cluster addresses the servers advertise. Turn off when the servers are
    /// reached through a proxy or NAT and the addresses they advertise are not reachable.
    pub discover_servers: bool,
    /// PEM certificate(s) to trust for the servers (their CA, or a self-signed
    /// certificate); setting it requires TLS on every connection (as do `tls://` URLs).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// A file holding this process's NATS nkey seed (`SU…`), for servers configured with
    /// nkeys (nats/production/); used instead of `user`/`password`.
    pub nkey_file: Option<std::path::PathBuf>,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            urls: "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224".to_owned(),
            user: None,
            password: None,
            name: "natter".to_owned(),
            replicas: 3,
            subscription_capacity: 1024,
            discover_servers: true,
            tls_ca_file: None,
            nkey_file: None,
        }
    }
}

/// Flags and environment variables that override [`NatsSettings`] from a config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS server URLs, comma-separated.
    #[arg(long = "nats-url", env = "NATTER_NATS_URL")]
    pub urls: Option<String>,
    #[arg(long = "nats-user", env = "NATTER_NATS_USER")]
    pub user: Option<String>,
    #[arg(
        long = "nats-password",
        env = "NATTER_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Stream replicas (3 for the local cluster, 1 for a single server).
    #[arg(long = "replicas", env = "NATTER_REPLICAS")]
    pub replicas: Option<usize>,
    /// PEM CA (or self-signed certificate) of the NATS servers: connect over TLS only.
    #[arg(long = "nats-ca", env = "NATTER_NATS_CA")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// File holding the NATS nkey seed to log in with (instead of user and password).
    #[arg(long = "nats-nkey-file", env = "NATTER_NATS_NKEY_FILE")]
    pub nkey_file: Option<std::path::PathBuf>,
}

impl NatsArgs {
    pub fn apply(&self, settings: &mut NatsSettings) {
        if let Some(urls) = &self.urls {
            settings.urls.clone_from(urls);
        }
        if self.user.is_some() {
            settings.user.clone_from(&self.user);
        }
        if self.password.is_some() {
            settings.password.clone_from(&self.password);
        }
        if let Some(replicas) = self.replicas {
            settings.replicas = replicas;
        }
        if self.tls_ca_file.is_some() {
            settings.tls_ca_file.clone_from(&self.tls_ca_file);
        }
        if self.nkey_file.is_some() {
            settings.nkey_file.clone_from(&self.nkey_file);
        }
    }
}

/// The passwords `nats/accounts.conf` gives its users for the local setup. They are
/// public, so a process refuses them for any server that is not on this machine.
pub const DEVELOPMENT_PASSWORDS: [&str; 4] = ["gateway-dev", "workers-dev", "bench-dev", "sys-dev"];

/// Why a connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailed {
    #[error(transparent)]
    Nats(#[from] async_nats::ConnectError),
    #[error(
        "the NATS password given is a public development one (nats/accounts.conf) and {url} \
         is not on this machine: log in with the production credentials (nats/production/)"
    )]
    DevelopmentPassword { url: String },
    #[error("reading the NATS nkey seed from {path}: {source}")]
    NkeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl NatsSettings {
    /// The server URLs, trimmed, without empty entries.
    fn servers(&self) -> Vec<&str> {
        self.urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Refuses a development password unless every server is on a loopback address.
    pub fn check_credentials(&self) -> Result<(), ConnectFailed> {
        let Some(password) = &self.password else {
            return Ok(());
        };
        if !DEVELOPMENT_PASSWORDS.contains(&password.as_str()) {
            return Ok(());
        }
        match self.servers().into_iter().find(|url| !on_loopback(url)) {
            Some(url) => Err(ConnectFailed::DevelopmentPassword {
                url: url.to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// Whether a server URL (`nats://host:port`, `tls://…`, `host:port`, with or without
/// `user:password@`) names this machine: `localhost`, 127.0.0.0/8 or `::1`.
fn on_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split('/').next().unwrap_or_default();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => rest.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects, retrying for up to `patience` while the cluster comes up. Connection events
/// (reconnects, slow consumers) are sent on `events`.
pub async fn connect(
    settings: &NatsSettings,
    events: broadcast::Sender<Event>,
    patience: Duration,
) -> Result<Client, ConnectFailed> {
    settings.check_credentials()?;
    let nkey = match &settings.nkey_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map(|seed| seed.trim().to_owned())
                .map_err(|source| ConnectFailed::NkeyFile {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + patience;
    let mut waits = retry::waits(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        let events = events.clone();
        let mut options = ConnectOptions::new()
            .name(&settings.name)
            .subscription_capacity(settings.subscription_capacity)
            .connection_timeout(Duration::from_secs(3))
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    // Nobody listening is fine.
                    let _ = events.send(event);
                }
            });
        if !settings.discover_servers {
            options = options.ignore_discovered_servers();
        }
        if let Some(ca) = &settings.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(seed) = &nkey {
            options = options.nkey(seed.clone());
        } else if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        let servers = settings.servers();
        match options.connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(err) if matches!(err.kind(), async_nats::ConnectErrorKind::ServerParse) => {
                return Err(err.into());
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %err, urls = %settings.urls, "NATS not reachable yet; retrying");
                crate::retry::wait_next(&mut waits).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnectFailed, DEVELOPMENT_PASSWORDS, NatsSettings, on_loopback};

    #[test]
    fn loopback_urls_are_told_from_others() {
        for url in [
            "nats://127.0.0.1:4222",
            "localhost:4222",
            "tls://gateway:secret@127.0.0.2:4222",
            "nats://[::1]:4222",
            "127.0.0.1",
        ] {
            assert!(on_loopback(url), "{url}");
        }
        for url in [
            "nats://10.0.0.5:4222",
            "nats://nats.example.com:4222",
            "nats://127.0.0.1.example.com:4222",
            "tls://[2001:db8::1]:4222",
            "nats://localhost@evil.example:4222",
        ] {
            assert!(!on_loopback(url), "{url}");
        }
    }

    #[test]
    fn a_development_password_is_refused_for_a_server_elsewhere() {
        let local = NatsSettings {
            password: Some("gateway-dev".into()),
            ..NatsSettings::default()
        };
        assert!(local.check_credentials().is_ok());
        let remote = NatsSettings {
            urls: "nats://127.0.0.1:4222, nats://nats-2.internal:4222".into(),
            ..local.clone()
        };
        assert!(matches!(
            remote.check_credentials(),
            Err(ConnectFailed::DevelopmentPassword { url }) if url == "nats://nats-2.internal:4222"
        ));
        let real = NatsSettings {
            password: Some("a-real-secret".into()),
            ..remote
        };
        assert!(real.check_credentials().is_ok());
    }

    #[test]
    fn every_password_of_the_local_accounts_is_known_as_a_development_one() {
        let accounts = include_str!("../../nats/accounts.conf");
        let passwords: Vec<&str> = accounts
            .split("password:")
            .skip(1)
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches([',', '}'])
            })
            .collect();
        assert_eq!(
            passwords.len(),
            DEVELOPMENT_PASSWORDS.len(),
            "{passwords:?}"
        );
        for password in passwords {
            assert!(DEVELOPMENT_PASSWORDS.contains(&password), "{password}");
        }
    }
}
