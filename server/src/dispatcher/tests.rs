//! Unit tests of the dispatcher: the protocol's rules without sockets,
//! threads or a database — storage replies and hash results are fed by hand.

use std::net::SocketAddr;

use protocol::server::{LoginError, ServerMessage};
use protocol::ErrorType;

use super::*;
use crate::hasher::{HashDone, HashJob};
use crate::storage::{Command, ContactRow, NewMessage, Reply, Snapshot, StoredMessage};

const NOW: i64 = 1_700_000_000;
const ALICE: i64 = 1;
const BOB: i64 = 2;
const CAROL: i64 = 3;
/// Where storage read the queues of the logins in these tests: past every
/// message of the snapshot (`next_message_id` 10), before any sent here.
const QUEUE_BEFORE: i64 = 10;

fn dispatcher() -> Dispatcher {
    let snapshot = Snapshot {
        users: vec![
            ("alice".into(), ALICE),
            ("bob".into(), BOB),
            ("carol".into(), CAROL),
        ],
        next_message_id: 10,
        groups: vec![],
        recovered_from_crash: false,
    };
    Dispatcher::new(
        snapshot,
        DispatchLimits {
            storage_backlog_max: 100,
            rates: Some(crate::rate_limit::RateConfig::default()),
            max_group_size: 5,
            cluster: false,
        },
    )
}

