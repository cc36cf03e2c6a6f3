//! `error`: a request was refused. The connection stays open.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The stable codes a client can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, or a field of the wrong shape.
    BadFrame,
    /// An id, conversation or target outside the identity rules.
    BadId,
    /// A well-formed frame whose content is refused (empty text, ack beyond what was sent).
    BadRequest,
    /// The user may not act on this conversation.
    Forbidden,
    /// The frame is part of the protocol but this server does not serve it yet.
    Unsupported,
    /// The message could not be made durable; retry with the same `id`.
    Unavailable,
    /// A limit was reached (a group's member limit).
    LimitExceeded,
    /// Too many frames of this kind too fast; retry after `retry_after_ms`.
    RateLimited,
}

impl ErrorCode {
    /// The wire spelling, e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::BadId => "bad_id",
            Self::BadRequest => "bad_request",
            Self::Forbidden => "forbidden",
            Self::Unsupported => "unsupported",
            Self::Unavailable => "unavailable",
            Self::LimitExceeded => "limit_exceeded",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// With `rate_limited`: how long until the frame would be accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}
