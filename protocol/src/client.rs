//! Client → server messages (tags 1–17).

use serde::{Deserialize, Serialize};

use crate::envelope::{read_head, read_tag_first};
use crate::error::DecodeError;
use crate::request_id::RequestId;
use crate::table::wire_messages;

/// Tag 1: create an account. Never logs the connection in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// 3–32 characters of `A-Z a-z 0-9 _ . -`.
    pub username: String,
    /// The password; at least 8 characters.
    pub secret: String,
    /// A non-empty local part, one `@`, and a domain containing a dot.
    pub email: String,
}

/// Tag 2: log in with a password (`secret`) or resume a session (`session_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// The account to log in as.
    pub username: String,
    /// The password, for a fresh login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A session id from an earlier SuccessLogin, to resume without a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Opt this connection into per-device receipts (1.1): confirm with
    /// [`Received`]; messages count as delivered only once confirmed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receipts: bool,
}

/// Tag 3: end this connection's session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logout {
    /// If present, must be the logged-in user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Tag 5: a page of one conversation's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetHistory {
    /// The other user's username, or `g:<group_id>`.
    pub chat_id: String,
    /// Only messages with a smaller `message_id` (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// Page size, 1–200 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Tags 6 and 7, and 10: a request naming one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    /// The user the request is about.
    pub username: String,
}

/// Tag 9: publish the caller's public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishKey {
    /// The key, as the client encodes it; at most 4 KiB.
    pub public_key: String,
}

/// Tag 11 from a client: send a message to a user or a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// The recipient's username (exactly one of `dest_id`, `group_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_id: Option<String>,
    /// The recipient group (exactly one of `dest_id`, `group_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<i64>,
    /// The text (or ciphertext) of the message.
    pub content: String,
    /// The client's own id for the message, echoed in the Ack; ≤ 64 chars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// If present, must be the logged-in username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// Whether `content` is end-to-end encrypted.
    #[serde(default)]
    pub is_encrypted: bool,
}

/// Tag 12: create a group with the caller and `members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroup {
    /// The group's display name.
    pub name: String,
    /// Usernames to add besides the creator.
    pub members: Vec<String>,
}

/// Tag 13: add members to a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddGroupMembers {
    /// The group.
    pub group_id: i64,
    /// Usernames to add.
    pub members: Vec<String>,
}

/// Tag 14: leave a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveGroup {
    /// The group.
    pub group_id: i64,
}

/// Tag 16: everything sent or received after a message id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// Only messages with a larger `message_id`; 0 for everything.
    pub since: i64,
    /// Page size, 1–1000 (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Tag 17 (1.1): this device holds every message addressed to the user with
/// an id up to `through` (cumulative; only after a login with `receipts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The highest message id the device holds everything up to.
    pub through: i64,
}

/// A body with no fields (GetDirectory, Ping, GetGroups, GetSessions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

wire_messages! {
    /// Every message a client may send.
    enum ClientMessage;
    /// Every client → server tag, by name (a reply's `ref_tag` names one).
    tags ClientTag;
    1 => Register(Register), "Tag 1: create an account.";
    2 => Login(Login), "Tag 2: log in with a password or resume a session.";
    3 => Logout(Logout), "Tag 3: end the session.";
    4 => GetDirectory, "Tag 4: the caller's contacts.";
    5 => GetHistory(GetHistory), "Tag 5: a page of one conversation.";
    6 => AddContact(UserRef), "Tag 6: add a contact.";
    7 => RemoveContact(UserRef), "Tag 7: remove a contact.";
    8 => Ping, "Tag 8: are you there (answered with Pong).";
    9 => PublishKey(PublishKey), "Tag 9: publish one's public key.";
    10 => GetKey(UserRef), "Tag 10: read a user's public key.";
    11 => Message(SendMessage), "Tag 11: send a message to a user or a group.";
    12 => CreateGroup(CreateGroup), "Tag 12: create a group.";
    13 => AddGroupMembers(AddGroupMembers), "Tag 13: add members to a group.";
    14 => LeaveGroup(LeaveGroup), "Tag 14: leave a group.";
    15 => GetGroups, "Tag 15: the caller's groups.";
    16 => Sync(Sync), "Tag 16: everything sent or received after a message id.";
    17 => Received(Received), "Tag 17 (1.1): confirm holding messages (receipts).";
    18 => GetSessions, "Tag 18 (extension): the caller's sessions (devices).";
}

/// Decodes one text frame from a client.
///
/// Unknown fields are ignored; a client's `time` and `request_id` are
/// ignored (see [`decode_request`] for the latter).
pub fn decode_client(text: &str) -> Result<ClientMessage, DecodeError> {
    decode_request(text).1
}

/// Decodes one text frame from a client together with its `request_id`.
///
/// The request id comes back even when the body is bad, so the `Error` that
/// answers it can carry it; a `request_id` of the wrong type or over 64
/// characters is itself a `bad_request` (and then none is echoed).
pub fn decode_request(text: &str) -> (Option<RequestId>, Result<ClientMessage, DecodeError>) {
    match read_tag_first(text) {
        Some((message, request_id)) => (request_id, Ok(message)),
        None => decode_in_two_passes(text),
    }
}