fn conn(serial: u64) -> ConnId {
    ConnId {
        slot: serial as usize,
        serial,
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// Decodes every frame queued for `to`.
fn frames_for(fx: &Effects, to: ConnId) -> Vec<ServerMessage> {
    fx.frames
        .iter()
        .filter(|out| out.conn == to)
        .map(|out| protocol::decode_server(&out.frame).unwrap())
        .collect()
}

/// Handles `json` from `c` without answering storage: messages are not
/// committed (so neither acked nor delivered).
fn send_uncommitted(d: &mut Dispatcher, c: ConnId, json: &str) -> Effects {
    let mut fx = Effects::default();
    d.handle_text(c, json, NOW, &mut fx);
    fx
}

/// Handles `json` from `c`, then commits every message it stored as the
/// storage thread would: the effects include the Acks and the deliveries.
fn send(d: &mut Dispatcher, c: ConnId, json: &str) -> Effects {
    let mut fx = send_uncommitted(d, c, json);
    let committed = commit_messages(d, &fx);
    fx.frames.extend(committed.frames);
    fx.after_flush.extend(committed.after_flush);
    fx
}

/// Answers the StoreMessage commands among `fx.storage` as committed,
/// giving each the next id as storage does.
fn commit_messages(d: &mut Dispatcher, fx: &Effects) -> Effects {
    let mut out = Effects::default();
    for command in &fx.storage {
        if let Command::StoreMessage {
            to,
            ticket,
            client_message_id,
            message,
        } = command
        {
            let message_id = d.highest_message_id + 1;
            let reply = Reply::MessageStored {
                to: to.clone(),
                ticket: *ticket,
                message_id,
                client_message_id: client_message_id.clone(),
                duplicate_of: None,
                stored: Some(NewMessage {
                    message_id,
                    ..message.clone()
                }),
            };
            d.complete(Completion::Storage(reply), NOW, &mut out);
        }
    }
    out
}

fn complete(d: &mut Dispatcher, reply: Reply) -> Effects {
    let mut fx = Effects::default();
    d.complete(Completion::Storage(reply), NOW, &mut fx);
    fx
}

/// Logs `c` in as `user` by session resume, answering storage by hand.
fn log_in(d: &mut Dispatcher, c: ConnId, user: &str, mutual_contacts: Vec<i64>) -> Effects {
    d.connected(c, peer());
    let fx = send(
        d,
        c,
        &format!(r#"{{"tag":2,"username":"{user}","session_id":"s-{user}"}}"#),
    );
    assert!(matches!(fx.storage[..], [Command::ResumeSession { .. }]));
    complete(
        d,
        Reply::SessionOpened {
            to: Requester::anonymous(c),
            queued: vec![],
            more_queued: false,
            mutual_contacts,
            confirmed_through: 0,
            queue_before: d.highest_message_id + 1,
        },
    )
}

fn error_type(message: &ServerMessage) -> Option<ErrorType> {
    match message {
        ServerMessage::Error(error) => Some(error.error_type),
        _ => None,
    }
}

#[test]
fn requests_before_login_get_not_logged_in_but_ping_works() {
    let mut d = dispatcher();
    let c = conn(1);
    d.connected(c, peer());
    for json in [
        r#"{"tag":4}"#,
        r#"{"tag":11,"dest_id":"bob","content":"x"}"#,
        r#"{"tag":16,"since":0}"#,
    ] {
        let fx = send(&mut d, c, json);
        let frames = frames_for(&fx, c);
        assert_eq!(
            error_type(&frames[0]),
            Some(ErrorType::NotLoggedIn),
            "{json}"
        );
        assert!(fx.storage.is_empty());
    }
    let fx = send(&mut d, c, r#"{"tag":8}"#);
    assert_eq!(frames_for(&fx, c), vec![ServerMessage::Pong]);
}

#[test]
fn bad_frames_are_answered_before_the_login_check() {
    let mut d = dispatcher();
    let c = conn(1);
    d.connected(c, peer());
    let fx = send(&mut d, c, r#"{"tag":4,"#);
    assert_eq!(
        error_type(&frames_for(&fx, c)[0]),
        Some(ErrorType::BadRequest)
    );
    let fx = send(&mut d, c, r#"{"tag":99}"#);
    let ServerMessage::Error(error) = &frames_for(&fx, c)[0] else {
        panic!("expected an error");
    };
    assert_eq!(
        (error.error_type, error.ref_tag),
        (ErrorType::UnknownTag, Some(99))
    );
    let fx = send(&mut d, c, r#"{"tag":11,"dest_id":"bob"}"#);
    let ServerMessage::Error(error) = &frames_for(&fx, c)[0] else {
        panic!("expected an error");
    };
    assert_eq!(
        (error.error_type, error.ref_tag),
        (ErrorType::BadRequest, Some(11))
    );
}

#[test]
fn a_password_login_takes_three_hops_and_pushes_the_queue_first() {
    let mut d = dispatcher();
    let c = conn(1);
    d.connected(c, peer());
    let fx = send(
        &mut d,
        c,
        r#"{"tag":2,"username":"bob","secret":"password1"}"#,
    );
    assert!(
        matches!(&fx.storage[..], [Command::FetchCredentials { username, .. }] if username == "bob")
    );
    let fx = complete(
        &mut d,
        Reply::Credentials {
            to: Requester::anonymous(c),
            found: Some((BOB, "$pbkdf2-sha256$i=1$AAAA$AAAA".into())),
        },
    );
    assert!(
        matches!(&fx.hashing[..], [HashJob::Verify { user_id: Some(BOB), secret, .. }] if secret == "password1")
    );
    let mut fx = Effects::default();
    d.complete(
        Completion::Hash(HashDone::Verified {
            to: Requester::anonymous(c),
            user_id: Some(BOB),
        }),
        NOW,
        &mut fx,
    );
    assert!(matches!(
        &fx.storage[..],
        [Command::OpenSession { user_id: BOB, .. }]
    ));

    // A message sent to bob while the session opens is stored after the
    // session's queue is read (storage runs commands in order), so it
    // comes after the queue.
    let a = conn(2);
    log_in(&mut d, a, "alice", vec![]);
    let pending = send_uncommitted(
        &mut d,
        a,
        r#"{"tag":11,"dest_id":"bob","content":"meanwhile"}"#,
    );

    let queued = StoredMessage {
        message_id: 5,
        sender: "alice".into(),
        receiver: Some("bob".into()),
        group_id: None,
        content: "while you were away".into(),
        is_encrypted: false,
        time: NOW - 100,
    };
    let fx = complete(
        &mut d,
        Reply::SessionOpened {
            to: Requester::anonymous(c),
            queued: vec![queued],
            more_queued: false,
            mutual_contacts: vec![],
            confirmed_through: 0,
            queue_before: QUEUE_BEFORE,
        },
    );
    let frames = frames_for(&fx, c);
    assert!(
        matches!(&frames[0], ServerMessage::SuccessLogin(s) if s.username == "bob" && s.session_id.is_some())
    );
    assert!(matches!(&frames[1], ServerMessage::Message(m) if m.message_id == 5));
    let fx = commit_messages(&mut d, &pending);
    assert!(
        matches!(&frames_for(&fx, c)[..], [ServerMessage::Message(m)] if m.content == "meanwhile")
    );
    assert!(
        matches!(&fx.storage[..], [Command::MarkDelivered { user_id: BOB, message_ids }] if message_ids == &vec![10])
    );
}

#[test]
fn a_wrong_password_and_an_unknown_user_fail_alike() {
    let mut d = dispatcher();
    let c = conn(1);
    d.connected(c, peer());
    let fx = send(
        &mut d,
        c,
        r#"{"tag":2,"username":"nobody","secret":"password1"}"#,
    );
    // An unknown user still costs a hash.
    assert!(matches!(
        &fx.hashing[..],
        [HashJob::Verify {
            user_id: None,
            stored: None,
            ..
        }]
    ));
    let mut fx = Effects::default();
    d.complete(
        Completion::Hash(HashDone::Verified {
            to: Requester::anonymous(c),
            user_id: None,
        }),
        NOW,
        &mut fx,
    );
    assert!(matches!(&frames_for(&fx, c)[..],
        [ServerMessage::FailLogin(f)] if f.error_type == LoginError::InvalidCredentials));
    assert!(matches!(d.client(c).unwrap().auth, Auth::Anonymous));
}

#[test]
fn login_on_a_logged_in_connection_is_already_logged_in() {
    let mut d = dispatcher();
    let c = conn(1);
    log_in(&mut d, c, "alice", vec![]);
    let fx = send(
        &mut d,
        c,
        r#"{"tag":2,"username":"bob","secret":"password1"}"#,
    );
    assert!(matches!(&frames_for(&fx, c)[..],
        [ServerMessage::FailLogin(f)] if f.error_type == LoginError::AlreadyLoggedIn));
    assert!(
        matches!(&d.client(c).unwrap().auth, Auth::LoggedIn { username, .. } if username == "alice")
    );
}

#[test]
fn messages_reach_every_recipient_connection_and_ack_only_after_commit() {
    let mut d = dispatcher();
    let (a, b1, b2, a2) = (conn(1), conn(2), conn(3), conn(4));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, a2, "alice", vec![]);
    log_in(&mut d, b1, "bob", vec![]);
    log_in(&mut d, b2, "bob", vec![]);
    let fx = send_uncommitted(
        &mut d,
        a,
        r#"{"tag":11,"dest_id":"bob","content":"hi","message_id":"c1"}"#,
    );
    assert!(
        fx.frames.is_empty(),
        "no ack and no delivery before the commit"
    );
    let [Command::StoreMessage { message, .. }] = &fx.storage[..] else {
        panic!("{:?}", fx.storage);
    };
    assert!(message.delivered);
    let fx = commit_messages(&mut d, &fx);
    assert!(matches!(&frames_for(&fx, a)[..],
        [ServerMessage::Ack(ack)] if ack.message_id == 10 && ack.client_message_id.as_deref() == Some("c1")));
    for b in [b1, b2] {
        assert!(matches!(&frames_for(&fx, b)[..],
            [ServerMessage::Message(m)] if m.message_id == 10 && m.source_id == "alice" && m.content == "hi"));
    }
    assert!(
        frames_for(&fx, a2).is_empty(),
        "the sender's other devices get no copy"
    );
}

#[test]
fn ids_increase_and_offline_messages_are_stored_undelivered() {
    let mut d = dispatcher();
    let a = conn(1);
    log_in(&mut d, a, "alice", vec![]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"carol","content":"x"}"#);
        let [Command::StoreMessage { message, .. }] = &fx.storage[..] else {
            panic!();
        };
        assert!(!message.delivered, "carol is offline");
        let [ServerMessage::Ack(ack)] = &frames_for(&fx, a)[..] else {
            panic!("{:?}", fx.frames);
        };
        ids.push(ack.message_id);
    }
    assert_eq!(ids, vec![10, 11, 12]);
}

#[test]
fn message_rules_give_precise_errors_and_deliver_nothing() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    let long_id = "x".repeat(65);
    let cases = [
        (
            r#"{"tag":11,"dest_id":"bob","content":"x","source_id":"bob"}"#.to_string(),
            ErrorType::Forbidden,
        ),
        (
            format!(r#"{{"tag":11,"dest_id":"bob","content":"x","message_id":"{long_id}"}}"#),
            ErrorType::BadRequest,
        ),
        (
            r#"{"tag":11,"dest_id":"nobody","content":"x"}"#.to_string(),
            ErrorType::UnknownUser,
        ),
        (
            r#"{"tag":11,"content":"x"}"#.to_string(),
            ErrorType::BadRequest,
        ),
        (
            r#"{"tag":11,"dest_id":"bob","content":""}"#.to_string(),
            ErrorType::BadRequest,
        ),
        (
            r#"{"tag":11,"group_id":4,"content":"x"}"#.to_string(),
            ErrorType::UnknownGroup,
        ),
    ];
    for (json, expected) in cases {
        let fx = send(&mut d, a, &json);
        assert_eq!(error_type(&frames_for(&fx, a)[0]), Some(expected), "{json}");
        assert!(frames_for(&fx, b).is_empty(), "{json}");
        assert!(fx.storage.is_empty(), "{json}");
    }
}

#[test]
fn a_message_to_yourself_reaches_your_other_connections() {
    let mut d = dispatcher();
    let (a1, a2) = (conn(1), conn(2));
    log_in(&mut d, a1, "alice", vec![]);
    log_in(&mut d, a2, "alice", vec![]);
    let fx = send(
        &mut d,
        a1,
        r#"{"tag":11,"dest_id":"alice","content":"note"}"#,
    );
    assert!(matches!(&frames_for(&fx, a1)[..], [ServerMessage::Ack(_)]));
    assert_eq!(frames_for(&fx, a2).len(), 1);
}

#[test]
fn storage_backlog_turns_messages_away_with_server_busy() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    d.set_storage_backlog(100);
    let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"x"}"#);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::ServerBusy)
    );
    assert!(
        frames_for(&fx, b).is_empty(),
        "not delivered when it cannot be stored"
    );
}

#[test]
fn presence_goes_to_mutual_contacts_on_first_login_and_last_disconnect() {
    let mut d = dispatcher();
    let (b, c, a1, a2) = (conn(1), conn(2), conn(3), conn(4));
    log_in(&mut d, b, "bob", vec![]);
    log_in(&mut d, c, "carol", vec![]);
    // bob is alice's mutual contact; carol is not.
    let fx = log_in(&mut d, a1, "alice", vec![BOB]);
    assert!(matches!(&frames_for(&fx, b)[..],
        [ServerMessage::Presence(p)] if p.username == "alice" && p.online));
    assert!(frames_for(&fx, c).is_empty());
    let fx = log_in(&mut d, a2, "alice", vec![BOB]);
    assert!(frames_for(&fx, b).is_empty(), "not the first connection");

    let mut fx = Effects::default();
    d.disconnected(a1, None, NOW, &mut fx);
    assert!(matches!(
        &fx.storage[..],
        [Command::ConnectionLost { last: false, .. }]
    ));
    let mut fx = Effects::default();
    d.disconnected(a2, None, NOW, &mut fx);
    assert!(matches!(
        &fx.storage[..],
        [Command::ConnectionLost { last: true, .. }]
    ));
    let fx = complete(
        &mut d,
        Reply::WentOffline {
            user_id: ALICE,
            username: "alice".into(),
            mutual_contacts: vec![BOB],
        },
    );
    assert!(matches!(&frames_for(&fx, b)[..],
        [ServerMessage::Presence(p)] if p.username == "alice" && !p.online));
}

#[test]
fn a_late_reply_for_a_closed_connection_reaches_nobody() {
    let mut d = dispatcher();
    let a = conn(1);
    log_in(&mut d, a, "alice", vec![]);
    d.disconnected(a, None, NOW, &mut Effects::default());
    // A new connection in the same slot, with a new serial.
    let reused = ConnId {
        slot: 1,
        serial: 99,
    };
    log_in(&mut d, reused, "bob", vec![]);
    let fx = complete(
        &mut d,
        Reply::MessageStored {
            to: Requester::anonymous(a),
            ticket: 1,
            message_id: 10,
            client_message_id: None,
            duplicate_of: None,
            stored: None,
        },
    );
    assert!(fx.frames.is_empty());
}

#[test]
fn logout_closes_every_connection_of_that_session_only() {
    let mut d = dispatcher();
    let (a1, a2, a3) = (conn(1), conn(2), conn(3));
    log_in(&mut d, a1, "alice", vec![]);
    log_in(&mut d, a2, "alice", vec![]); // same session id "s-alice"
    d.connected(a3, peer());
    send(
        &mut d,
        a3,
        r#"{"tag":2,"username":"alice","session_id":"other"}"#,
    );
    complete(
        &mut d,
        Reply::SessionOpened {
            to: Requester::anonymous(a3),
            queued: vec![],
            more_queued: false,
            mutual_contacts: vec![],
            confirmed_through: 0,
            queue_before: QUEUE_BEFORE,
        },
    );
    let fx = send(&mut d, a1, r#"{"tag":3,"username":"bob"}"#);
    assert_eq!(
        error_type(&frames_for(&fx, a1)[0]),
        Some(ErrorType::Forbidden)
    );
    let fx = send(&mut d, a1, r#"{"tag":3}"#);
    assert!(matches!(&fx.storage[..], [Command::EndSession { .. }]));
    let fx = complete(
        &mut d,
        Reply::SessionEnded {
            to: Requester::anonymous(a1),
        },
    );
    assert!(matches!(
        &frames_for(&fx, a1)[..],
        [ServerMessage::SuccessLogout(_)]
    ));
    let mut closed: Vec<ConnId> = fx.closes.iter().map(|(c, _)| *c).collect();
    closed.sort();
    assert_eq!(closed, vec![a1, a2]);
}

#[test]
fn the_directory_hides_presence_of_non_mutual_contacts() {
    let mut d = dispatcher();
    let (a, b, c) = (conn(1), conn(2), conn(3));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    log_in(&mut d, c, "carol", vec![]);
    let rows = vec![
        ContactRow {
            username: "bob".into(),
            user_id: BOB,
            mutual: true,
            last_activity: Some(5),
        },
        ContactRow {
            username: "carol".into(),
            user_id: CAROL,
            mutual: false,
            last_activity: Some(6),
        },
    ];
    let fx = complete(
        &mut d,
        Reply::Directory {
            to: Requester::anonymous(a),
            contacts: rows,
        },
    );
    let [ServerMessage::Directory(directory)] = &frames_for(&fx, a)[..] else {
        panic!();
    };
    assert!(directory.data[0].online && directory.data[0].last_activity == Some(5));
    assert!(!directory.data[1].online && directory.data[1].last_activity.is_none());
}

#[test]
fn contact_requests_go_to_the_added_user_unless_mutual() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    let fx = send(&mut d, a, r#"{"tag":6,"username":"alice"}"#);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::BadRequest)
    );
    let fx = send(&mut d, a, r#"{"tag":6,"username":"nobody"}"#);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::UnknownUser)
    );
    let added = |mutual| Reply::ContactAdded {
        to: Requester::anonymous(a),
        contacts: vec![],
        added: true,
        mutual,
        contact_id: BOB,
        owner_name: "alice".into(),
    };
    let fx = complete(&mut d, added(false));
    assert!(
        matches!(&frames_for(&fx, b)[..], [ServerMessage::ContactRequest(r)] if r.username == "alice")
    );
    let fx = complete(&mut d, added(true));
    assert!(frames_for(&fx, b).is_empty());
}

#[test]
fn page_limits_are_checked() {
    let mut d = dispatcher();
    let a = conn(1);
    log_in(&mut d, a, "alice", vec![]);
    for json in [
        r#"{"tag":5,"chat_id":"bob","limit":0}"#,
        r#"{"tag":5,"chat_id":"bob","limit":201}"#,
        r#"{"tag":5,"chat_id":"g:x"}"#,
        r#"{"tag":5,"chat_id":"bob","before":-1}"#,
        r#"{"tag":16,"since":0,"limit":1001}"#,
        r#"{"tag":16,"since":-5}"#,
    ] {
        let fx = send(&mut d, a, json);
        assert_eq!(
            error_type(&frames_for(&fx, a)[0]),
            Some(ErrorType::BadRequest),
            "{json}"
        );
    }
    let fx = send(&mut d, a, r#"{"tag":5,"chat_id":"nobody"}"#);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::UnknownUser)
    );
    let fx = send(&mut d, a, r#"{"tag":5,"chat_id":"bob"}"#);
    assert!(matches!(
        &fx.storage[..],
        [Command::History {
            limit: 50,
            with: crate::storage::Conversation::Peer(BOB),
            ..
        }]
    ));
}

#[test]
fn registration_is_validated_before_hashing() {
    let mut d = dispatcher();
    let c = conn(1);
    d.connected(c, peer());
    let cases = [
        (
            r#"{"tag":1,"username":"a b","secret":"password1","email":"a@b.co"}"#,
            "invalid_username",
        ),
        (
            r#"{"tag":1,"username":"dave","secret":"password1","email":"nope"}"#,
            "invalid_email",
        ),
        (
            r#"{"tag":1,"username":"dave","secret":"short","email":"a@b.co"}"#,
            "weak_secret",
        ),
        (
            r#"{"tag":1,"username":"alice","secret":"password1","email":"a@b.co"}"#,
            "username_taken",
        ),
    ];
    for (json, expected) in cases {
        let fx = send(&mut d, c, json);
        assert!(fx.hashing.is_empty(), "{json}");
        let text = &fx.frames[0].frame;
        assert!(text.contains(expected), "{json}: {text}");
    }
    let fx = send(
        &mut d,
        c,
        r#"{"tag":1,"username":"dave","secret":"password1","email":"d@b.co"}"#,
    );
    assert!(matches!(&fx.hashing[..], [HashJob::Derive { username, .. }] if username == "dave"));
}

#[test]
fn a_failed_session_resume_releases_held_messages_to_the_queue() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    d.connected(b, peer());
    send(
        &mut d,
        b,
        r#"{"tag":2,"username":"bob","session_id":"bogus"}"#,
    );
    let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"x"}"#);
    let [Command::StoreMessage { message, .. }] = &fx.storage[..] else {
        panic!();
    };
    assert!(
        !message.delivered,
        "only held, so it stays in bob's offline queue"
    );
    let fx = complete(
        &mut d,
        Reply::SessionInvalid {
            to: Requester::anonymous(b),
        },
    );
    assert!(matches!(&frames_for(&fx, b)[..],
        [ServerMessage::FailLogin(f)] if f.error_type == LoginError::InvalidSession));
    assert!(matches!(d.client(b).unwrap().auth, Auth::Anonymous));
}

#[test]
fn requests_pipelined_behind_a_login_run_after_it_in_order() {
    let mut d = dispatcher();
    let (b, c) = (conn(1), conn(2));
    log_in(&mut d, b, "bob", vec![]);
    d.connected(c, peer());
    send(
        &mut d,
        c,
        r#"{"tag":2,"username":"carol","session_id":"s"}"#,
    );
    let fx = send(&mut d, c, r#"{"tag":11,"dest_id":"bob","content":"first"}"#);
    assert!(
        fx.frames.is_empty() && fx.storage.is_empty(),
        "waits for the login"
    );
    send(
        &mut d,
        c,
        r#"{"tag":11,"dest_id":"bob","content":"second"}"#,
    );
    let fx = complete(
        &mut d,
        Reply::SessionOpened {
            to: Requester::anonymous(c),
            queued: vec![],
            more_queued: false,
            mutual_contacts: vec![],
            confirmed_through: 0,
            queue_before: QUEUE_BEFORE,
        },
    );
    assert!(matches!(
        &frames_for(&fx, c)[..],
        [ServerMessage::SuccessLogin(_)]
    ));
    let fx = commit_messages(&mut d, &fx);
    let delivered: Vec<String> = frames_for(&fx, b)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Message(m) => Some(m.content),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec!["first", "second"]);

    // Behind a failed login, the same requests get not_logged_in.
    let d2 = conn(3);
    d.connected(d2, peer());
    send(
        &mut d,
        d2,
        r#"{"tag":2,"username":"bob","session_id":"bad"}"#,
    );
    send(&mut d, d2, r#"{"tag":4}"#);
    let fx = complete(
        &mut d,
        Reply::SessionInvalid {
            to: Requester::anonymous(d2),
        },
    );
    let frames = frames_for(&fx, d2);
    assert!(matches!(&frames[0], ServerMessage::FailLogin(_)));
    assert_eq!(error_type(&frames[1]), Some(ErrorType::NotLoggedIn));
}

#[test]
fn a_connection_past_its_message_burst_is_rate_limited() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    let burst = crate::rate_limit::RateConfig::default()
        .messages_per_connection
        .burst as usize;
    for _ in 0..burst {
        let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"x"}"#);
        assert_eq!(fx.storage.len(), 1);
    }
    let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"x"}"#);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::RateLimited)
    );
    assert!(fx.storage.is_empty() && frames_for(&fx, b).is_empty());
}

