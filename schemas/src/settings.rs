//! A user's settings: who sees their last seen and online state, whether read receipts
//! go out (one-on-one), and the conversations they muted. `settings` changes the privacy fields given (none: just reads them);
//! `mute` / `unmute` change one conversation; each is answered with `settings`, all of
//! them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Millis;

/// Who may see something of mine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Everyone who may follow my presence (docs/PROTOCOL.md: people I share a group or a
    /// one-on-one conversation with; others never can).
    #[default]
    Everyone,
    /// The people I chat with: today the same as `everyone`, since strangers cannot
    /// follow anyone's presence.
    Contacts,
    Nobody,
}

/// Client → server: change the fields given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SettingsChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_receipts: Option<bool>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Client → server: mute `conv` until `until` (ms since the epoch; absent: for good).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Mute {
    pub conv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Client → server: unmute `conv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Unmute {
    pub conv: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// A user's settings as stored, and as the `settings` frame shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserSettings {
    #[serde(default)]
    pub last_seen: Audience,
    #[serde(default)]
    pub online: Audience,
    /// Whether one-on-one `read` receipts go out (WhatsApp's setting: off, the user sends
    /// none and sees none; groups always have them).
    #[serde(default = "on")]
    pub read_receipts: bool,
    /// Muted conversations → until when (`u64::MAX`: for good).
    #[serde(default)]
    pub muted: BTreeMap<String, Millis>,
}

fn on() -> bool {
    true
}

impl Default for UserSettings {
    fn default() -> Self {
        Self {
            last_seen: Audience::default(),
            online: Audience::default(),
            read_receipts: true,
            muted: BTreeMap::new(),
        }
    }
}

impl UserSettings {
    /// Whether `conv` is muted at `now`.
    pub fn muted_at(&self, conv: &str, now: Millis) -> Option<Millis> {
        self.muted.get(conv).copied().filter(|until| *until > now)
    }
}

/// Server → client: all of the user's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SettingsFrame {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    #[serde(flatten)]
    pub settings: UserSettings,
}