/// [`decode_request`] by its definition: the tag first, then the body of that
/// tag (every frame the one pass does not take, and every error).
pub(crate) fn decode_in_two_passes(
    text: &str,
) -> (Option<RequestId>, Result<ClientMessage, DecodeError>) {
    let head = match read_head(text) {
        Ok(head) => head,
        Err(error) => return (None, Err(error)),
    };
    let tag = head.tag;
    if let Some(why) = head.bad_request_id {
        let error = match ClientTag::from_number(tag).is_some() {
            true => DecodeError::BadField {
                tag,
                detail: why.to_string(),
            },
            false => DecodeError::UnknownTag(tag),
        };
        return (None, Err(error));
    }
    (head.request_id, decode_body(tag, text))
}

/// Encodes a client message carrying `request_id` (protocol 1.1): every
/// reply to it will carry the same id.
pub fn encode_request(message: &ClientMessage, request_id: Option<&RequestId>) -> String {
    encode_body(message, None, request_id)
}

/// Encodes a client message as a frame (without `time`, which is optional).
pub fn encode_client(message: &ClientMessage) -> String {
    encode_request(message, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: ClientMessage) {
        let text = encode_client(&message);
        assert_eq!(decode_client(&text), Ok(message), "frame {text}");
    }

    #[test]
    fn every_client_tag_round_trips() {
        round_trip(ClientMessage::Register(Register {
            username: "alice".into(),
            secret: "password123".into(),
            email: "a@example.com".into(),
        }));
        round_trip(ClientMessage::Login(Login {
            username: "alice".into(),
            secret: Some("password123".into()),
            session_id: None,
            receipts: false,
        }));
        round_trip(ClientMessage::Login(Login {
            username: "alice".into(),
            secret: None,
            session_id: Some("5f0c0d3e-0000-4000-8000-000000000000".into()),
            receipts: true,
        }));
        round_trip(ClientMessage::Logout(Logout {
            username: Some("alice".into()),
        }));
        round_trip(ClientMessage::Logout(Logout::default()));
        round_trip(ClientMessage::GetDirectory);
        round_trip(ClientMessage::GetHistory(GetHistory {
            chat_id: "bob".into(),
            before: Some(10),
            limit: Some(20),
        }));
        round_trip(ClientMessage::AddContact(UserRef {
            username: "bob".into(),
        }));
        round_trip(ClientMessage::RemoveContact(UserRef {
            username: "bob".into(),
        }));
        round_trip(ClientMessage::Ping);
        round_trip(ClientMessage::PublishKey(PublishKey {
            public_key: "AAAA".into(),
        }));
        round_trip(ClientMessage::GetKey(UserRef {
            username: "bob".into(),
        }));
        round_trip(ClientMessage::Message(SendMessage {
            dest_id: Some("bob".into()),
            group_id: None,
            content: "hi \"there\" ✓".into(),
            message_id: Some("c-1".into()),
            source_id: Some("alice".into()),
            is_encrypted: true,
        }));
        round_trip(ClientMessage::CreateGroup(CreateGroup {
            name: "team".into(),
            members: vec!["bob".into(), "carol".into()],
        }));
        round_trip(ClientMessage::AddGroupMembers(AddGroupMembers {
            group_id: 3,
            members: vec!["dave".into()],
        }));
        round_trip(ClientMessage::LeaveGroup(LeaveGroup { group_id: 3 }));
        round_trip(ClientMessage::GetGroups);
        round_trip(ClientMessage::GetSessions);
        round_trip(ClientMessage::Sync(Sync {
            since: 42,
            limit: None,
        }));
        round_trip(ClientMessage::Received(Received { through: 42 }));
    }

    #[test]
    fn decodes_the_original_login_request_verbatim() {
        let text = r#"{
    "tag": 2,
    "username": "alice",
    "secret": "password123",
    "time": 1640995200
}"#;
        assert_eq!(
            decode_client(text),
            Ok(ClientMessage::Login(Login {
                username: "alice".into(),
                secret: Some("password123".into()),
                session_id: None,
                receipts: false,
            }))
        );
    }

    #[test]
    fn decodes_the_original_message_verbatim() {
        let text = r#"{
    "tag": 11,
    "message_id": "msg_123",
    "source_id": "alice",
    "dest_id": "bob",
    "content": "Hello, Bob!",
    "time": 1640995300
}"#;
        assert_eq!(
            decode_client(text),
            Ok(ClientMessage::Message(SendMessage {
                dest_id: Some("bob".into()),
                group_id: None,
                content: "Hello, Bob!".into(),
                message_id: Some("msg_123".into()),
                source_id: Some("alice".into()),
                is_encrypted: false,
            }))
        );
    }

    #[test]
    fn not_json_is_bad_request_without_ref_tag() {
        let error = decode_client("hello").unwrap_err();
        assert!(matches!(error, DecodeError::NotJson(_)));
        assert_eq!(error.ref_tag(), None);
        assert_eq!(error.error_type(), crate::ErrorType::BadRequest);
        assert!(matches!(
            decode_client(r#"{"tag": 2, "username": "#),
            Err(DecodeError::NotJson(_))
        ));
    }

    #[test]
    fn non_objects_are_rejected() {
        for text in ["[2]", "2", "\"tag\"", "null", "[]"] {
            assert_eq!(decode_client(text), Err(DecodeError::NotAnObject), "{text}");
        }
    }

    #[test]
    fn tag_must_be_present_and_an_integer() {
        assert_eq!(decode_client("{}"), Err(DecodeError::MissingTag));
        assert_eq!(
            decode_client(r#"{"tag": "2"}"#),
            Err(DecodeError::TagNotInteger)
        );
        assert_eq!(
            decode_client(r#"{"tag": 2.5}"#),
            Err(DecodeError::TagNotInteger)
        );
        assert_eq!(
            decode_client(r#"{"tag": null}"#),
            Err(DecodeError::MissingTag)
        );
    }

    #[test]
    fn unknown_tags_carry_their_tag() {
        for tag in [0, 19, 21, 99, -1] {
            let error = decode_client(&format!(r#"{{"tag": {tag}}}"#)).unwrap_err();
            assert_eq!(error, DecodeError::UnknownTag(tag));
            assert_eq!(error.error_type(), crate::ErrorType::UnknownTag);
            assert_eq!(error.ref_tag(), Some(tag));
        }
    }

    #[test]
    fn missing_or_mistyped_fields_are_bad_fields_with_the_tag() {
        let cases = [
            (r#"{"tag": 1, "username": "a", "secret": "s"}"#, 1),
            (r#"{"tag": 2, "secret": "s"}"#, 2),
            (r#"{"tag": 5, "chat_id": 5}"#, 5),
            (r#"{"tag": 5, "chat_id": "bob", "before": "x"}"#, 5),
            (r#"{"tag": 11, "dest_id": "bob"}"#, 11),
            (r#"{"tag": 11, "dest_id": "bob", "content": 1}"#, 11),
            (
                r#"{"tag": 11, "dest_id": "b", "content": "c", "is_encrypted": "y"}"#,
                11,
            ),
            (r#"{"tag": 16}"#, 16),
        ];
        for (text, tag) in cases {
            let error = decode_client(text).unwrap_err();
            assert!(
                matches!(&error, DecodeError::BadField { tag: t, .. } if *t == tag),
                "{text}: {error:?}"
            );
            assert_eq!(error.ref_tag(), Some(tag));
        }
    }

    #[test]
    fn request_ids_round_trip_as_numbers_and_strings() {
        for id in [RequestId::Number(7), RequestId::Text("r-1".into())] {
            let text = encode_request(&ClientMessage::Ping, Some(&id));
            assert_eq!(decode_request(&text), (Some(id), Ok(ClientMessage::Ping)));
        }
        assert_eq!(
            decode_request(r#"{"tag": 8}"#),
            (None, Ok(ClientMessage::Ping))
        );
    }

    #[test]
    fn a_request_id_survives_a_bad_body() {
        let (id, result) = decode_request(r#"{"tag": 16, "request_id": "s1"}"#);
        assert_eq!(id, Some(RequestId::Text("s1".into())));
        assert!(matches!(result, Err(DecodeError::BadField { tag: 16, .. })));
        let (id, result) = decode_request(r#"{"tag": 99, "request_id": 3}"#);
        assert_eq!(id, Some(RequestId::Number(3)));
        assert_eq!(result, Err(DecodeError::UnknownTag(99)));
    }

    #[test]
    fn a_bad_request_id_is_bad_request_with_the_tag() {
        let long = "x".repeat(65);
        for text in [
            r#"{"tag": 8, "request_id": true}"#.to_string(),
            r#"{"tag": 8, "request_id": 1.5}"#.to_string(),
            r#"{"tag": 8, "request_id": [1]}"#.to_string(),
            format!(r#"{{"tag": 8, "request_id": "{long}"}}"#),
        ] {
            let (id, result) = decode_request(&text);
            assert_eq!(id, None, "{text}");
            let error = result.unwrap_err();
            assert_eq!(error.error_type(), crate::ErrorType::BadRequest, "{text}");
            assert_eq!(error.ref_tag(), Some(8), "{text}");
        }
        let ok = format!(r#"{{"tag": 8, "request_id": "{}"}}"#, "x".repeat(64));
        assert!(decode_request(&ok).1.is_ok());
    }

    #[test]
    fn unknown_fields_and_client_time_are_ignored() {
        assert_eq!(
            decode_client(r#"{"tag": 8, "time": 5, "extra": {"a": [1, 2]}}"#),
            Ok(ClientMessage::Ping)
        );
    }
}
