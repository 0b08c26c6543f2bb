//! Reading a frame's integer `tag` (and optional `request_id`) and its body,
//! and the shared encoder that writes `tag`, `time` and `request_id` in front
//! of a message body.
//!
//! A frame whose first key is `tag` — every frame our own encoder writes — is
//! decoded in one pass ([`read_tag_first`]). Any other frame, and any frame
//! that pass cannot decode, goes through two passes: [`read_head`] finds the
//! tag, [`read_body`] reads the body of that tag. The two passes are the
//! definition; the one pass only ever returns what they would (a property
//! test below checks that), and every error is worded by them.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer};
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

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

/// A message enum whose variant is chosen by an integer tag: reads the body
/// of `tag` from the rest of a JSON object. The table macro implements it for
/// both directions.
pub(crate) trait FromTaggedMap: Sized {
    /// The message of `tag`, from the object's remaining entries.
    fn from_map<'de, A: MapAccess<'de>>(tag: i64, map: A) -> Result<Self, A::Error>;
}

/// The body of `tag` as a `T`, from the object's remaining entries (what the
/// table macro calls for each row).
pub(crate) fn body_from_map<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    map: A,
) -> Result<T, A::Error> {
    T::deserialize(MapAccessDeserializer::new(map))
}

/// Decodes a frame in one pass when its first key is `tag`: the message and
/// its valid request id. `None` when the frame is anything else or anything
/// in it is wrong (a bad request id included); the two passes then decide,
/// so an error is always worded the same way.
pub(crate) fn read_tag_first<M: FromTaggedMap>(text: &str) -> Option<(M, Option<RequestId>)> {
    let mut request_id = RequestIdSlot::default();
    let mut reader = serde_json::Deserializer::from_str(text);
    let visitor = TagFirst {
        request_id: &mut request_id,
        message: PhantomData,
    };
    let message = reader.deserialize_map(visitor).ok()?;
    reader.end().ok()?;
    let request_id = match request_id.value {
        None => None,
        Some(value) => Some(RequestId::from_json(value).ok()?),
    };
    Some((message, request_id))
}

/// The `request_id` the one pass found among the body's keys.
#[derive(Default)]
struct RequestIdSlot {
    /// Whether the key was present (a second one is an error).
    seen: bool,
    /// Its value; `null` reads as absent, as in [`Envelope`].
    value: Option<serde_json::Value>,
}

/// The one pass's visitor: the first key must be `tag`; the rest of the
/// object is the body of that tag, less its `request_id`.
struct TagFirst<'s, M> {
    request_id: &'s mut RequestIdSlot,
    message: PhantomData<M>,
}

impl<'de, M: FromTaggedMap> Visitor<'de> for TagFirst<'_, M> {
    type Value = M;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object whose first key is tag")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<M, A::Error> {
        if !matches!(map.next_key::<Key<'de>>()?, Some(Key::Tag)) {
            return Err(serde::de::Error::custom("the first key is not tag"));
        }
        let tag: i64 = map.next_value()?;
        M::from_map(
            tag,
            BodyEntries {
                map,
                request_id: self.request_id,
            },
        )
    }
}

/// An object's key as the one pass sorts it.
enum Key<'de> {
    /// `tag`.
    Tag,
    /// `request_id`.
    RequestId,
    /// Any other key, borrowed from the frame.
    Body(&'de str),
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Sorts a key; a key written with escapes (not borrowable) is an error, so
/// that frame goes to the two passes.
struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key without escapes")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(match key {
            "tag" => Key::Tag,
            "request_id" => Key::RequestId,
            other => Key::Body(other),
        })
    }
}

