//! The first decoding pass: find the integer `tag` of a frame, and the shared
//! encoder that writes `tag` (and `time`) in front of a message body.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;

/// Only the `tag` of an object; every other field is skipped.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    tag: Option<serde_json::Value>,
}

/// Reads the integer `tag` of a frame, or says precisely why there is none.
pub(crate) fn read_tag(text: &str) -> Result<i64, DecodeError> {
    // A derived struct also accepts a JSON array, so check the shape first.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => DecodeError::NotAnObject,
            Err(e) => DecodeError::NotJson(e.to_string()),
        });
    }
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    match envelope.tag {
        None => Err(DecodeError::MissingTag),
        Some(value) => value.as_i64().ok_or(DecodeError::TagNotInteger),
    }
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

/// A body with its `tag` and optional `time` written first.
#[derive(Serialize)]
struct Framed<'a, T: Serialize> {
    tag: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<i64>,
    #[serde(flatten)]
    body: &'a T,
}

/// Encodes `body` as one JSON object carrying `tag` (and `time` when given).
pub(crate) fn write_framed<T: Serialize>(tag: u8, time: Option<i64>, body: &T) -> String {
    let framed = Framed { tag, time, body };
    // Serialising plain structs of strings and numbers into a String cannot
    // fail: there is no I/O and no map with non-string keys.
    serde_json::to_string(&framed).unwrap_or_else(|_| format!("{{\"tag\":{tag}}}"))
}