#[test]
fn a_client_that_keeps_sending_bad_frames_is_disconnected() {
    let mut d = dispatcher();
    let c = conn(1);
    d.connected(c, peer());
    let allowed = crate::rate_limit::RateConfig::default()
        .bad_frames_per_connection
        .burst as usize;
    for _ in 0..allowed {
        let fx = send(&mut d, c, "not json");
        assert!(fx.closes.is_empty());
    }
    let fx = send(&mut d, c, "not json");
    assert!(matches!(&fx.closes[..], [(closed, CloseReason::Abuse)] if *closed == c));
}

#[test]
fn repeated_failed_logins_lock_the_account_without_hashing() {
    let mut d = dispatcher();
    let c = conn(1);
    d.connected(c, peer());
    for _ in 0..5 {
        let fx = send(
            &mut d,
            c,
            r#"{"tag":2,"username":"bob","secret":"wrong-one"}"#,
        );
        assert_eq!(fx.storage.len(), 1, "credentials are fetched");
        let mut fx = Effects::default();
        d.complete(
            Completion::Hash(HashDone::Verified {
                to: Requester::anonymous(c),
                user_id: None,
            }),
            NOW,
            &mut fx,
        );
    }
    let fx = send(
        &mut d,
        c,
        r#"{"tag":2,"username":"bob","secret":"right-one"}"#,
    );
    assert!(fx.storage.is_empty() && fx.hashing.is_empty());
    assert!(matches!(&frames_for(&fx, c)[..],
        [ServerMessage::FailLogin(f)] if f.error_type == LoginError::RateLimited));
}

