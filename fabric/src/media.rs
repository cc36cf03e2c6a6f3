//! Media: uploaded files in the JetStream object store bucket `media` (R3), and who may
//! fetch them in the KV bucket `media_access`.
//!
//! Uploads are written here rather than through `ObjectStore::put` for three reasons:
//! chunk publishes are pipelined (a window of acks in flight instead of one round trip
//! per 128 KiB chunk), the size limit and the type check happen while streaming, and a
//! refused or broken upload has its chunks purged, so nothing half-stored stays behind.
//! The chunks and the metadata record use the object store's own layout (any object store
//! client can read the files), and the access record keeps each chunk's stream sequence:
//! a download fetches exactly the chunks it needs by direct get, a few ahead, so a slow
//! client costs the gateway a few chunks of memory and a Range request skips straight to
//! its first chunk.
//!
//! Access: the uploader, and every member of a conversation where a message referred to
//! the file (recorded when the send is accepted). Ids are 184 random bits: knowing one is
//! not enough, and a refusal looks exactly like a missing file.

use std::{collections::VecDeque, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishAckFuture,
        kv::{self, UpdateErrorKind},
        object_store::{self, ObjectInfo, ObjectOptions},
        stream::{DiscardPolicy, StorageType},
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::buckets::{KvError, lost_race, open_bucket, read_latest};

mod withdraw;

pub const BUCKET: &str = "media";
/// The stream the object store keeps the files in.
pub const STREAM: &str = "OBJ_media";
pub const ACCESS_BUCKET: &str = "media_access";
/// Default upload limit.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 128 * 1024;
/// Chunk publishes awaiting their ack at once (memory per upload ≈ this × CHUNK).
const WINDOW: usize = 8;
const CAS_ATTEMPTS: usize = 20;

/// Who may fetch a file, and what it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaAccess {
    pub uploader: String,
    pub mime: String,
    pub size: u64,
    pub sha256: String,
    /// Conversations (`dm:a:b`, `group:g`) where a message referred to it.
    pub convs: Vec<String>,
    /// Stream sequence of each chunk, in order; every chunk but the last is `CHUNK` bytes.
    pub chunks: Vec<u64>,
}

