//! Server → client messages (tags 11 and 21–37).

use serde::{Deserialize, Serialize};

use crate::envelope::{read_head, read_tag_first, write_framed};
use crate::error::{DecodeError, ErrorType};
use crate::request_id::RequestId;
use crate::table::wire_messages;

/// Tag 11 from the server: a stored message, as pushed to a recipient and as
/// listed in History and Synced pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The server's id: an integer that only grows.
    pub message_id: i64,
    /// The sender's username.
    pub source_id: String,
    /// The recipient's username (1:1 messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_id: Option<String>,
    /// The recipient group (group messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<i64>,
    /// The text (or ciphertext).
    pub content: String,
    /// Whether `content` is end-to-end encrypted.
    #[serde(default)]
    pub is_encrypted: bool,
    /// When the server accepted the message, Unix seconds.
    pub time: i64,
}

/// Tag 21.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessRegister {
    /// The new account's name.
    pub username: String,
    /// The new account's id.
    pub user_id: i64,
}

/// Tag 22. The original system sent no `session_id`; this server always does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessLogin {
    /// The logged-in account.
    pub username: String,
    /// Its id.
    pub user_id: i64,
    /// A UUID v4 that resumes this session with Login{session_id}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// Tag 23.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessLogout {
    /// The account that logged out.
    pub username: String,
}

/// Tag 24: the message is committed to the database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The server's id for the message.
    pub message_id: i64,
    /// The client's own `message_id`, or null.
    #[serde(default)]
    pub client_message_id: Option<String>,
}

/// Tag 25: one page of a conversation, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The `chat_id` that was asked for.
    pub chat_id: String,
    /// The messages, oldest first.
    pub data: Vec<Delivered>,
    /// Older messages exist before this page.
    pub has_more: bool,
}

/// One row of a Directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// The contact's username.
    pub username: String,
    /// The contact's id.
    pub user_id: i64,
    /// The contact has added the caller too.
    pub mutual: bool,
    /// Connected now; only ever true for a mutual contact.
    pub online: bool,
    /// Unix seconds of the contact's last login or disconnect; null for a
    /// non-mutual contact or a user never seen.
    pub last_activity: Option<i64>,
}

/// Tag 26: the caller's contacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// One entry per user the caller has added, by username.
    pub data: Vec<DirectoryEntry>,
}

/// Tag 27: a mutual contact came online or went offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The contact.
    pub username: String,
    /// Whether they are connected now.
    pub online: bool,
}

/// Why a Register failed (tag 28).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterError {
    /// The username exists.
    UsernameTaken,
    /// Not 3–32 characters of `A-Z a-z 0-9 _ . -`.
    InvalidUsername,
    /// Not `local@domain.tld`.
    InvalidEmail,
    /// Fewer than 8 characters.
    WeakSecret,
    /// Too many registrations; try later.
    RateLimited,
}

/// Tag 28.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailRegister {
    /// Why.
    pub error_type: RegisterError,
}

/// Why a Login failed (tag 29).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginError {
    /// Unknown user or wrong secret (deliberately indistinguishable).
    InvalidCredentials,
    /// The session id is unknown, expired, logged out, or another user's.
    InvalidSession,
    /// This connection is already logged in (and stays so).
    AlreadyLoggedIn,
    /// Too many attempts; try later.
    RateLimited,
}

/// Tag 29.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailLogin {
    /// Why.
    pub error_type: LoginError,
}

/// Tag 30: a request could not be served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// The category.
    pub error_type: ErrorType,
    /// Human-readable detail.
    pub detail: String,
    /// The request's tag when it had one, else null.
    #[serde(default)]
    pub ref_tag: Option<i64>,
}

/// Tag 31: someone added the recipient, who has not added them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRequest {
    /// Who added you.
    pub username: String,
}

/// Tag 33.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// Whose key.
    pub username: String,
    /// The published key, or null.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// Tag 34 (and the rows of tag 35).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group.
    pub group_id: i64,
    /// Its display name.
    pub name: String,
    /// Its members' usernames.
    pub members: Vec<String>,
}

/// Tag 35.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    /// The caller's groups.
    pub data: Vec<GroupInfo>,
}

/// Tag 36: a page of everything after `since`, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    /// The messages, oldest first.
    pub data: Vec<Delivered>,
    /// More messages exist after this page.
    pub has_more: bool,
}

/// Tag 38 (extension): the caller's sessions — one per device that logged
/// in with a password and can still resume — oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    /// The sessions.
    pub data: Vec<SessionInfo>,
}

/// One session of tag 38. The session id itself is never sent (the server
/// keeps only its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Unix seconds of the password login that created it.
    pub created_at: i64,
    /// Unix seconds of its last login or departure.
    pub last_used_at: i64,
    /// The address it last logged in from, if recorded.
    #[serde(default)]
    pub address: Option<String>,
    /// The highest message id this device confirmed (receipts; 0 if none).
    pub confirmed_through: i64,
    /// The session of the connection that asked.
    pub current: bool,
    /// A connection is logged in with it now.
    pub online: bool,
}

