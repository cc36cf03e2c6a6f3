//! Message bodies: text, or a reference to an uploaded media object.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest text body accepted, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// Longest inline thumbnail (a `data:image/…;base64,…` URL), in bytes.
pub const MAX_THUMBNAIL_BYTES: usize = 16 * 1024;
/// Longest caption, in bytes of UTF-8.
pub const MAX_CAPTION_BYTES: usize = 4 * 1024;

/// What a message carries, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Text {
        text: String,
    },
    Media(Media),
    Image(Media),
    Video(Media),
    Audio(Media),
    Document(Media),
    /// Only in history, in place of a message deleted for everyone: never sent.
    Deleted,
}

/// A media body: the id returned by `POST /v1/media` and how to show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Media {
    pub media_id: String,
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// A small preview shown before the file is fetched: a `data:image/…;base64,…` URL of
    /// at most 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
}

impl Body {
    /// Checks what the schema cannot: text is non-empty and not too long.
    pub fn check(&self) -> Result<(), &'static str> {
        match self {
            Self::Deleted => Err("a deleted body cannot be sent"),
            Self::Text { text } if text.trim().is_empty() => Err("text must not be empty"),
            Self::Text { text } if text.len() > MAX_TEXT_BYTES => Err("text is longer than 32 KiB"),
            Self::Text { .. } => Ok(()),
            _ => {
                let media = self.media().expect("a media body");
                if media
                    .caption
                    .as_ref()
                    .is_some_and(|c| c.len() > MAX_CAPTION_BYTES)
                {
                    return Err("caption is longer than 4 KiB");
                }
                match &media.thumbnail {
                    Some(t) if t.len() > MAX_THUMBNAIL_BYTES => {
                        Err("thumbnail is larger than 16 KiB")
                    }
                    Some(t) if !t.starts_with("data:image/") || !t.contains(";base64,") => {
                        Err("thumbnail must be a data:image/…;base64,… URL")
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// The media a body refers to (`None` for text).
    pub fn media(&self) -> Option<&Media> {
        match self {
            Self::Text { .. } | Self::Deleted => None,
            Self::Media(m)
            | Self::Image(m)
            | Self::Video(m)
            | Self::Audio(m)
            | Self::Document(m) => Some(m),
        }
    }

    /// The body cut for a preview or a quote: text and caption to `chars` characters, no
    /// thumbnail.
    pub fn shortened(mut self, chars: usize) -> Self {
        let cut = |text: &mut String| {
            if let Some((at, _)) = text.char_indices().nth(chars) {
                text.truncate(at);
            }
        };
        match &mut self {
            Self::Text { text } => cut(text),
            Self::Deleted => {}
            Self::Media(media)
            | Self::Image(media)
            | Self::Video(media)
            | Self::Audio(media)
            | Self::Document(media) => {
                if let Some(caption) = &mut media.caption {
                    cut(caption);
                }
                media.thumbnail = None;
            }
        }
        self
    }

    pub fn is_media(&self) -> bool {
        self.media().is_some()
    }
}
