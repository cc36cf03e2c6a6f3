//! Message bodies: text, or a reference to an uploaded media object.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest text body accepted, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;

/// What a message carries, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Text { text: String },
    Media(Media),
    Image(Media),
    Video(Media),
    Audio(Media),
    Document(Media),
}

/// A media body: the id returned by `POST /v1/media` and how to show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Media {
    pub media_id: String,
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

impl Body {
    /// Checks what the schema cannot: text is non-empty and not too long.
    pub fn check(&self) -> Result<(), &'static str> {
        match self {
            Self::Text { text } if text.trim().is_empty() => Err("text must not be empty"),
            Self::Text { text } if text.len() > MAX_TEXT_BYTES => Err("text is longer than 32 KiB"),
            _ => Ok(()),
        }
    }

    pub fn is_media(&self) -> bool {
        !matches!(self, Self::Text { .. })
    }
}
