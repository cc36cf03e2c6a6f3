//! One NATS connection per process, with the options Natter relies on.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::broadcast;

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
    }
}

/// Connects, retrying for up to `patience` while the cluster comes up. Connection events
/// (reconnects, slow consumers) are sent on `events`.
pub async fn connect(
    settings: &NatsSettings,
    events: broadcast::Sender<Event>,
    patience: Duration,
) -> Result<Client, async_nats::ConnectError> {
    let deadline = tokio::time::Instant::now() + patience;
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
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        let servers: Vec<&str> = settings
            .urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        match options.connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(err) if matches!(err.kind(), async_nats::ConnectErrorKind::ServerParse) => {
                return Err(err);
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %err, urls = %settings.urls, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) => return Err(err),
        }
    }
}
