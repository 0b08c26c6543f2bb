//! Request ids (protocol 1.1) through the real binary: every kind of reply
//! echoes the `request_id` of the request it answers — whether it is answered
//! at once, after the storage thread, or after a password hash — and pushes
//! never carry one.

mod common;

use std::time::Duration;

use common::{login_with_secret, register_all, register_message, Client, TestServer, SECRET};
use protocol::client::{
    AddGroupMembers, CreateGroup, GetHistory, LeaveGroup, Logout, PublishKey, SendMessage, Sync,
    UserRef,
};
use protocol::{ClientMessage, RequestId, ServerMessage};

/// Sends `message` with `id` and returns the next frame, asserting it echoes
/// `id` and has the tag `reply_tag`.
#[track_caller]
fn ask(client: &mut Client, message: ClientMessage, id: &str, reply_tag: u8) -> ServerMessage {
    client.send_with_id(&message, id);
    let (reply, echoed) = client.recv_with_id();
    assert_eq!(reply.tag(), reply_tag, "reply to {id}: {reply:?}");
    assert_eq!(
        echoed,
        Some(RequestId::from(id)),
        "reply to {id}: {reply:?}"
    );
    reply
}

fn message_to(dest: &str, content: &str) -> ClientMessage {
    ClientMessage::Message(SendMessage {
        dest_id: Some(dest.into()),
        group_id: None,
        content: content.into(),
        message_id: None,
        source_id: None,
        is_encrypted: false,
    })
}

fn user(name: &str) -> UserRef {
    UserRef {
        username: name.into(),
    }
}

/// One request of every tag, each with its own id: the reply carries it.
#[test]
fn every_reply_kind_echoes_its_request_id() {
    let server = TestServer::start(&[]);
    register_all(&server, &["bob"]);
    let mut alice = server.client();
    ask(
        &mut alice,
        register_message("alice", SECRET, "a@example.com"),
        "reg",
        21,
    );
    ask(
        &mut alice,
        register_message("alice", SECRET, "a@example.com"),
        "reg-again",
        28,
    );
    ask(
        &mut alice,
        login_with_secret("alice", "wrong-password"),
        "bad-login",
        29,
    );
    ask(
        &mut alice,
        ClientMessage::GetDirectory,
        "dir-before-login",
        30,
    );
    ask(&mut alice, ClientMessage::Ping, "ping", 32);
    ask(&mut alice, login_with_secret("alice", SECRET), "login", 22);
    ask(&mut alice, ClientMessage::GetDirectory, "dir", 26);
    ask(
        &mut alice,
        ClientMessage::AddContact(user("bob")),
        "add",
        26,
    );
    ask(
        &mut alice,
        ClientMessage::RemoveContact(user("bob")),
        "remove",
        26,
    );
    let key = PublishKey {
        public_key: "AAAA".into(),
    };
    ask(&mut alice, ClientMessage::PublishKey(key), "publish", 33);
    ask(
        &mut alice,
        ClientMessage::GetKey(user("bob")),
        "get-key",
        33,
    );
    ask(
        &mut alice,
        ClientMessage::GetKey(user("zed")),
        "get-key-unknown",
        30,
    );
    ask(&mut alice, message_to("bob", "hello"), "msg", 24);
    let history = GetHistory {
        chat_id: "bob".into(),
        before: None,
        limit: None,
    };
    ask(
        &mut alice,
        ClientMessage::GetHistory(history),
        "history",
        25,
    );
    let sync = Sync {
        since: 0,
        limit: None,
    };
    ask(&mut alice, ClientMessage::Sync(sync), "sync", 36);
    let create = CreateGroup {
        name: "team".into(),
        members: vec!["bob".into()],
    };
    let ServerMessage::GroupInfo(group) =
        ask(&mut alice, ClientMessage::CreateGroup(create), "create", 34)
    else {
        unreachable!("ask checked the tag");
    };
    let add = AddGroupMembers {
        group_id: group.group_id,
        members: vec![],
    };
    ask(&mut alice, ClientMessage::AddGroupMembers(add), "grow", 34);
    ask(&mut alice, ClientMessage::GetGroups, "groups", 35);
    ask(&mut alice, ClientMessage::GetSessions, "sessions", 38);
    let leave = LeaveGroup {
        group_id: group.group_id,
    };
    ask(&mut alice, ClientMessage::LeaveGroup(leave), "leave", 35);
    ask(
        &mut alice,
        ClientMessage::Logout(Logout::default()),
        "logout",
        23,
    );
}

