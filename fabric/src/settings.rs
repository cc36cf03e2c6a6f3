//! Each user's settings ([`UserSettings`]: presence privacy, read receipts, muted
//! conversations) in the replicated KV bucket `settings`, one key per user who changed
//! anything. Gateways keep a copy of all of it for presence and read receipts
//! ([`Settings::watch`], `crate::per_user`), push workers for muting; a change takes
//! effect wherever the copy has it (milliseconds).

use std::sync::Arc;

use async_nats::jetstream;
use natter_schemas::{Audience, Millis, UserSettings};

use crate::{
    buckets::KvError,
    per_user::{ChangeError, PerUser},
};
use tokio_util::sync::CancellationToken;

pub const BUCKET: &str = "settings";
/// Most conversations one user keeps muted at once.
pub const MAX_MUTED: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot open the settings bucket: {0}")]
    Bucket(#[source] KvError),
    #[error("settings bucket: {0}")]
    Store(#[source] KvError),
    #[error("too much contention on the settings of {0}")]
    Contended(String),
    #[error("at most {MAX_MUTED} conversations may be muted at once")]
    TooManyMuted,
}

/// A change to one user's settings.
#[derive(Debug, Clone)]
pub enum Change {
    Privacy {
        last_seen: Option<Audience>,
        online: Option<Audience>,
        read_receipts: Option<bool>,
    },
    Mute {
        conv: String,
        until: Millis,
    },
    Unmute {
        conv: String,
    },
}

#[derive(Clone)]
pub struct Settings {
    values: PerUser<UserSettings>,
}

impl Settings {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, SettingsError> {
        let description = "Natter: each user's privacy settings and muted conversations";
        let values = PerUser::open(js, replicas, BUCKET, description)
            .await
            .map_err(SettingsError::Bucket)?;
        Ok(Self { values })
    }

    /// `user`'s settings (the defaults when they changed none).
    pub async fn of(&self, user: &str) -> Result<Arc<UserSettings>, SettingsError> {
        self.values.get(user).await.map_err(SettingsError::Store)
    }

    /// Applies `change` at time `now` (mutes that ran out are dropped); the settings after.
    pub async fn change(
        &self,
        user: &str,
        change: Change,
        now: Millis,
    ) -> Result<Arc<UserSettings>, SettingsError> {
        let changed = self.values.update(user, |settings| {
            let before = settings.clone();
            settings.muted.retain(|_, until| *until > now);
            match &change {
                Change::Privacy {
                    last_seen,
                    online,
                    read_receipts,
                } => {
                    settings.last_seen = last_seen.unwrap_or(settings.last_seen);
                    settings.online = online.unwrap_or(settings.online);
                    settings.read_receipts = read_receipts.unwrap_or(settings.read_receipts);
                }
                Change::Mute { conv, until } => {
                    settings.muted.insert(conv.clone(), *until);
                    if settings.muted.len() > MAX_MUTED {
                        return Err(SettingsError::TooManyMuted);
                    }
                }
                Change::Unmute { conv } => {
                    settings.muted.remove(conv);
                }
            }
            Ok(*settings != before)
        });
        changed.await.map_err(|err| match err {
            ChangeError::Refused(refused) => refused,
            ChangeError::Store(err) => SettingsError::Store(err),
            ChangeError::Contended(user) => SettingsError::Contended(user),
        })
    }

    /// Whether `reader`'s one-on-one read receipts may reach `sender`: both have them on.
    pub async fn read_receipts_between(
        &self,
        reader: &str,
        sender: &str,
    ) -> Result<bool, SettingsError> {
        let (a, b) = tokio::try_join!(self.of(reader), self.of(sender))?;
        Ok(a.read_receipts && b.read_receipts)
    }

    /// Keeps this process's copy of everyone's settings current until `stop`.
    pub async fn watch(self, stop: CancellationToken) {
        self.values.watch(stop).await
    }
}
