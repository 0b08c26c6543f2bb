//! No input can panic the server: property tests push random bytes, random
//! JSON and valid-but-hostile messages through decoding and the dispatcher
//! (and its storage replies), and a fuzz-style run sends thousands of random
//! frames over real sockets before checking that a normal client is served.

mod common;

use std::time::Duration;

use proptest::prelude::*;
use protocol::decode_server;
use serde_json::{json, Map, Value};
use server::completion::{Completion, ConnId, Requester};
use server::dispatcher::{DispatchLimits, Dispatcher, Effects};
use server::hasher::HashDone;
use server::rate_limit::RateConfig;
use server::storage::{Command, Reply, Snapshot};

use common::{logged_in, register_all, Client, TestServer};

const NOW: i64 = 1_700_000_000;
const ANONYMOUS: ConnId = ConnId { slot: 1, serial: 1 };
const ALICE: ConnId = ConnId { slot: 2, serial: 2 };

/// A dispatcher with three users; `ALICE` is logged in, `ANONYMOUS` is not.
fn dispatcher() -> Dispatcher {
    let snapshot = Snapshot {
        users: vec![("alice".into(), 1), ("bob".into(), 2), ("carol".into(), 3)],
        next_message_id: 1,
        groups: vec![],
        recovered_from_crash: false,
    };
    let limits = DispatchLimits {
        storage_backlog_max: 1000,
        rates: Some(RateConfig::default()),
        max_group_size: 10,
        cluster: false,
    };
    let mut d = Dispatcher::new(snapshot, limits);
    let peer = "127.0.0.1:40000".parse().unwrap();
    d.connected(ANONYMOUS, peer);
    d.connected(ALICE, peer);
    let mut fx = Effects::default();
    d.handle_text(
        ALICE,
        r#"{"tag":2,"username":"alice","session_id":"s"}"#,
        NOW,
        &mut fx,
    );
    let reply = Reply::SessionOpened {
        to: Requester::anonymous(ALICE),
        queued: vec![],
        more_queued: false,
        mutual_contacts: vec![2],
        confirmed_through: 0,
        queue_before: 1,
    };
    d.complete(Completion::Storage(reply), NOW, &mut Effects::default());
    d
}

/// Every frame the dispatcher produced decodes as a server message.
fn assert_frames_decode(fx: &Effects) {
    for text in fx.frames.iter().map(|out| &out.frame) {
        assert!(decode_server(text).is_ok(), "undecodable frame {text}");
    }
}

/// Feeds a storage reply (or hash result) for each command/job, as the
/// storage thread would, so the completion paths see hostile values too.
fn complete_everything(d: &mut Dispatcher, fx: Effects) {
    for command in fx
        .storage
        .into_iter()
        .chain(fx.after_flush.into_iter().map(|(_, c)| c))
    {
        let reply = match command {
            Command::CreateUser { to, username, .. } => Some(Reply::UserCreated {
                to,
                username,
                user_id: Some(99),
            }),
            Command::FetchCredentials { to, .. } => Some(Reply::Credentials { to, found: None }),
            Command::StoreMessage {
                to,
                ticket,
                client_message_id,
                message,
            } => Some(Reply::MessageStored {
                to,
                ticket,
                message_id: message.message_id,
                client_message_id,
                duplicate_of: None,
                stored: Some(message),
            }),
            Command::CreateGroup {
                to,
                name,
                member_ids,
                ..
            } => Some(Reply::GroupChanged {
                to,
                group: server::storage::GroupRow {
                    group_id: 5,
                    name,
                    members: member_ids
                        .iter()
                        .map(|id| (*id, format!("user{id}")))
                        .collect(),
                },
            }),
            command => command.requester().map(|(to, tag)| Reply::Failed {
                to: to.clone(),
                ref_tag: tag,
                ticket: None,
                reason: "simulated".into(),
            }),
        };
        if let Some(reply) = reply {
            let mut more = Effects::default();
            d.complete(Completion::Storage(reply), NOW, &mut more);
            assert_frames_decode(&more);
        }
    }
    for job in fx.hashing {
        let done = match job {
            server::hasher::HashJob::Verify { to, user_id, .. } => {
                HashDone::Verified { to, user_id }
            }
            server::hasher::HashJob::Derive {
                to,
                username,
                email,
                secret,
                ..
            } => HashDone::Derived {
                to,
                username,
                email,
                hash: server::password::hash_password(&secret, 1),
            },
        };
        d.complete(Completion::Hash(done), NOW, &mut Effects::default());
    }
}

fn dispatch(d: &mut Dispatcher, conn: ConnId, text: &str) {
    let mut fx = Effects::default();
    d.handle_text(conn, text, NOW, &mut fx);
    assert_frames_decode(&fx);
    assert!(
        !fx.frames.is_empty()
            || !fx.storage.is_empty()
            || !fx.hashing.is_empty()
            || !fx.closes.is_empty(),
        "no answer at all to {text}"
    );
    complete_everything(d, fx);
}

