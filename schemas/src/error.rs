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

/// The `error` of an HTTP error body (`{error, message}`, on every `/v1` route and on a
/// refused WebSocket upgrade). The frame codes ([`ErrorCode`]) are among them; the rest
/// belong to HTTP (authentication, bodies, uploads, transfers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HttpErrorCode {
    /// A malformed request: query, body, headers.
    BadRequest,
    /// An id outside the identity rules.
    BadId,
    /// Something this server does not do (e.g. a push provider it has no credentials for).
    Unsupported,
    /// No valid bearer token.
    Unauthorized,
    /// Signed in, but not allowed.
    Forbidden,
    /// A browser page outside `web.allowed_origins`.
    ForbiddenOrigin,
    /// No such route, file or message (or not one the caller may see).
    NotFound,
    /// A method the route does not take.
    MethodNotAllowed,
    /// The body did not arrive in time (or an upload fell behind its pace).
    Timeout,
    /// A body over its bound.
    TooLarge,
    /// A media type that is not accepted.
    UnsupportedType,
    /// A file whose leading bytes contradict its declared type.
    WrongType,
    /// Too many requests too fast; retry later.
    RateLimited,
    /// The day's upload quota is used up.
    QuotaExceeded,
    /// Too many sockets for this user.
    TooManyConnections,
    /// Too many uploads and downloads in progress for this user.
    TooManyTransfers,
    /// A store or NATS failure; retry.
    Unavailable,
    /// All media together reached their bound.
    StorageFull,
    /// A limit was reached.
    LimitExceeded,
}

impl HttpErrorCode {
    pub const ALL: [Self; 19] = [
        Self::BadRequest,
        Self::BadId,
        Self::Unsupported,
        Self::Unauthorized,
        Self::Forbidden,
        Self::ForbiddenOrigin,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Timeout,
        Self::TooLarge,
        Self::UnsupportedType,
        Self::WrongType,
        Self::RateLimited,
        Self::QuotaExceeded,
        Self::TooManyConnections,
        Self::TooManyTransfers,
        Self::Unavailable,
        Self::StorageFull,
        Self::LimitExceeded,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BadId => "bad_id",
            Self::Unsupported => "unsupported",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
            Self::UnsupportedType => "unsupported_type",
            Self::WrongType => "wrong_type",
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::TooManyConnections => "too_many_connections",
            Self::TooManyTransfers => "too_many_transfers",
            Self::Unavailable => "unavailable",
            Self::StorageFull => "storage_full",
            Self::LimitExceeded => "limit_exceeded",
        }
    }
}

impl From<ErrorCode> for HttpErrorCode {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::BadFrame | ErrorCode::BadRequest => Self::BadRequest,
            ErrorCode::BadId => Self::BadId,
            ErrorCode::Forbidden => Self::Forbidden,
            ErrorCode::Unsupported => Self::Unsupported,
            ErrorCode::Unavailable => Self::Unavailable,
            ErrorCode::LimitExceeded => Self::LimitExceeded,
            ErrorCode::RateLimited => Self::RateLimited,
        }
    }
}

/// The body of an HTTP error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpError {
    pub error: HttpErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::HttpErrorCode;

    #[test]
    fn http_codes_are_spelled_as_serialized() {
        for code in HttpErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str(), "{code:?}");
        }
    }
}
