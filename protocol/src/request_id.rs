//! Request ids (protocol 1.1): a client's name for one request, echoed on
//! every reply to it so a client matches answers by id, never by order.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::REQUEST_ID_CHARS_MAX;

/// A client's `request_id`: a string of at most 64 characters, or an integer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// An integer id, echoed as an integer.
    Number(i64),
    /// A string id, echoed as the same string.
    Text(String),
}

impl RequestId {
    /// Reads a `request_id` field's JSON value, or says why it is not one.
    pub(crate) fn from_json(value: serde_json::Value) -> Result<RequestId, &'static str> {
        match value {
            serde_json::Value::Number(number) => number
                .as_i64()
                .map(RequestId::Number)
                .ok_or("request_id must be an integer or a string of at most 64 characters"),
            serde_json::Value::String(text) if text.chars().count() <= REQUEST_ID_CHARS_MAX => {
                Ok(RequestId::Text(text))
            }
            serde_json::Value::String(_) => Err("request_id is longer than 64 characters"),
            _ => Err("request_id must be an integer or a string of at most 64 characters"),
        }
    }
}

impl From<u64> for RequestId {
    fn from(value: u64) -> Self {
        RequestId::Number(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<&str> for RequestId {
    fn from(value: &str) -> Self {
        RequestId::Text(value.to_owned())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Number(number) => write!(f, "{number}"),
            RequestId::Text(text) => f.write_str(text),
        }
    }
}