/// Field names the protocol uses, so random objects hit real code paths.
const FIELDS: &[&str] = &[
    "username",
    "secret",
    "email",
    "session_id",
    "chat_id",
    "before",
    "limit",
    "public_key",
    "dest_id",
    "group_id",
    "content",
    "message_id",
    "source_id",
    "is_encrypted",
    "since",
    "name",
    "members",
    "time",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just("alice"),
            Just("bob"),
            Just("g:1"),
            Just(""),
            Just("\u{0}")
        ]
        .prop_map(Value::from),
        ".{0,80}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object with a tag (usually a real one) and random protocol fields.
fn hostile_object() -> impl Strategy<Value = Value> {
    let tag = prop_oneof![8 => 1i64..=16, 1 => any::<i64>().prop_map(Value::from).prop_map(|v| v.as_i64().unwrap_or(0))];
    let fields = prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..8);
    (tag, fields).prop_map(|(tag, fields)| {
        let mut object = Map::new();
        object.insert("tag".into(), Value::from(tag));
        for (name, value) in fields {
            object.insert(name.to_string(), value);
        }
        Value::Object(object)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Random text never panics the decoder.
    #[test]
    fn decoding_random_text_never_panics(text in "\\PC{0,300}") {
        let _ = protocol::decode_client(&text);
    }

    /// Random JSON of any shape gets an answer and never panics dispatch,
    /// logged in or not.
    #[test]
    fn random_json_is_answered_without_panicking(value in json_value()) {
        let mut d = dispatcher();
        let text = value.to_string();
        dispatch(&mut d, ANONYMOUS, &text);
        dispatch(&mut d, ALICE, &text);
    }

    /// Objects with real tags and hostile field values (huge numbers, wrong
    /// types, odd strings) are answered and never panic, nor do the storage
    /// replies and hash results they lead to.
    #[test]
    fn hostile_messages_are_answered_without_panicking(values in prop::collection::vec(hostile_object(), 1..8)) {
        let mut d = dispatcher();
        for value in values {
            let text = value.to_string();
            dispatch(&mut d, ALICE, &text);
            dispatch(&mut d, ANONYMOUS, &text);
        }
    }
}

/// A tiny deterministic generator for the socket fuzzer (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn frame(&mut self) -> String {
        match self.below(5) {
            0 => (0..self.below(200))
                .map(|_| char::from_u32(self.below(0x800) as u32).unwrap_or('?'))
                .collect(),
            1 => format!("{{\"tag\":{}}}", self.below(40) as i64 - 5),
            2 => {
                let field = FIELDS[self.below(FIELDS.len() as u64) as usize];
                format!(
                    "{{\"tag\":{},\"{field}\":{}}}",
                    1 + self.below(16),
                    [
                        "1",
                        "\"x\"",
                        "null",
                        "[]",
                        "{}",
                        "-9223372036854775808",
                        "1e400"
                    ][self.below(7) as usize]
                )
            }
            3 => format!(
                "{{\"tag\":11,\"dest_id\":\"{}\",\"content\":\"{}\",\"message_id\":\"{}\"}}",
                ["bob", "alice", "nobody", ""][self.below(4) as usize],
                "z".repeat(self.below(100) as usize),
                "m".repeat(self.below(80) as usize)
            ),
            _ => "[".repeat(self.below(300) as usize),
        }
    }
}

/// Thousands of random frames over real sockets (reconnecting whenever the
/// server closes a connection for abuse) leave the server serving a normal
/// client, who can still log in, message and read history.
#[test]
fn random_frames_over_real_sockets_leave_the_server_serving() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut sent = 0;
    let mut connections = 0;
    while sent < 3_000 {
        let mut fuzzer = if rng.below(2) == 0 {
            logged_in(&server, "alice")
        } else {
            server.client()
        };
        connections += 1;
        for _ in 0..rng.below(60) + 1 {
            let outcome = if rng.below(10) == 0 {
                fuzzer.try_send_binary(&rng.next().to_le_bytes())
            } else {
                fuzzer.try_send_raw(&rng.frame())
            };
            sent += 1;
            if outcome.is_err() {
                break;
            }
        }
    }
    assert!(connections > 1);

    let mut alice: Client = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    alice.ping_pong();
    alice.send(&common::message_to("bob", "still fine", None));
    // bob first gets whatever the fuzzer sent him while he was offline.
    let arrived = (0..10_000)
        .map(|_| bob.recv_delivered().content)
        .find(|content| content == "still fine");
    assert!(arrived.is_some());
    alice.recv_ack();
    bob.expect_silence(Duration::from_millis(100));
}