/// A stored upload, as `POST /v1/media` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stored {
    pub id: String,
    pub size: u64,
    pub sha256: String,
    pub mime: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the file is empty")]
    Empty,
    #[error("the file's content is not {declared}")]
    WrongType { declared: String },
    #[error("reading the upload failed: {0}")]
    Read(std::io::Error),
    #[error("media bucket unavailable: {0}")]
    Bucket(#[source] KvError),
    #[error("media store: {0}")]
    Store(#[source] KvError),
    #[error("media {0} kept changing under us; try again")]
    Contended(String),
    #[error("no media {0}")]
    Missing(String),
    /// The media stream is at its `max_bytes` (or the servers out of storage): uploads
    /// are refused until files expire; messages are not affected.
    #[error("the media store is full")]
    Full,
}

#[derive(Clone)]
pub struct MediaStore {
    js: jetstream::Context,
    stream: jetstream::stream::Stream<()>,
    access: kv::Store,
}

/// Chunks fetched ahead of the one being sent to a downloading client.
const READ_AHEAD: usize = 4;

impl MediaStore {
    /// Opens (creating on first use) both buckets. `max_age` zero keeps files forever
    /// (applied to the files' stream at every start; the access records keep the age the
    /// bucket was created with). `max_total_bytes` (0: no bound) bounds the files' stream, which then refuses new
    /// files rather than dropping old ones: media shares the servers' storage with the
    /// message streams, and must never fill it.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        max_age: Duration,
        max_total_bytes: u64,
    ) -> Result<Self, MediaError> {
        match js.get_object_store(BUCKET).await {
            Ok(_) => {}
            Err(_) => {
                js.create_object_store(object_store::Config {
                    bucket: BUCKET.to_owned(),
                    description: Some("Natter uploaded media".to_owned()),
                    max_age,
                    storage: StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| MediaError::Bucket(KvError::new("opening the media store", e)))?;
            }
        }
        let mut stream = js
            .get_stream(STREAM)
            .await
            .map_err(|e| MediaError::Bucket(KvError::new("opening the media store", e)))?;
        let mut config = stream
            .info()
            .await
            .map_err(|e| MediaError::Bucket(KvError::new("opening the media store", e)))?
            .config
            .clone();
        let max_bytes = i64::try_from(max_total_bytes)
            .ok()
            .filter(|max| *max > 0)
            .unwrap_or(-1);
        if config.max_bytes != max_bytes
            || config.discard != DiscardPolicy::New
            || config.max_age != max_age
        {
            config.max_bytes = max_bytes;
            config.discard = DiscardPolicy::New;
            config.max_age = max_age;
            js.update_stream(config)
                .await
                .map_err(|e| MediaError::Bucket(KvError::new("opening the media store", e)))?;
        }
        let stream = js
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| MediaError::Bucket(KvError::new("opening the media store", e)))?;
        let access = open_bucket(
            js,
            kv::Config {
                bucket: ACCESS_BUCKET.to_owned(),
                description: "Natter media access: uploader and conversations".to_owned(),
                history: 1,
                max_age,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(MediaError::Bucket)?;
        Ok(Self {
            js: js.clone(),
            stream,
            access,
        })
    }

    /// Streams `data` into the bucket under a fresh id, refusing it past `limit` bytes or
    /// when its leading bytes contradict `mime`; on any failure nothing stays stored.
    pub async fn put(
        &self,
        uploader: &str,
        mime: &str,
        limit: u64,
        data: &mut (impl AsyncRead + Unpin),
    ) -> Result<Stored, MediaError> {
        let id = fresh_id();
        let nuid = uuid::Uuid::new_v4().simple().to_string();
        let chunk_subject = format!("$O.{BUCKET}.C.{nuid}");
        let mut acks = VecDeque::new();
        let written = self
            .put_chunks(&chunk_subject, mime, limit, data, &mut acks)
            .await;
        // Chunks still on their way would land after a purge: wait for them first.
        for ack in acks {
            let _ = ack.await;
        }
        match written {
            Ok((size, chunks, digest)) => {
                let stored = self
                    .finish(uploader, &id, &nuid, mime, size, chunks, digest)
                    .await;
                if stored.is_err() {
                    self.purge(&chunk_subject).await;
                }
                stored
            }
            Err(err) => {
                self.purge(&chunk_subject).await;
                Err(err)
            }
        }
    }

    async fn put_chunks(
        &self,
        subject: &str,
        mime: &str,
        limit: u64,
        data: &mut (impl AsyncRead + Unpin),
        acks: &mut VecDeque<PublishAckFuture>,
    ) -> Result<(u64, Vec<u64>, [u8; 32]), MediaError> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut chunks = 0usize;
        let mut seqs = Vec::new();
        let mut eof = false;
        while !eof {
            let mut chunk = BytesMut::with_capacity(CHUNK);
            while chunk.len() < CHUNK {
                if data.read_buf(&mut chunk).await.map_err(MediaError::Read)? == 0 {
                    eof = true;
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            if chunks == 0 && !content_matches(mime, &chunk) {
                return Err(MediaError::WrongType {
                    declared: mime.to_owned(),
                });
            }
            size += chunk.len() as u64;
            if size > limit {
                return Err(MediaError::TooLarge { limit });
            }
            hasher.update(&chunk);
            chunks += 1;
            let ack = self
                .js
                .publish(subject.to_owned(), chunk.freeze())
                .await
                .map_err(store_error)?;
            acks.push_back(ack);
            if acks.len() >= WINDOW {
                let ack = acks.pop_front().expect("a pending ack");
                seqs.push(stored_at(ack).await?);
            }
        }
        while let Some(ack) = acks.pop_front() {
            seqs.push(stored_at(ack).await?);
        }
        if size == 0 {
            return Err(MediaError::Empty);
        }
        Ok((size, seqs, hasher.finalize().into()))
    }

    /// Publishes the object's metadata record (the object store's format) and its access
    /// record.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        uploader: &str,
        id: &str,
        nuid: &str,
        mime: &str,
        size: u64,
        chunks: Vec<u64>,
        digest: [u8; 32],
    ) -> Result<Stored, MediaError> {
        let info = ObjectInfo {
            name: id.to_owned(),
            description: None,
            metadata: Default::default(),
            headers: None,
            options: Some(ObjectOptions {
                link: None,
                max_chunk_size: Some(CHUNK),
            }),
            bucket: BUCKET.to_owned(),
            nuid: nuid.to_owned(),
            size: size as usize,
            chunks: chunks.len(),
            modified: None,
            digest: Some(format!("SHA-256={}", URL_SAFE.encode(digest))),
            deleted: false,
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let meta = serde_json::to_vec(&info).expect("object info serializes");
        let subject = format!("$O.{BUCKET}.M.{}", URL_SAFE.encode(id));
        self.js
            .publish_with_headers(subject, headers, meta.into())
            .await
            .map_err(store_error)?
            .await
            .map_err(store_error)?;
        let sha256 = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let access = MediaAccess {
            uploader: uploader.to_owned(),
            mime: mime.to_owned(),
            size,
            sha256: sha256.clone(),
            convs: Vec::new(),
            chunks,
        };
        let value = serde_json::to_vec(&access).expect("access serializes");
        self.access
            .create(id, value.into())
            .await
            .map_err(|e| MediaError::Store(KvError::new(format!("recording media {id}"), e)))?;
        Ok(Stored {
            id: id.to_owned(),
            size,
            sha256,
            mime: mime.to_owned(),
        })
    }

    async fn purge(&self, chunk_subject: &str) {
        if let Err(err) = self.stream.purge().filter(chunk_subject).await {
            tracing::warn!(error = %err, subject = chunk_subject, "could not purge a refused upload's chunks");
        }
    }

    /// A file's access record; `None` when there is no such file.
    pub async fn access(&self, id: &str) -> Result<Option<MediaAccess>, MediaError> {
        Ok(self.access_entry(id).await?.map(|(_, access)| access))
    }

    /// Lets the members of `conv` fetch file `id`; `true` when they could not before.
    pub async fn share(&self, id: &str, conv: &str) -> Result<bool, MediaError> {
        self.change_convs(id, conv, true).await
    }

    /// Takes back a [`share`](Self::share) that no stored message stands for (a re-sent
    /// client id that turned out to name a message of another conversation).
    pub async fn unshare(&self, id: &str, conv: &str) -> Result<bool, MediaError> {
        self.change_convs(id, conv, false).await
    }

    /// Adds or removes `conv` from file `id`'s conversations; whether that changed them.
    async fn change_convs(&self, id: &str, conv: &str, add: bool) -> Result<bool, MediaError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((revision, mut access)) = self.access_entry(id).await? else {
                return Err(MediaError::Missing(id.to_owned()));
            };
            let present = access.convs.iter().any(|c| c == conv);
            if present == add {
                return Ok(false);
            }
            if add {
                access.convs.push(conv.to_owned());
            } else {
                access.convs.retain(|c| c != conv);
            }
            let value = serde_json::to_vec(&access).expect("access serializes");
            match self.access.update(id, value.into(), revision).await {
                Ok(_) => return Ok(true),
                Err(err) if lost_race(err.kind() == UpdateErrorKind::WrongLastRevision, &err) => {
                    continue;
                }
                Err(err) => {
                    let what = format!("changing who may see media {id}");
                    return Err(MediaError::Store(KvError::new(what, err)));
                }
            }
        }
        Err(MediaError::Contended(id.to_owned()))
    }

    /// Bytes `first..=last` of a file, fetched chunk by chunk (a few ahead).
    pub fn read(
        &self,
        access: &MediaAccess,
        first: u64,
        last: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let chunk = CHUNK as u64;
        let wanted: Vec<(u64, u64)> = access
            .chunks
            .iter()
            .enumerate()
            .map(|(i, seq)| (*seq, i as u64 * chunk))
            .filter(|(_, start)| *start + chunk > first && *start <= last)
            .collect();
        let stream = self.stream.clone();
        futures_util::stream::iter(wanted)
            .map(move |(seq, start)| {
                let stream = stream.clone();
                async move {
                    let payload = fetch_chunk(&stream, seq).await?;
                    let from = first.saturating_sub(start) as usize;
                    let to = ((last - start + 1) as usize).min(payload.len());
                    if from >= to {
                        return Err(std::io::Error::other(format!(
                            "chunk {seq} is shorter than recorded"
                        )));
                    }
                    Ok(payload.slice(from..to))
                }
            })
            .buffered(READ_AHEAD)
    }

    async fn access_entry(&self, id: &str) -> Result<Option<(u64, MediaAccess)>, MediaError> {
        if natter_schemas::ids::check_id(id, "media id").is_err() {
            return Ok(None);
        }
        let entry = read_latest(&self.access, id)
            .await
            .map_err(MediaError::Store)?;
        Ok(entry
            .and_then(|(revision, value)| Some((revision, serde_json::from_slice(&value).ok()?))))
    }
}

/// The stream sequence an acked chunk publish got.
async fn stored_at(ack: PublishAckFuture) -> Result<u64, MediaError> {
    ack.await.map(|ack| ack.sequence).map_err(store_error)
}

/// A refused store: [`MediaError::Full`] when the stream or the servers have no room.
fn store_error(err: jetstream::context::PublishError) -> MediaError {
    use async_nats::jetstream::ErrorCode;
    let code = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code);
    match code {
        Some(
            ErrorCode::STREAM_STORE_FAILED
            | ErrorCode::STORAGE_RESOURCES_EXCEEDED
            | ErrorCode::INSUFFICIENT_RESOURCES
            | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
        ) => MediaError::Full,
        _ => MediaError::Store(KvError::new("storing a chunk", err)),
    }
}

