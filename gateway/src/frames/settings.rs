//! `settings`, `mute` and `unmute`: the user's privacy settings and muted conversations
//! (`natter_fabric::settings`), each answered with `settings`, all of them. A privacy
//! change is told to the user's followers at once (their presence as now shown).

use natter_fabric::{
    now_millis,
    settings::{Change, SettingsError},
};
use natter_schemas::{
    Conversation, ErrorCode, Mute, ServerFrame, SettingsChange, SettingsFrame, Unmute,
};

use super::{Pending, Refused, bad_id, refuse};
use crate::session::Session;

impl Session {
    pub(super) fn on_settings(&mut self, change: SettingsChange) -> Pending {
        let privacy = change.last_seen.is_some() || change.online.is_some();
        let change_to = Change::Privacy {
            last_seen: change.last_seen,
            online: change.online,
            read_receipts: change.read_receipts,
        };
        self.change_settings(change_to, privacy, change.r#ref)
    }

    pub(super) fn on_mute(&mut self, mute: Mute) -> Result<Pending, Refused> {
        let conv = Conversation::parse(&mute.conv).map_err(bad_id)?;
        let until = mute.until.unwrap_or(u64::MAX);
        if until <= now_millis() {
            return Err(Refused(
                ErrorCode::BadRequest,
                "until must be in the future (or absent: for good)".into(),
            ));
        }
        let change = Change::Mute {
            conv: conv.to_string(),
            until,
        };
        Ok(self.change_settings(change, false, mute.r#ref))
    }

    pub(super) fn on_unmute(&mut self, unmute: Unmute) -> Result<Pending, Refused> {
        let conv = Conversation::parse(&unmute.conv).map_err(bad_id)?;
        let change = Change::Unmute {
            conv: conv.to_string(),
        };
        Ok(self.change_settings(change, false, unmute.r#ref))
    }

    fn change_settings(&self, change: Change, privacy: bool, reference: Option<String>) -> Pending {
        let (app, user) = (self.app.clone(), self.user.clone());
        Box::pin(async move {
            let changed = app.settings.change(&user, change, now_millis()).await;
            Some(match changed {
                Ok(settings) => {
                    if privacy {
                        app.presence.restate(&user).await;
                    }
                    ServerFrame::Settings(SettingsFrame {
                        r#ref: reference,
                        settings: (*settings).clone(),
                    })
                }
                Err(SettingsError::TooManyMuted) => refuse(
                    ErrorCode::LimitExceeded,
                    &SettingsError::TooManyMuted.to_string(),
                    reference,
                ),
                Err(err) => {
                    tracing::warn!(error = %err, "settings unavailable");
                    refuse(
                        ErrorCode::Unavailable,
                        "settings unavailable; try again",
                        reference,
                    )
                }
            })
        })
    }
}
