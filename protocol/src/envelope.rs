//! The first decoding pass: find the integer `tag` (and the optional
//! `request_id`) of a frame, and the shared encoder that writes `tag`, `time`
//! and `request_id` in front of a message body.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::request_id::RequestId;

/// Only the `tag` and `request_id` of an object; every other field is skipped.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    tag: Option<serde_json::Value>,
    #[serde(default)]
    request_id: Option<serde_json::Value>,
}

/// What the first pass found: the tag, and the request id when the frame
/// carried a valid one (an invalid one is an error of its own, kept apart so
/// the tag can still be reported).
pub(crate) struct Head {
    /// The frame's integer tag.
    pub tag: i64,
    /// The request id, if present and valid.
    pub request_id: Option<RequestId>,
    /// Why the present `request_id` is not valid.
    pub bad_request_id: Option<&'static str>,
}

/// Reads the integer `tag` (and `request_id`) of a frame, or says precisely
/// why there is no tag.
pub(crate) fn read_head(text: &str) -> Result<Head, DecodeError> {
    // A derived struct also accepts a JSON array, so check the shape first.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => DecodeError::NotAnObject,
            Err(e) => DecodeError::NotJson(e.to_string()),
        });
    }
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let tag = match envelope.tag {
        None => return Err(DecodeError::MissingTag),
        Some(value) => value.as_i64().ok_or(DecodeError::TagNotInteger)?,
    };
    let (request_id, bad_request_id) = match envelope.request_id.map(RequestId::from_json) {
        None => (None, None),
        Some(Ok(id)) => (Some(id), None),
        Some(Err(why)) => (None, Some(why)),
    };
    Ok(Head {
        tag,
        request_id,
        bad_request_id,
    })
}

/// The second pass: the body of a known tag.
pub(crate) fn read_body<T: DeserializeOwned>(tag: i64, text: &str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::BadField {
        tag,
        detail: field_error_text(&e),
    })
}

/// serde_json's message without the "at line 1 column 40" suffix, which only
/// confuses a reader of a one-line frame.
fn field_error_text(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.find(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// A body with its `tag`, optional `time` and optional `request_id` first.
#[derive(Serialize)]
struct Framed<'a, T: Serialize> {
    tag: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a RequestId>,
    #[serde(flatten)]
    body: &'a T,
}

/// Encodes `body` as one JSON object carrying `tag` (and `time` and
/// `request_id` when given).
pub(crate) fn write_framed<T: Serialize>(
    tag: u8,
    time: Option<i64>,
    request_id: Option<&RequestId>,
    body: &T,
) -> String {
    let framed = Framed {
        tag,
        time,
        request_id,
        body,
    };
    // Serialising plain structs of strings and numbers into a String cannot
    // fail: there is no I/O and no map with non-string keys.
    serde_json::to_string(&framed).unwrap_or_else(|_| format!("{{\"tag\":{tag}}}"))
}