/// One chunk by sequence: from a replica (direct get), or from the leader when the
/// replica has not caught up with a fresh upload yet.
async fn fetch_chunk(
    stream: &jetstream::stream::Stream<()>,
    seq: u64,
) -> Result<Bytes, std::io::Error> {
    match stream.direct_get(seq).await {
        Ok(message) => Ok(message.payload),
        Err(_) => stream
            .get_raw_message(seq)
            .await
            .map(|message| message.payload)
            .map_err(std::io::Error::other),
    }
}

/// 48 hex characters: 184 random bits (two UUIDv4s' random parts).
fn fresh_id() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{}", &b[..16])
}

/// Whether a file's leading bytes fit its declared type, for the types with a signature;
/// other allowed types are taken as declared.
pub fn content_matches(mime: &str, head: &[u8]) -> bool {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    match mime {
        "image/jpeg" => at(0, &[0xFF, 0xD8, 0xFF]),
        "image/png" => at(0, b"\x89PNG\r\n\x1a\n"),
        "image/gif" => at(0, b"GIF87a") || at(0, b"GIF89a"),
        "image/webp" => at(0, b"RIFF") && at(8, b"WEBP"),
        "audio/wav" => at(0, b"RIFF") && at(8, b"WAVE"),
        "application/pdf" => at(0, b"%PDF-"),
        "video/mp4" | "audio/mp4" | "video/quicktime" => at(4, b"ftyp"),
        "video/webm" | "audio/webm" => at(0, &[0x1A, 0x45, 0xDF, 0xA3]),
        "audio/ogg" => at(0, b"OggS"),
        "audio/mpeg" => {
            at(0, b"ID3") || (head.len() > 1 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0)
        }
        "application/zip" => at(0, b"PK\x03\x04"),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_for_the_common_types() {
        assert!(content_matches("image/png", b"\x89PNG\r\n\x1a\nrest"));
        assert!(!content_matches("image/png", b"GIF89a..."));
        assert!(content_matches("image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(!content_matches("image/jpeg", b"%PDF-1.7"));
        assert!(content_matches("application/pdf", b"%PDF-1.7"));
        assert!(content_matches("video/mp4", b"\0\0\0\x18ftypmp42"));
        assert!(!content_matches("video/mp4", b"\0\0"));
        assert!(content_matches("image/webp", b"RIFF\0\0\0\0WEBPVP8 "));
        assert!(!content_matches("image/webp", b"RIFF\0\0\0\0WAVEfmt "));
        assert!(content_matches("audio/mpeg", &[0xFF, 0xFB, 0x90]));
        assert!(content_matches("text/plain", b"anything"));
    }

    #[test]
    fn ids_are_long_and_valid() {
        let id = fresh_id();
        assert_eq!(id.len(), 48);
        assert!(natter_schemas::ids::check_id(&id, "media id").is_ok());
        assert_ne!(id, fresh_id());
    }
}