/// Integer ids come back as integers; a request without an id gets a reply
/// without one; a bad id is `bad_request` and echoes nothing; a frame that
/// fails to decode still has its (valid) id echoed on the Error.
#[test]
fn ids_are_echoed_as_given_and_bad_ids_are_refused() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    client.send_with_id(&ClientMessage::Ping, RequestId::Number(41));
    assert_eq!(
        client.recv_with_id(),
        (ServerMessage::Pong, Some(RequestId::Number(41)))
    );
    client.send(&ClientMessage::Ping);
    assert_eq!(client.recv_with_id(), (ServerMessage::Pong, None));

    client.send_raw(&format!(r#"{{"tag":8,"request_id":"{}"}}"#, "x".repeat(65)));
    let frame = client.recv_json();
    assert_eq!(frame["tag"], 30, "{frame}");
    assert_eq!(frame["error_type"], "bad_request", "{frame}");
    assert_eq!(frame["ref_tag"], 8, "{frame}");
    assert!(frame.get("request_id").is_none(), "{frame}");
    client.send_raw(r#"{"tag":8,"request_id":true}"#);
    let frame = client.recv_json();
    assert_eq!(frame["error_type"], "bad_request", "{frame}");

    client.send_raw(r#"{"tag":16,"request_id":"no-since"}"#);
    let (reply, id) = client.recv_with_id();
    assert!(matches!(reply, ServerMessage::Error(_)), "{reply:?}");
    assert_eq!(id, Some(RequestId::from("no-since")));
    client.send_raw(r#"{"tag":99,"request_id":7}"#);
    let (reply, id) = client.recv_with_id();
    assert!(matches!(reply, ServerMessage::Error(_)), "{reply:?}");
    assert_eq!(id, Some(RequestId::Number(7)));
}

/// Pushes (a delivered message, Presence, ContactRequest, a GroupInfo to the
/// other members) carry no id, even when the request that caused them had one.
#[test]
fn pushes_carry_no_request_id() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut bob = server.client();
    ask(&mut bob, login_with_secret("bob", SECRET), "bob-login", 22);
    let mut alice = server.client();
    ask(
        &mut alice,
        login_with_secret("alice", SECRET),
        "alice-login",
        22,
    );

    ask(
        &mut alice,
        ClientMessage::AddContact(user("bob")),
        "alice-add",
        26,
    );
    let (request, id) = bob.recv_with_id();
    assert!(
        matches!(request, ServerMessage::ContactRequest(_)),
        "{request:?}"
    );
    assert_eq!(id, None);
    ask(
        &mut bob,
        ClientMessage::AddContact(user("alice")),
        "bob-add",
        26,
    );
    // Becoming mutual sends Presence both ways: a push, even to the
    // connection whose request caused it.
    for client in [&mut bob, &mut alice] {
        let (presence, id) = client.recv_with_id();
        assert!(
            matches!(presence, ServerMessage::Presence(_)),
            "{presence:?}"
        );
        assert_eq!(id, None);
    }

    ask(&mut alice, message_to("bob", "hi"), "m1", 24);
    let (delivered, id) = bob.recv_with_id();
    assert!(
        matches!(delivered, ServerMessage::Message(_)),
        "{delivered:?}"
    );
    assert_eq!(id, None);

    let create = CreateGroup {
        name: "pair".into(),
        members: vec!["bob".into()],
    };
    ask(&mut alice, ClientMessage::CreateGroup(create), "create", 34);
    let (info, id) = bob.recv_with_id();
    assert!(matches!(info, ServerMessage::GroupInfo(_)), "{info:?}");
    assert_eq!(id, None, "another member's GroupInfo is a push");
    alice.expect_silence(Duration::from_millis(200));
}

/// Requests pipelined behind a password login (which waits for storage and
/// a hash) and answered in any order are each answered with their own id.
#[test]
fn pipelined_requests_behind_a_login_keep_their_ids() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = server.client();
    alice.send_with_id(&login_with_secret("alice", SECRET), "login");
    alice.send_with_id(
        &ClientMessage::PublishKey(PublishKey {
            public_key: "K".into(),
        }),
        "publish",
    );
    alice.send_with_id(&ClientMessage::GetKey(user("zed")), "lookup-zed");
    alice.send_with_id(&ClientMessage::GetKey(user("bob")), "lookup-bob");
    alice.send_with_id(&ClientMessage::Ping, "ping");
    let mut answers = Vec::new();
    while answers.len() < 5 {
        let (reply, id) = alice.recv_with_id();
        let id = id.unwrap_or_else(|| panic!("reply without id: {reply:?}"));
        answers.push((id.to_string(), reply.tag()));
    }
    answers.sort();
    let expected = [
        ("login", 22),
        ("lookup-bob", 33),
        ("lookup-zed", 30),
        ("ping", 32),
        ("publish", 33),
    ];
    let expected: Vec<(String, u8)> = expected
        .iter()
        .map(|(id, tag)| (id.to_string(), *tag))
        .collect();
    assert_eq!(answers, expected);
}