fn stored(id: i64, content: &str) -> StoredMessage {
    StoredMessage {
        message_id: id,
        sender: "alice".into(),
        receiver: Some("bob".into()),
        group_id: None,
        content: content.into(),
        is_encrypted: false,
        time: NOW,
    }
}

#[test]
fn a_long_offline_queue_is_pushed_in_chunks_before_anything_newer() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    d.connected(b, peer());
    let fx = send(&mut d, b, r#"{"tag":2,"username":"bob","session_id":"s"}"#);
    assert!(matches!(&fx.storage[..], [Command::ResumeSession { .. }]));
    let fx = complete(
        &mut d,
        Reply::SessionOpened {
            to: Requester::anonymous(b),
            queued: vec![stored(1, "q1")],
            more_queued: true,
            mutual_contacts: vec![],
            confirmed_through: 0,
            queue_before: QUEUE_BEFORE,
        },
    );
    assert!(matches!(&frames_for(&fx, b)[..],
        [ServerMessage::SuccessLogin(_), ServerMessage::Message(m)] if m.content == "q1"));
    assert!(
        fx.storage.is_empty(),
        "the next chunk waits for this one to be written"
    );
    assert!(
        matches!(&fx.after_flush[..],
        [(to, Command::MarkDelivered { user_id: BOB, message_ids }),
         (to2, Command::TakeQueue { user_id: BOB, queue_before: 10, after: 1, .. })]
        if *to == b && *to2 == b && message_ids == &vec![1]),
        "the chunk counts as taken once written out, then the next is asked for: {:?}",
        fx.after_flush
    );

    let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"live"}"#);
    assert!(
        frames_for(&fx, b).is_empty(),
        "held until the queue is through"
    );

    let fx = complete(
        &mut d,
        Reply::QueueChunk {
            to: Requester::anonymous(b),
            queued: vec![stored(2, "q2")],
            more_queued: false,
        },
    );
    let contents: Vec<String> = frames_for(&fx, b)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Message(m) => Some(m.content),
            _ => None,
        })
        .collect();
    assert_eq!(contents, vec!["q2", "live"]);
    assert!(matches!(d.client(b).unwrap().auth, Auth::LoggedIn { .. }));
}

fn group(id: i64, members: &[(i64, &str)]) -> crate::storage::GroupRow {
    crate::storage::GroupRow {
        group_id: id,
        name: "team".into(),
        members: members.iter().map(|(i, n)| (*i, n.to_string())).collect(),
    }
}

#[test]
fn creating_a_group_validates_members_and_size() {
    let mut d = dispatcher();
    let a = conn(1);
    log_in(&mut d, a, "alice", vec![]);
    let fx = send(
        &mut d,
        a,
        r#"{"tag":12,"name":"team","members":["bob","bob","alice"]}"#,
    );
    assert!(matches!(&fx.storage[..],
        [Command::CreateGroup { member_ids, .. }] if member_ids == &vec![ALICE, BOB]));
    let fx = send(
        &mut d,
        a,
        r#"{"tag":12,"name":"team","members":["nobody"]}"#,
    );
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::UnknownUser)
    );
    let fx = send(&mut d, a, r#"{"tag":12,"name":"","members":[]}"#);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::BadRequest)
    );
    d.users.extend((4..10).map(|i| (format!("u{i}"), i)));
    let many = r#"{"tag":12,"name":"big","members":["u4","u5","u6","u7","u8"]}"#;
    let fx = send(&mut d, a, many);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::BadRequest),
        "6 > 5"
    );
}