/// The object's entries after `tag`, as the body sees them: a `request_id`
/// is taken out into the slot, a second `tag` is an error.
struct BodyEntries<'s, A> {
    map: A,
    request_id: &'s mut RequestIdSlot,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for BodyEntries<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.map.next_key::<Key<'de>>()? {
                None => return Ok(None),
                Some(Key::Body(key)) => {
                    return seed
                        .deserialize(BorrowedStrDeserializer::new(key))
                        .map(Some)
                }
                Some(Key::Tag) => return Err(serde::de::Error::duplicate_field("tag")),
                Some(Key::RequestId) if self.request_id.seen => {
                    return Err(serde::de::Error::duplicate_field("request_id"))
                }
                Some(Key::RequestId) => {
                    self.request_id.seen = true;
                    self.request_id.value = self.map.next_value()?;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
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
    ENCODE_BUFFER
        .try_with(|buffer| {
            let mut buffer = buffer.try_borrow_mut().ok()?;
            buffer.clear();
            serde_json::to_writer(&mut *buffer, &framed).ok()?;
            let text = std::str::from_utf8(&buffer).ok()?.to_owned();
            if buffer.capacity() > ENCODE_BUFFER_KEPT_BYTES {
                *buffer = Vec::new();
            }
            Some(text)
        })
        .ok()
        .flatten()
        // Serialising plain structs of strings and numbers cannot fail: there
        // is no I/O and no map with non-string keys.
        .unwrap_or_else(|| {
            serde_json::to_string(&framed).unwrap_or_else(|_| format!("{{\"tag\":{tag}}}"))
        })
}

/// What [`ENCODE_BUFFER`] keeps between frames, at most: a larger frame (a
/// History or Sync page) is encoded in it once and the buffer let go.
const ENCODE_BUFFER_KEPT_BYTES: usize = 16 * 1024;

thread_local! {
    /// Each thread's buffer frames are encoded in before being copied out at
    /// their exact size. `serde_json::to_string` grew a fresh `Vec` from
    /// 128 bytes for every frame (a delivered message reallocated on the
    /// way) and left spare capacity, and a `String` with spare capacity
    /// costs tungstenite's `Bytes` a second allocation (a shared header)
    /// when the frame is written; a frame of exact size costs neither.
    static ENCODE_BUFFER: std::cell::RefCell<Vec<u8>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    use super::*;
    use crate::client::{decode_in_two_passes, ClientMessage};
    use crate::server::{decode_reply_in_two_passes, ServerMessage};

    /// Values of the right type for most keys, and wrong ones.
    const TEXTS: &[&str] = &[
        r#""bob""#,
        r#""a@b.co""#,
        r#""x\u0041\n\"q""#,
        r#""""#,
        "5",
        "null",
        "[]",
    ];
    const NUMBERS: &[&str] = &[
        "0",
        "42",
        "-7",
        "9223372036854775807",
        "18446744073709551615",
        "1.5",
        "1e3",
        r#""3""#,
        "null",
    ];
    const FLAGS: &[&str] = &["true", "false", "null", "1"];
    const LISTS: &[&str] = &["[]", r#"["bob","carol"]"#, "[1]", r#""bob""#, "{}"];
    const REQUEST_IDS: &[&str] = &[
        "7",
        r#""r-1""#,
        "null",
        "1.5",
        "true",
        "[1]",
        "-3",
        "18446744073709551615",
        r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
        r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
    ];
    const TAGS: &[&str] = &["11.0", r#""11""#, "null", "99", "-1", "0"];

    /// Every body key of both directions, the envelope's keys, an unknown
    /// key and keys written with escapes, each with its value pool.
    fn keys() -> Vec<(&'static str, &'static [&'static str])> {
        let mut keys: Vec<(&'static str, &'static [&'static str])> = vec![
            ("request_id", REQUEST_IDS),
            ("tag", NUMBERS),
            ("time", NUMBERS),
            ("x", TEXTS),
            (r#"con\u0074ent"#, TEXTS),
            (r#"ta\u0067"#, NUMBERS),
            ("receipts", FLAGS),
            ("is_encrypted", FLAGS),
            ("has_more", FLAGS),
            ("online", FLAGS),
            ("mutual", FLAGS),
            ("members", LISTS),
            ("data", LISTS),
        ];
        for text in [
            "username",
            "secret",
            "email",
            "session_id",
            "chat_id",
            "public_key",
            "content",
            "dest_id",
            "source_id",
            "message_id",
            "name",
            "error_type",
            "detail",
            "client_message_id",
            "address",
            "current",
        ] {
            keys.push((text, TEXTS));
        }
        for number in [
            "group_id",
            "before",
            "limit",
            "since",
            "through",
            "message_id",
            "ref_tag",
            "user_id",
            "confirmed_through",
            "created_at",
            "last_used_at",
            "last_activity",
        ] {
            keys.push((number, NUMBERS));
        }
        keys
    }

    /// Good frames of both directions, tag first, to splice entries into.
    const SAMPLES: &[&str] = &[
        r#"{"tag":11,"dest_id":"bob","content":"hi, \"you\"","message_id":"m1"}"#,
        r#"{"tag":11,"group_id":3,"content":"x","is_encrypted":true}"#,
        r#"{"tag":17,"through":9}"#,
        r#"{"tag":16,"since":0,"limit":10}"#,
        r#"{"tag":2,"username":"alice","secret":"password123","receipts":true}"#,
        r#"{"tag":8}"#,
        r#"{"tag":12,"name":"g","members":["bob","carol"]}"#,
        r#"{"tag":5,"chat_id":"g:1","before":7}"#,
        r#"{"tag":11,"message_id":5,"source_id":"alice","dest_id":"bob","content":"hi","is_encrypted":false,"time":1}"#,
        r#"{"tag":24,"time":1,"message_id":5,"client_message_id":"m1"}"#,
        r#"{"tag":37,"time":1,"username":"bob","through":5}"#,
        r#"{"tag":30,"time":1,"error_type":"bad_request","detail":"no","ref_tag":11}"#,
        r#"{"tag":32,"time":1}"#,
    ];

    /// One `"key":value` entry, any key with a value from its pool.
    fn entries() -> impl Strategy<Value = String> {
        let keys = keys();
        (0..keys.len(), 0..16usize).prop_map(move |(key, value)| {
            let (name, pool) = keys[key];
            format!(r#""{name}":{}"#, pool[value % pool.len()])
        })
    }

    /// A frame built from scratch: a tag (first, most of the time) and up
    /// to six other entries, duplicates possible, with optional whitespace.
    fn built_frames() -> impl Strategy<Value = String> {
        let tag = prop_oneof![
            4 => (1..=38i64).prop_map(|tag| tag.to_string()),
            1 => proptest::sample::select(TAGS).prop_map(str::to_string),
        ];
        (
            tag,
            proptest::collection::vec(entries(), 0..7),
            0..8usize,
            any::<bool>(),
        )
            .prop_map(|(tag, mut entries, at, spaced)| {
                let tag = format!(r#""tag":{tag}"#);
                // Tag first in half the frames (`at` 0–3), elsewhere or
                // missing in the rest.
                match at {
                    0..=3 => entries.insert(0, tag),
                    4..=6 => entries.insert(at.min(entries.len()), tag),
                    _ => {}
                }
                let separator = if spaced { " ,\n " } else { "," };
                let padding = if spaced { " " } else { "" };
                format!("{padding}{{{}}}{padding}", entries.join(separator))
            })
    }

    /// A good frame with up to three entries spliced in right after its tag
    /// and up to two before its end.
    fn spliced_frames() -> impl Strategy<Value = String> {
        (
            proptest::sample::select(SAMPLES),
            proptest::collection::vec(entries(), 0..4),
            proptest::collection::vec(entries(), 0..3),
        )
            .prop_map(|(sample, after_tag, at_end)| {
                let cut = sample.find([',', '}']).unwrap_or(sample.len() - 1);
                let (head, rest) = sample.split_at(cut);
                let body = &rest[..rest.len() - 1];
                let spliced = |entries: &[String]| -> String {
                    entries.iter().map(|entry| format!(",{entry}")).collect()
                };
                format!("{head}{}{body}{}}}", spliced(&after_tag), spliced(&at_end))
            })
    }

    fn frames() -> impl Strategy<Value = String> {
        prop_oneof![built_frames(), spliced_frames()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn one_pass_decodes_what_two_passes_decode(text in frames()) {
            if let Some((message, id)) = read_tag_first::<ClientMessage>(&text) {
                prop_assert_eq!((id, Ok(message)), decode_in_two_passes(&text), "{}", text);
            }
            if let Some(decoded) = read_tag_first::<ServerMessage>(&text) {
                prop_assert_eq!(Ok(decoded), decode_reply_in_two_passes(&text), "{}", text);
            }
            prop_assert_eq!(crate::decode_request(&text), decode_in_two_passes(&text));
            prop_assert_eq!(crate::decode_reply(&text), decode_reply_in_two_passes(&text));
        }
    }

    #[test]
    fn the_generated_frames_often_take_the_one_pass() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = frames();
        let (mut client, mut server) = (0, 0);
        for _ in 0..4096 {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            client += usize::from(read_tag_first::<ClientMessage>(&text).is_some());
            server += usize::from(read_tag_first::<ServerMessage>(&text).is_some());
        }
        assert!(
            client > 600 && server > 300,
            "client {client}, server {server}"
        );
    }

    #[test]
    fn frames_of_our_encoder_take_the_one_pass() {
        let id = RequestId::Text("r-1".into());
        let message = ClientMessage::Received(crate::client::Received { through: 9 });
        let text = crate::encode_request(&message, Some(&id));
        assert_eq!(read_tag_first(&text), Some((message, Some(id))));
        let pong = crate::encode_reply(&ServerMessage::Pong, 5, Some(&RequestId::Number(3)));
        assert_eq!(
            read_tag_first(&pong),
            Some((ServerMessage::Pong, Some(RequestId::Number(3))))
        );
    }

    /// Frames come out at their exact size, whatever was encoded before
    /// them, and a frame past the kept buffer size is whole.
    #[test]
    fn frames_are_encoded_at_their_exact_size() {
        let big = "x".repeat(3 * ENCODE_BUFFER_KEPT_BYTES);
        for content in ["hi", big.as_str(), "", "a\"b"] {
            let message = ClientMessage::Message(crate::client::SendMessage {
                dest_id: Some("bob".into()),
                group_id: None,
                content: content.into(),
                message_id: None,
                source_id: None,
                is_encrypted: false,
            });
            let text = crate::encode_client(&message);
            assert_eq!(text.capacity(), text.len());
            assert_eq!(crate::decode_client(&text), Ok(message));
        }
        ENCODE_BUFFER.with(|buffer| {
            assert!(buffer.borrow().capacity() <= ENCODE_BUFFER_KEPT_BYTES);
        });
    }

    #[test]
    fn other_frames_are_left_to_the_two_passes() {
        for text in [
            r#"{"time":1,"tag":8}"#,
            r#"{"tag":8,"tag":8}"#,
            r#"{"tag":8,"request_id":1,"request_id":2}"#,
            r#"{"tag":8,"request_id":true}"#,
            r#"{"tag":8.0}"#,
            r#"{"ta\u0067":8}"#,
            r#"{"tag":99}"#,
            r#"{"tag":8} x"#,
            "[8]",
        ] {
            assert_eq!(read_tag_first::<ClientMessage>(text), None, "{text}");
        }
    }
}
