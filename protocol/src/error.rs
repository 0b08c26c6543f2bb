//! Why a frame could not be decoded, and the protocol's `error_type` values.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `error_type` of an `Error` (tag 30) frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// Not JSON, not an object, a missing or wrongly typed field, a binary frame,
    /// or a value outside its documented range.
    BadRequest,
    /// A JSON object whose integer `tag` this server does not handle.
    UnknownTag,
    /// The request needs a logged-in connection.
    NotLoggedIn,
    /// The caller may not do this (another user's `source_id`, Logout naming
    /// another user, a group the caller is not in).
    Forbidden,
    /// A username that does not exist.
    UnknownUser,
    /// A group id that does not exist.
    UnknownGroup,
    /// A frame over the size limit.
    TooLarge,
    /// Too many requests; try again later.
    RateLimited,
    /// The server cannot take the request now (storage behind or failing).
    ServerBusy,
}

impl ErrorType {
    /// The wire spelling, e.g. `"bad_request"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadRequest => "bad_request",
            ErrorType::UnknownTag => "unknown_tag",
            ErrorType::NotLoggedIn => "not_logged_in",
            ErrorType::Forbidden => "forbidden",
            ErrorType::UnknownUser => "unknown_user",
            ErrorType::UnknownGroup => "unknown_group",
            ErrorType::TooLarge => "too_large",
            ErrorType::RateLimited => "rate_limited",
            ErrorType::ServerBusy => "server_busy",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text frame is not a valid message.
///
/// Every variant is answered with `Error{error_type: bad_request}` except
/// [`DecodeError::UnknownTag`] (`unknown_tag`); [`DecodeError::ref_tag`] gives
/// the `ref_tag` to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The text is not JSON at all.
    NotJson(String),
    /// Valid JSON, but not an object.
    NotAnObject,
    /// An object without a `tag` field.
    MissingTag,
    /// A `tag` that is not an integer.
    TagNotInteger,
    /// An integer tag that names no message of this direction.
    UnknownTag(i64),
    /// A known tag with a missing or wrongly typed field.
    BadField {
        /// The frame's tag.
        tag: i64,
        /// What was wrong, in serde's words.
        detail: String,
    },
}

impl DecodeError {
    /// The `error_type` this failure is answered with.
    pub fn error_type(&self) -> ErrorType {
        match self {
            DecodeError::UnknownTag(_) => ErrorType::UnknownTag,
            _ => ErrorType::BadRequest,
        }
    }

    /// The request's tag when the frame was an object with an integer tag.
    pub fn ref_tag(&self) -> Option<i64> {
        match self {
            DecodeError::UnknownTag(tag) | DecodeError::BadField { tag, .. } => Some(*tag),
            _ => None,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotJson(detail) => write!(f, "frame is not JSON: {detail}"),
            DecodeError::NotAnObject => f.write_str("frame is not a JSON object"),
            DecodeError::MissingTag => f.write_str("object has no \"tag\""),
            DecodeError::TagNotInteger => f.write_str("\"tag\" is not an integer"),
            DecodeError::UnknownTag(tag) => write!(f, "unknown tag {tag}"),
            DecodeError::BadField { tag, detail } => write!(f, "tag {tag}: {detail}"),
        }
    }
}

impl std::error::Error for DecodeError {}
