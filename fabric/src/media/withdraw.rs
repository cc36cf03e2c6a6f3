//! Taking a file back from a conversation whose message was deleted for everyone.

use super::{CAS_ATTEMPTS, MediaError, MediaStore};
use crate::buckets::{KvError, lost_race};

impl MediaStore {
    /// The members of `conv` may no longer fetch file `id` (its message there was deleted
    /// for everyone). When no conversation is left, nobody may, its uploader included:
    /// the access record is deleted, so every download answers 404 (the bytes go when the
    /// media retention expires them). Returns whether the file is now gone for everyone.
    pub async fn withdraw(&self, id: &str, conv: &str) -> Result<bool, MediaError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((revision, mut access)) = self.access_entry(id).await? else {
                return Ok(true);
            };
            access.convs.retain(|c| c != conv);
            let written = if access.convs.is_empty() {
                self.access
                    .delete_expect_revision(id, Some(revision))
                    .await
                    .map_err(|err| {
                        (
                            lost_race(false, &err),
                            KvError::new(format!("deleting media {id}"), err),
                        )
                    })
            } else {
                let value = serde_json::to_vec(&access).expect("access serializes");
                self.access
                    .update(id, value.into(), revision)
                    .await
                    .map(drop)
                    .map_err(|err| {
                        let what = format!("withdrawing media {id}");
                        (lost_race(false, &err), KvError::new(what, err))
                    })
            };
            match written {
                Ok(()) => return Ok(access.convs.is_empty()),
                Err((true, _)) => continue,
                Err((false, err)) => return Err(MediaError::Store(err)),
            }
        }
        Err(MediaError::Contended(id.to_owned()))
    }
}