/// Tag 37 (1.1): every 1:1 message from the receiver of this frame to
/// `username` with an id up to `through` is confirmed by one of their devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReceipt {
    /// The recipient who confirmed.
    pub username: String,
    /// Everything sent to them up to this id is delivered.
    pub through: i64,
}

wire_messages! {
    /// Every message the server sends.
    enum ServerMessage;
    /// Every server → client tag, by name.
    tags ServerTag;
    11 => Message(Delivered), "Tag 11: a message delivered (a push).";
    21 => SuccessRegister(SuccessRegister), "Tag 21: the account is created.";
    22 => SuccessLogin(SuccessLogin), "Tag 22: logged in.";
    23 => SuccessLogout(SuccessLogout), "Tag 23: logged out.";
    24 => Ack(Ack), "Tag 24: a message is stored.";
    25 => History(History), "Tag 25: a page of a conversation.";
    26 => Directory(Directory), "Tag 26: the caller's contacts.";
    27 => Presence(Presence), "Tag 27: a contact came or went (a push).";
    28 => FailRegister(FailRegister), "Tag 28: registration refused.";
    29 => FailLogin(FailLogin), "Tag 29: login refused.";
    30 => Error(Error), "Tag 30: a request failed.";
    31 => ContactRequest(ContactRequest), "Tag 31: someone added you (a push).";
    32 => Pong, "Tag 32: the answer to Ping.";
    33 => Key(Key), "Tag 33: a user's public key.";
    34 => GroupInfo(GroupInfo), "Tag 34: a group's members.";
    35 => Groups(Groups), "Tag 35: the caller's groups.";
    36 => Synced(Synced), "Tag 36: a page of Sync.";
    37 => Delivered(DeliveryReceipt), "Tag 37 (1.1): a delivery receipt (a push).";
    38 => Sessions(Sessions), "Tag 38 (extension): the caller's sessions.";
}

impl ServerMessage {
    /// Whether this is a reply to a request (and so carries the request's
    /// `request_id`): everything but the pushes 11, 27 and 31. A GroupInfo
    /// (34) is a reply only on the requesting connection; the caller decides
    /// that by where it sends it.
    pub fn is_reply(&self) -> bool {
        !matches!(
            self,
            ServerMessage::Message(_)
                | ServerMessage::Presence(_)
                | ServerMessage::ContactRequest(_)
                | ServerMessage::Delivered(_)
        )
    }

    /// An `Error` frame.
    pub fn error(error_type: ErrorType, detail: impl Into<String>, ref_tag: Option<i64>) -> Self {
        ServerMessage::Error(Error {
            error_type,
            detail: detail.into(),
            ref_tag,
        })
    }
}

/// Encodes a server message; `now` (Unix seconds) becomes its `time`, except
/// for a delivered Message, whose `time` is when it was accepted.
pub fn encode_server(message: &ServerMessage, now: i64) -> String {
    encode_reply(message, now, None)
}

/// Encodes a server message answering the request `request_id` (protocol
/// 1.1); a push ([`ServerMessage::is_reply`] false) never carries one.
pub fn encode_reply(message: &ServerMessage, now: i64, request_id: Option<&RequestId>) -> String {
    let time = Some(now);
    let id = request_id.filter(|_| message.is_reply());
    match message {
        ServerMessage::Message(body) => encode_delivered(body),
        other => encode_body(other, time, id),
    }
}

/// Encodes a delivered message (tag 11) without wrapping it in a
/// [`ServerMessage`]; its own `time` is the frame's time.
pub fn encode_delivered(message: &Delivered) -> String {
    write_framed(ServerTag::Message as u8, None, None, message)
}

/// Decodes one text frame from the server (for clients and tests).
pub fn decode_server(text: &str) -> Result<ServerMessage, DecodeError> {
    decode_reply(text).map(|(message, _)| message)
}

/// Decodes one text frame from the server with the `request_id` it echoes
/// (none on pushes and on replies to requests that carried none). A
/// malformed `request_id` from a server is read as none.
pub fn decode_reply(text: &str) -> Result<(ServerMessage, Option<RequestId>), DecodeError> {
    match read_tag_first(text) {
        Some(decoded) => Ok(decoded),
        None => decode_reply_in_two_passes(text),
    }
}