#[test]
fn group_messages_reach_every_member_connection_but_the_sending_one() {
    let mut d = dispatcher();
    let (a1, a2, b, c) = (conn(1), conn(2), conn(3), conn(4));
    log_in(&mut d, a1, "alice", vec![]);
    log_in(&mut d, a2, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    log_in(&mut d, c, "carol", vec![]);
    let fx = complete(
        &mut d,
        Reply::GroupChanged {
            to: Requester::anonymous(a1),
            group: group(7, &[(ALICE, "alice"), (BOB, "bob")]),
        },
    );
    for member in [a1, a2, b] {
        assert!(matches!(&frames_for(&fx, member)[..],
            [ServerMessage::GroupInfo(g)] if g.group_id == 7 && g.members == vec!["alice", "bob"]));
    }
    assert!(frames_for(&fx, c).is_empty());

    let fx = send(&mut d, a1, r#"{"tag":11,"group_id":7,"content":"hi all"}"#);
    assert!(matches!(&frames_for(&fx, a1)[..], [ServerMessage::Ack(_)]));
    for member in [a2, b] {
        assert!(matches!(&frames_for(&fx, member)[..],
            [ServerMessage::Message(m)] if m.group_id == Some(7) && m.dest_id.is_none()));
    }
    assert!(frames_for(&fx, c).is_empty());
    assert!(matches!(&fx.storage[..],
        [Command::StoreMessage { message, .. }] if message.group_id == Some(7) && message.receiver_id.is_none()));

    for json in [
        r#"{"tag":11,"group_id":7,"content":"let me in"}"#,
        r#"{"tag":5,"chat_id":"g:7"}"#,
        r#"{"tag":13,"group_id":7,"members":["carol"]}"#,
        r#"{"tag":14,"group_id":7}"#,
    ] {
        let fx = send(&mut d, c, json);
        assert_eq!(
            error_type(&frames_for(&fx, c)[0]),
            Some(ErrorType::Forbidden),
            "{json}"
        );
        assert!(fx.storage.is_empty() && frames_for(&fx, b).is_empty());
    }
    let fx = send(&mut d, c, r#"{"tag":14,"group_id":99}"#);
    assert_eq!(
        error_type(&frames_for(&fx, c)[0]),
        Some(ErrorType::UnknownGroup)
    );
}

#[test]
fn leaving_tells_the_leaver_its_groups_and_the_rest_the_new_group() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    complete(
        &mut d,
        Reply::GroupChanged {
            to: Requester::anonymous(a),
            group: group(7, &[(ALICE, "alice"), (BOB, "bob")]),
        },
    );
    let fx = send(&mut d, b, r#"{"tag":14,"group_id":7}"#);
    assert!(matches!(
        &fx.storage[..],
        [Command::LeaveGroup {
            user_id: BOB,
            group_id: 7,
            ..
        }]
    ));
    let fx = complete(
        &mut d,
        Reply::GroupLeft {
            to: Requester::anonymous(b),
            user_id: BOB,
            group_id: 7,
            remaining: Some(group(7, &[(ALICE, "alice")])),
        },
    );
    assert!(matches!(&frames_for(&fx, b)[..], [ServerMessage::Groups(g)] if g.data.is_empty()));
    assert!(matches!(&frames_for(&fx, a)[..],
        [ServerMessage::GroupInfo(g)] if g.members == vec!["alice"]));
    let fx = send(&mut d, a, r#"{"tag":15}"#);
    assert!(matches!(&frames_for(&fx, a)[..], [ServerMessage::Groups(g)] if g.data.len() == 1));
}

/// The request id travels with the storage command and comes back on its
/// reply, and on the `server_busy` when the command cannot be queued.
#[test]
fn request_ids_ride_along_with_storage_work_and_its_refusal() {
    let mut d = dispatcher();
    let a = conn(1);
    log_in(&mut d, a, "alice", vec![]);
    let fx = send(
        &mut d,
        a,
        r#"{"tag":11,"dest_id":"bob","content":"hi","request_id":"r1"}"#,
    );
    let [Command::StoreMessage { to, .. }] = &fx.storage[..] else {
        panic!("{:?}", fx.storage);
    };
    assert_eq!(to.request_id, Some(RequestId::from("r1")));
    let stored = Reply::MessageStored {
        to: to.clone(),
        ticket: 1,
        message_id: 10,
        client_message_id: None,
        duplicate_of: None,
        stored: None,
    };
    let acked = complete(&mut d, stored);
    assert!(
        acked.frames[0].frame.contains(r#""request_id":"r1""#),
        "{:?}",
        acked.frames
    );

    let mut fx = send(
        &mut d,
        a,
        r#"{"tag":11,"dest_id":"bob","content":"hi","request_id":2}"#,
    );
    let command = fx.storage.pop().expect("a store command");
    let mut refused = Effects::default();
    d.storage_refused(command, NOW, &mut refused);
    let [Outbound {
        conn: to, frame, ..
    }] = &refused.frames[..]
    else {
        panic!("{:?}", refused.frames);
    };
    assert_eq!(*to, a);
    assert!(frame.contains(r#""error_type":"server_busy""#), "{frame}");
    assert!(frame.contains(r#""request_id":2"#), "{frame}");
}

#[test]
fn logout_also_closes_a_connection_still_resuming_that_session() {
    let mut d = dispatcher();
    let (a1, a2) = (conn(1), conn(2));
    log_in(&mut d, a1, "alice", vec![]);
    d.connected(a2, peer());
    send(
        &mut d,
        a2,
        r#"{"tag":2,"username":"alice","session_id":"s-alice"}"#,
    );
    send(&mut d, a2, r#"{"tag":11,"dest_id":"bob","content":"late"}"#);
    send(&mut d, a1, r#"{"tag":3}"#);
    let fx = complete(
        &mut d,
        Reply::SessionEnded {
            to: Requester::anonymous(a1),
        },
    );
    let mut closed: Vec<ConnId> = fx.closes.iter().map(|(c, _)| *c).collect();
    closed.sort();
    assert_eq!(closed, vec![a1, a2]);
    // The loop departs each closing connection at once.
    for c in closed {
        d.disconnected(c, None, NOW, &mut Effects::default());
    }
    // Storage's late answer to the resume finds nothing to finish, and the
    // message pipelined behind it never runs.
    let fx = complete(
        &mut d,
        Reply::SessionOpened {
            to: Requester::anonymous(a2),
            queued: vec![],
            more_queued: false,
            mutual_contacts: vec![],
            confirmed_through: 0,
            queue_before: QUEUE_BEFORE,
        },
    );
    assert!(fx.frames.is_empty() && fx.storage.is_empty());
    assert!(d.client(a2).is_none());
}

#[test]
fn a_second_password_attempt_for_an_account_in_flight_is_refused_at_once() {
    let mut d = dispatcher();
    let (c1, c2) = (conn(1), conn(2));
    d.connected(c1, peer());
    d.connected(c2, peer());
    let fx = send(
        &mut d,
        c1,
        r#"{"tag":2,"username":"bob","secret":"guess-1"}"#,
    );
    assert_eq!(fx.storage.len(), 1, "credentials are fetched");
    let fx = send(
        &mut d,
        c2,
        r#"{"tag":2,"username":"bob","secret":"guess-2"}"#,
    );
    assert!(fx.storage.is_empty() && fx.hashing.is_empty());
    assert!(matches!(&frames_for(&fx, c2)[..],
        [ServerMessage::FailLogin(f)] if f.error_type == LoginError::RateLimited));
    // The first one's verdict frees the account for the next attempt.
    let mut fx = Effects::default();
    d.complete(
        Completion::Hash(HashDone::Verified {
            to: Requester::anonymous(c1),
            user_id: None,
        }),
        NOW,
        &mut fx,
    );
    let fx = send(
        &mut d,
        c2,
        r#"{"tag":2,"username":"bob","secret":"guess-2"}"#,
    );
    assert_eq!(fx.storage.len(), 1);
}

/// A recipient whose output is full is not written to: the message stays in
/// storage and a catch-up page is asked for once the output drains; later
/// messages stay there too (one page asked, not one per message); a page
/// with nothing more makes the connection live again.
#[test]
fn a_recipient_with_full_output_catches_up_from_storage() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    d.set_output_full(b, true);
    let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"one"}"#);
    assert!(frames_for(&fx, b).is_empty(), "left in storage");
    assert!(
        matches!(
            &fx.after_flush[..],
            [(to, Command::TakeQueue { after: 9, queue_before: i64::MAX, since: None, include_groups: true, .. })]
                if *to == b
        ),
        "{:?}",
        fx.after_flush
    );
    let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"two"}"#);
    assert!(frames_for(&fx, b).is_empty(), "still behind");
    assert!(fx.after_flush.is_empty(), "the page is already asked for");

    d.set_output_full(b, false);
    let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"three"}"#);
    assert!(frames_for(&fx, b).is_empty(), "behind until the page comes");
    let page = vec![stored(10, "one"), stored(11, "two"), stored(12, "three")];
    let fx = complete(
        &mut d,
        Reply::QueueChunk {
            to: Requester::anonymous(b),
            queued: page,
            more_queued: false,
        },
    );
    let contents: Vec<String> = frames_for(&fx, b)
        .into_iter()
        .map(|frame| match frame {
            ServerMessage::Message(m) => m.content,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(contents, ["one", "two", "three"]);
    assert!(fx.frames.iter().all(|out| out.message_id.is_some()));
    assert!(matches!(
        &fx.after_flush[..],
        [(_, Command::MarkDelivered { user_id: BOB, message_ids })] if message_ids == &[10, 11, 12]
    ));
    let fx = send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"four"}"#);
    assert_eq!(frames_for(&fx, b).len(), 1, "live again");
}

/// A connection that leaves while behind took nothing past where it fell
/// behind: its group cursors move no further.
#[test]
fn a_departure_while_behind_takes_nothing_past_it() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    d.set_output_full(b, true);
    send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"one"}"#);
    send(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"two"}"#);
    let mut fx = Effects::default();
    d.disconnected(b, None, NOW, &mut fx);
    assert!(
        fx.storage.iter().any(|command| matches!(
            command,
            Command::ConnectionLost { groups_taken: Some(taken), .. } if taken.through == 9
        )),
        "{:?}",
        fx.storage
    );
}

/// Messages waiting for their commit are charged to the sender's share of
/// the storage budget: past it, `server_busy`; a commit frees its share.
#[test]
fn a_sender_has_a_share_of_the_storage_budget_in_bytes() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    let content = "x".repeat(60_000);
    let frame = format!(r#"{{"tag":11,"dest_id":"bob","content":"{content}"}}"#);
    let fits = crate::config::STORAGE_BYTES_PER_CONNECTION / content.len();
    let mut pending = Vec::new();
    for _ in 0..fits {
        let fx = send_uncommitted(&mut d, a, &frame);
        assert!(frames_for(&fx, a).is_empty(), "accepted");
        pending.extend(fx.storage);
    }
    let fx = send_uncommitted(&mut d, a, &frame);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::ServerBusy),
        "past the connection's share"
    );
    let fx = send_uncommitted(&mut d, b, &frame.replace("bob", "alice"));
    assert!(frames_for(&fx, b).is_empty(), "another sender still fits");

    let first = Effects {
        storage: pending.drain(..1).collect(),
        ..Effects::default()
    };
    commit_messages(&mut d, &first);
    let fx = send_uncommitted(&mut d, a, &frame);
    assert!(frames_for(&fx, a).is_empty(), "a commit frees its share");
}

/// Message content is rate-limited in bytes per connection as well as in
/// messages: past the byte burst, `rate_limited`.
#[test]
fn message_bytes_are_rate_limited_per_connection() {
    let mut d = dispatcher();
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    log_in(&mut d, b, "bob", vec![]);
    let content = "x".repeat(60_000);
    let frame = format!(r#"{{"tag":11,"dest_id":"bob","content":"{content}"}}"#);
    let burst = crate::rate_limit::MESSAGE_BYTES_PER_CONNECTION.burst as usize;
    for _ in 0..burst.div_ceil(content.len()) {
        let fx = send(&mut d, a, &frame);
        assert!(
            matches!(&frames_for(&fx, a)[..], [ServerMessage::Ack(_)]),
            "within the byte burst"
        );
    }
    let fx = send(&mut d, a, &frame);
    assert_eq!(
        error_type(&frames_for(&fx, a)[0]),
        Some(ErrorType::RateLimited)
    );
}

/// Cluster mode: a committed message goes on the bus for its recipient; one
/// committed on another server makes the recipient's connection here read
/// it from storage (and counts as taken by a device without receipts once
/// written); a session ended elsewhere closes its connections here.
#[test]
fn bus_events_go_out_after_the_commit_and_come_in_to_local_connections() {
    use crate::bus::{BusEvent, Inbound};
    let mut d = dispatcher();
    d.limits.cluster = true;
    let (a, b) = (conn(1), conn(2));
    log_in(&mut d, a, "alice", vec![]);
    let pending = send_uncommitted(&mut d, a, r#"{"tag":11,"dest_id":"bob","content":"hi"}"#);
    assert!(pending.bus.is_empty(), "nothing goes out before the commit");
    let committed = commit_messages(&mut d, &pending);
    assert!(
        matches!(&committed.bus[..], [BusEvent::Message { recipients, message }]
            if recipients == &vec![BOB] && message.content == "hi"),
        "{:?}",
        committed.bus
    );

    // Every device here reads from storage in cluster mode (`Stream::
    // FromStorage`), one without receipts too: its login asks for what
    // came after its queue.
    let login = log_in(&mut d, b, "bob", vec![]);
    let asks_read = |fx: &Effects| {
        matches!(&fx.after_flush[..],
            [(to, Command::TakeQueue { since: Some(_), .. })] if *to == b)
    };
    assert!(asks_read(&login), "{:?}", login.after_flush);
    let remote = BusEvent::Message {
        recipients: vec![BOB],
        message: protocol::server::Delivered {
            message_id: 500,
            source_id: "carol".into(),
            dest_id: Some("bob".into()),
            group_id: None,
            content: "from elsewhere".into(),
            is_encrypted: false,
            time: NOW,
        },
    };
    let inbound = |event| {
        Completion::Bus(Inbound::Event {
            node: "other".into(),
            event,
            bytes: 1,
        })
    };
    let mut fx = Effects::default();
    d.complete(inbound(remote), NOW, &mut fx);
    assert!(
        frames_for(&fx, b).is_empty(),
        "a notice only asks for a read"
    );
    assert!(fx.bus.is_empty(), "what came from the bus is not sent back");
    let page = |queued| Reply::QueueChunk {
        to: Requester::anonymous(b),
        queued,
        more_queued: false,
    };
    // The read on its way began before the notice: read again after it.
    let fx = complete(&mut d, page(vec![]));
    assert!(asks_read(&fx), "{:?}", fx.after_flush);
    let fx = complete(&mut d, page(vec![stored(500, "from elsewhere")]));
    assert!(matches!(&frames_for(&fx, b)[..],
        [ServerMessage::Message(m)] if m.message_id == 500));
    assert!(
        matches!(&fx.after_flush[..],
            [(_, Command::MarkDelivered { user_id: BOB, message_ids })] if message_ids == &vec![500]),
        "taken by a device without receipts once written: {:?}",
        fx.after_flush
    );

    let session_hash = match &d.client(b).unwrap().auth {
        Auth::LoggedIn { session_hash, .. } => session_hash.clone(),
        other => panic!("{other:?}"),
    };
    let mut fx = Effects::default();
    d.complete(
        inbound(BusEvent::SessionEnded { session_hash }),
        NOW,
        &mut fx,
    );
    assert_eq!(fx.closes, vec![(b, CloseReason::LoggedOut)]);
}

/// A confirmation earns its sender one Delivered (37), coalesced per pair
/// and sent in the sender's phase of the confirm ticks, not on the tick.
#[test]
fn delivered_receipts_go_out_in_their_senders_confirm_phase() {
    let mut d = dispatcher();
    let a = conn(1);
    log_in(&mut d, a, "alice", vec![]);
    if let Some(Auth::LoggedIn { receipts, .. }) =
        d.clients.get_mut(&a).map(|client| &mut client.auth)
    {
        *receipts = true;
    }
    for through in [10, 12, 11] {
        complete(
            &mut d,
            Reply::Confirmed {
                user_id: BOB,
                username: "bob".into(),
                senders: vec![(ALICE, through)],
            },
        );
    }
    let mut fx = Effects::default();
    d.tick(&mut fx);
    assert!(frames_for(&fx, a).is_empty(), "not on the tick");
    let mut receipts = Vec::new();
    for _ in 0..2 * config::CONFIRM_PHASES {
        let mut fx = Effects::default();
        d.confirm_tick(NOW, &mut fx);
        receipts.extend(frames_for(&fx, a));
    }
    assert!(
        matches!(&receipts[..], [ServerMessage::Delivered(r)] if r.username == "bob" && r.through == 12),
        "{receipts:?}"
    );
}

/// Cluster mode: when the bus may have lost events, a receipts device that
/// reads from storage asks for a read at once (one at a time).
#[test]
fn a_bus_gap_makes_receipts_devices_read_from_storage() {
    use crate::bus::Inbound;
    let mut d = dispatcher();
    d.limits.cluster = true;
    let b = conn(2);
    log_in(&mut d, b, "bob", vec![]);
    if let Some(Auth::LoggedIn {
        receipts, stream, ..
    }) = d.clients.get_mut(&b).map(|client| &mut client.auth)
    {
        *receipts = true;
        *stream = Stream::FromStorage {
            from: 7,
            reading: false,
            again: false,
        };
    }
    let mut fx = Effects::default();
    d.complete(Completion::Bus(Inbound::Gap), NOW, &mut fx);
    assert!(
        matches!(&fx.after_flush[..], [(to, Command::TakeQueue { after: 6, since: Some(_), .. })] if *to == b),
        "{:?}",
        fx.after_flush
    );
    let mut fx = Effects::default();
    d.complete(Completion::Bus(Inbound::Gap), NOW, &mut fx);
    assert!(fx.after_flush.is_empty(), "a read is already on its way");
}

// Cluster mode: the caches' miss path (`lookups.rs`).

fn cluster_dispatcher() -> Dispatcher {
    let mut d = dispatcher();
    d.limits.cluster = true;
    d
}

/// The lookup among `fx.storage`: its ticket, names and group.
fn lookup_in(fx: &Effects) -> (u64, Vec<String>, Option<i64>) {
    match &fx.storage[..] {
        [Command::LookUp {
            ticket,
            usernames,
            group_id,
            ..
        }] => (*ticket, usernames.clone(), *group_id),
        other => panic!("expected one LookUp, got {other:?}"),
    }
}

fn receivers(fx: &Effects) -> Vec<Option<i64>> {
    fx.storage
        .iter()
        .filter_map(|command| match command {
            Command::StoreMessage { message, .. } => Some(message.receiver_id),
            _ => None,
        })
        .collect()
}

/// A message to a name the directory lacks asks storage first; a request
/// sent meanwhile waits behind it; once storage finds the name both run, in
/// order, and the name is known from then on.
#[test]
fn a_directory_miss_asks_storage_and_later_requests_wait_behind_it() {
    let mut d = cluster_dispatcher();
    let c = conn(1);
    log_in(&mut d, c, "alice", vec![]);
    let fx = send_uncommitted(&mut d, c, r#"{"tag":11,"dest_id":"dave","content":"hi"}"#);
    let (ticket, names, group) = lookup_in(&fx);
    assert_eq!((names, group), (vec!["dave".to_owned()], None));
    assert!(frames_for(&fx, c).is_empty());
    let fx = send_uncommitted(&mut d, c, r#"{"tag":11,"dest_id":"bob","content":"after"}"#);
    assert!(fx.storage.is_empty(), "waits behind the lookup");
    let found = Reply::Found {
        to: Requester::anonymous(c),
        ticket,
        users: vec![("dave".into(), 4)],
        group: None,
    };
    let fx = complete(&mut d, found);
    assert_eq!(receivers(&fx), [Some(4), Some(BOB)]);
    let fx = send_uncommitted(
        &mut d,
        c,
        r#"{"tag":11,"dest_id":"dave","content":"again"}"#,
    );
    assert_eq!(receivers(&fx), [Some(4)], "known now: no second lookup");
}

/// A name storage does not know is `unknown_user`, and is not asked about
/// again at once; a server alone never asks.
#[test]
fn a_name_storage_does_not_know_is_unknown_user_and_not_asked_again_at_once() {
    let mut d = cluster_dispatcher();
    let c = conn(1);
    log_in(&mut d, c, "alice", vec![]);
    let json = r#"{"tag":11,"dest_id":"nobody","content":"hi"}"#;
    let (ticket, _, _) = lookup_in(&send_uncommitted(&mut d, c, json));
    let found = Reply::Found {
        to: Requester::anonymous(c),
        ticket,
        users: vec![],
        group: None,
    };
    let fx = complete(&mut d, found);
    assert_eq!(
        error_type(&frames_for(&fx, c)[0]),
        Some(ErrorType::UnknownUser)
    );
    let fx = send_uncommitted(&mut d, c, json);
    assert!(fx.storage.is_empty());
    assert_eq!(
        error_type(&frames_for(&fx, c)[0]),
        Some(ErrorType::UnknownUser)
    );

    let mut alone = dispatcher();
    log_in(&mut alone, c, "alice", vec![]);
    let fx = send_uncommitted(&mut alone, c, json);
    assert!(fx.storage.is_empty());
    assert_eq!(
        error_type(&frames_for(&fx, c)[0]),
        Some(ErrorType::UnknownUser)
    );
}

/// A group the sender is not in as far as the cache knows is read from
/// storage first; a lookup storage fails is answered `server_busy` and
/// what waited behind it runs.
#[test]
fn a_group_miss_is_read_and_a_failed_lookup_is_server_busy() {
    let mut d = cluster_dispatcher();
    let c = conn(1);
    log_in(&mut d, c, "alice", vec![]);
    let (ticket, names, group) = lookup_in(&send_uncommitted(
        &mut d,
        c,
        r#"{"tag":11,"group_id":7,"content":"hi"}"#,
    ));
    assert_eq!((names.len(), group), (0, Some(7)));
    let row = GroupRow {
        group_id: 7,
        name: "far".into(),
        members: vec![(ALICE, "alice".into()), (BOB, "bob".into())],
    };
    let found = Reply::Found {
        to: Requester::anonymous(c),
        ticket,
        users: vec![],
        group: Some(row),
    };
    let fx = complete(&mut d, found);
    assert!(matches!(
        &fx.storage[..],
        [Command::StoreMessage { message, .. }] if message.group_id == Some(7)
    ));

    let (ticket, _, _) = lookup_in(&send_uncommitted(
        &mut d,
        c,
        r#"{"tag":11,"dest_id":"erin","content":"x"}"#,
    ));
    send_uncommitted(&mut d, c, r#"{"tag":11,"dest_id":"bob","content":"y"}"#);
    let failed = Reply::Failed {
        to: Requester::anonymous(c),
        ref_tag: ClientTag::Message,
        ticket: Some(ticket),
        reason: "disk".into(),
    };
    let fx = complete(&mut d, failed);
    assert_eq!(
        error_type(&frames_for(&fx, c)[0]),
        Some(ErrorType::ServerBusy)
    );
    assert_eq!(receivers(&fx), [Some(BOB)]);
}

// Cluster mode: the shared lockout (`shared_limits.rs`).

/// A wrong password in cluster mode: storage is asked to check and charge
/// the attempt, and told its verdict after the hash; a lock storage found
/// is `rate_limited` with nothing to record; alone, storage is asked
/// nothing of the kind.
#[test]
fn a_cluster_login_is_checked_and_its_verdict_recorded_in_storage() {
    let mut d = cluster_dispatcher();
    let c = conn(1);
    d.connected(c, peer());
    let fx = send(&mut d, c, r#"{"tag":2,"username":"bob","secret":"wrong"}"#);
    let [Command::FetchCredentials {
        shared: Some(shared),
        ..
    }] = &fx.storage[..]
    else {
        panic!("expected a shared check, got {:?}", fx.storage);
    };
    assert!(shared.account);
    assert_eq!(shared.address, "127.0.0.1");
    let credentials = Reply::Credentials {
        to: Requester::anonymous(c),
        found: Some((BOB, "$pbkdf2-sha256$i=1$AAAA$AAAA".into())),
    };
    complete(&mut d, credentials);
    let mut fx = Effects::default();
    let verdict = HashDone::Verified {
        to: Requester::anonymous(c),
        user_id: None,
    };
    d.complete(Completion::Hash(verdict), NOW, &mut fx);
    assert!(matches!(
        &fx.storage[..],
        [Command::EndSharedLogin { username, verdict: Verdict::Failed, .. }] if username == "bob"
    ));

    send(&mut d, c, r#"{"tag":2,"username":"bob","secret":"right"}"#);
    let fx = complete(
        &mut d,
        Reply::LoginLocked {
            to: Requester::anonymous(c),
        },
    );
    assert!(fx.storage.is_empty(), "nothing was charged");
    let frames = frames_for(&fx, c);
    assert!(
        matches!(&frames[..], [ServerMessage::FailLogin(fail)] if fail.error_type == LoginError::RateLimited),
        "{frames:?}"
    );

    let mut alone = dispatcher();
    alone.connected(c, peer());
    let fx = send(&mut alone, c, r#"{"tag":2,"username":"bob","secret":"x"}"#);
    assert!(matches!(
        &fx.storage[..],
        [Command::FetchCredentials { shared: None, .. }]
    ));
}

// Cluster mode: heartbeats and presence across servers (`liveness.rs`).

/// A cluster dispatcher of node `n0` with `--timeout` 6 s (beats every
/// 0.75 s, expiry after 3 s).
fn beating_dispatcher() -> Dispatcher {
    let mut d = cluster_dispatcher();
    d.join_cluster("n0".into(), 1, std::time::Duration::from_secs(6));
    d
}

/// The heartbeat the next tick sends, if any.
fn tick_beat(d: &mut Dispatcher) -> Option<Command> {
    let mut fx = Effects::default();
    d.tick(&mut fx);
    fx.storage
        .into_iter()
        .find(|command| matches!(command, Command::Heartbeat { .. }))
}

/// The names and contacts storage would answer for `changes`.
fn presence_of(changes: &[(i64, bool)], contacts: &[i64]) -> Reply {
    let name = |user| ["alice", "bob", "carol"][(user - 1) as usize].to_owned();
    Reply::PresenceOf {
        changes: changes
            .iter()
            .map(|&(user_id, online)| crate::storage::PresenceChange {
                user_id,
                username: name(user_id),
                online,
                mutual_contacts: contacts.to_vec(),
            })
            .collect(),
    }
}

/// Answers the heartbeat in flight with `alive`: storage is asked about
/// `change` alone, and bob (connection 2, alice's contact) is told it.
fn beat_tells_bob(d: &mut Dispatcher, alive: Vec<crate::storage::NodeBeat>, change: (i64, bool)) {
    let fx = complete(d, Reply::Beat { result: Ok(alive) });
    assert!(
        matches!(&fx.storage[..], [Command::PresenceOf { changes }] if changes == &[change]),
        "{:?}",
        fx.storage
    );
    let fx = complete(d, presence_of(&[change], &[BOB]));
    assert!(matches!(&frames_for(&fx, conn(2))[..],
        [ServerMessage::Presence(p)] if p.username == "alice" && p.online == change.1));
}

/// A heartbeat carries the users logged in here; its answer shows another
/// server's users online (their contacts here are told, through a lookup
/// of names and contacts), and a later answer without that server, once
/// beats have gone through for the expiry, shows them offline.
#[test]
fn heartbeats_tell_contacts_here_who_is_online_elsewhere_and_who_died() {
    use crate::bus::PresenceStamp;
    use crate::storage::NodeBeat;
    let mut d = beating_dispatcher();
    let b = conn(2);
    log_in(&mut d, b, "bob", vec![]);
    let start = Instant::now();
    d.set_clock(start);
    let Some(Command::Heartbeat {
        node_id, online, ..
    }) = tick_beat(&mut d)
    else {
        panic!("the first tick beats");
    };
    assert_eq!((node_id.as_str(), online), ("n0", vec![BOB]));
    assert!(tick_beat(&mut d).is_none(), "one beat in flight");

    let n1 = NodeBeat {
        node_id: "n1".into(),
        stamp: PresenceStamp { run: 9, version: 1 },
        online: Some(vec![ALICE]),
    };
    beat_tells_bob(&mut d, vec![n1], (ALICE, true));

    // Three seconds of beats later, n1 is not listed any more.
    d.set_clock(start + std::time::Duration::from_secs(4));
    assert!(tick_beat(&mut d).is_some());
    beat_tells_bob(&mut d, vec![], (ALICE, false));
    let health = d.cluster_view().expect("in a cluster");
    assert!(health.database_ok);
    assert_eq!((health.node_id.as_str(), health.nodes), ("n0", 0));

    // A failed beat: the database is unreachable.
    d.set_clock(start + std::time::Duration::from_secs(5));
    assert!(tick_beat(&mut d).is_some());
    complete(
        &mut d,
        Reply::Beat {
            result: Err("down".into()),
        },
    );
    assert!(!d.cluster_view().unwrap().database_ok);
}

/// An add made elsewhere without knowing the contact online: where the
/// contact is logged in, the contact is told the adder is online, and the
/// adder (through the bus) that the contact is.
#[test]
fn an_add_made_mutual_elsewhere_is_told_where_the_contact_is() {
    use crate::bus::{BusEvent, Inbound};
    let mut d = beating_dispatcher();
    let b = conn(2);
    log_in(&mut d, b, "bob", vec![]);
    let event = BusEvent::BecameMutual {
        owner_id: ALICE,
        owner_name: "alice".into(),
        contact_id: BOB,
        contact_name: "bob".into(),
    };
    let mut fx = Effects::default();
    let inbound = Inbound::Event {
        node: "n1".into(),
        event,
        bytes: 1,
    };
    d.complete(Completion::Bus(inbound), NOW, &mut fx);
    assert!(matches!(&frames_for(&fx, b)[..],
        [ServerMessage::Presence(p)] if p.username == "alice" && p.online));
    assert!(
        matches!(&fx.bus[..], [BusEvent::Push { user_id: ALICE, frame }] if frame.contains("bob")),
        "{:?}",
        fx.bus
    );
}