/// [`decode_reply`] by its definition: the tag first, then the body of that
/// tag (every frame the one pass does not take, and every error).
pub(crate) fn decode_reply_in_two_passes(
    text: &str,
) -> Result<(ServerMessage, Option<RequestId>), DecodeError> {
    let head = read_head(text)?;
    Ok((decode_body(head.tag, text)?, head.request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(id: i64) -> Delivered {
        Delivered {
            message_id: id,
            source_id: "alice".into(),
            dest_id: Some("bob".into()),
            group_id: None,
            content: "hello".into(),
            is_encrypted: false,
            time: 1_700_000_000,
        }
    }

    fn round_trip(message: ServerMessage) {
        let text = encode_server(&message, 1_700_000_001);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["tag"], message.tag(), "{text}");
        assert!(
            value["time"].is_i64(),
            "every server frame has time: {text}"
        );
        assert_eq!(decode_server(&text), Ok(message), "frame {text}");
    }

    #[test]
    fn every_server_tag_round_trips_with_time() {
        let group = GroupInfo {
            group_id: 7,
            name: "team".into(),
            members: vec!["alice".into(), "bob".into()],
        };
        let messages = vec![
            ServerMessage::Message(delivered(1)),
            ServerMessage::SuccessRegister(SuccessRegister {
                username: "alice".into(),
                user_id: 1,
            }),
            ServerMessage::SuccessLogin(SuccessLogin {
                username: "alice".into(),
                user_id: 1,
                session_id: Some("9d5c2f8e-6b1a-4c3d-8e2f-1a2b3c4d5e6f".into()),
            }),
            ServerMessage::SuccessLogout(SuccessLogout {
                username: "alice".into(),
            }),
            ServerMessage::Ack(Ack {
                message_id: 5,
                client_message_id: Some("c1".into()),
            }),
            ServerMessage::Ack(Ack {
                message_id: 6,
                client_message_id: None,
            }),
            ServerMessage::History(History {
                chat_id: "bob".into(),
                data: vec![delivered(1), delivered(2)],
                has_more: true,
            }),
            ServerMessage::Directory(Directory {
                data: vec![DirectoryEntry {
                    username: "bob".into(),
                    user_id: 2,
                    mutual: true,
                    online: false,
                    last_activity: Some(1_700_000_000),
                }],
            }),
            ServerMessage::Presence(Presence {
                username: "bob".into(),
                online: true,
            }),
            ServerMessage::FailRegister(FailRegister {
                error_type: RegisterError::UsernameTaken,
            }),
            ServerMessage::FailLogin(FailLogin {
                error_type: LoginError::InvalidCredentials,
            }),
            ServerMessage::error(ErrorType::BadRequest, "frame is not JSON", None),
            ServerMessage::error(ErrorType::Forbidden, "not you", Some(11)),
            ServerMessage::ContactRequest(ContactRequest {
                username: "carol".into(),
            }),
            ServerMessage::Pong,
            ServerMessage::Key(Key {
                username: "bob".into(),
                public_key: None,
            }),
            ServerMessage::GroupInfo(group.clone()),
            ServerMessage::Groups(Groups { data: vec![group] }),
            ServerMessage::Synced(Synced {
                data: vec![delivered(3)],
                has_more: false,
            }),
            ServerMessage::Delivered(DeliveryReceipt {
                username: "bob".into(),
                through: 9,
            }),
            ServerMessage::Sessions(Sessions {
                data: vec![SessionInfo {
                    created_at: 1,
                    last_used_at: 2,
                    address: Some("127.0.0.1".into()),
                    confirmed_through: 7,
                    current: true,
                    online: true,
                }],
            }),
        ];
        for message in messages {
            round_trip(message);
        }
    }

    #[test]
    fn nulls_are_written_where_the_protocol_says_null() {
        let ack = encode_server(
            &ServerMessage::Ack(Ack {
                message_id: 1,
                client_message_id: None,
            }),
            0,
        );
        assert!(ack.contains(r#""client_message_id":null"#), "{ack}");
        let error = encode_server(&ServerMessage::error(ErrorType::BadRequest, "x", None), 0);
        assert!(error.contains(r#""ref_tag":null"#), "{error}");
        assert!(error.contains(r#""error_type":"bad_request""#), "{error}");
    }

    #[test]
    fn replies_echo_the_request_id_and_pushes_never_do() {
        let id = RequestId::Text("r7".into());
        let pong = encode_reply(&ServerMessage::Pong, 1, Some(&id));
        assert_eq!(
            decode_reply(&pong),
            Ok((ServerMessage::Pong, Some(id.clone())))
        );
        let number = RequestId::Number(42);
        let error = encode_reply(
            &ServerMessage::error(ErrorType::UnknownUser, "x", Some(10)),
            1,
            Some(&number),
        );
        assert!(error.contains(r#""request_id":42"#), "{error}");
        for push in [
            ServerMessage::Message(delivered(1)),
            ServerMessage::Presence(Presence {
                username: "bob".into(),
                online: true,
            }),
            ServerMessage::ContactRequest(ContactRequest {
                username: "bob".into(),
            }),
        ] {
            let text = encode_reply(&push, 1, Some(&id));
            assert!(!text.contains("request_id"), "{text}");
            assert_eq!(decode_reply(&text), Ok((push, None)));
        }
    }

    #[test]
    fn a_delivered_message_keeps_its_own_time() {
        let text = encode_server(&ServerMessage::Message(delivered(1)), 5);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["time"], 1_700_000_000);
        assert_eq!(value["message_id"], 1);
    }

    #[test]
    fn decodes_the_original_success_login_verbatim() {
        let text = r#"{
    "tag": 22,
    "username": "alice",
    "user_id": 1,
    "time": 1640995201
}"#;
        assert_eq!(
            decode_server(text),
            Ok(ServerMessage::SuccessLogin(SuccessLogin {
                username: "alice".into(),
                user_id: 1,
                session_id: None,
            }))
        );
    }
}
