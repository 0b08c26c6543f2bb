//! The PostgreSQL backend through the real binary (`--database`): every
//! family of requests behaves as on SQLite, an acked message survives
//! `kill -9` with ids never reused, and two servers starting together on a
//! fresh database both migrate it safely. Each test has a database of its
//! own; without a PostgreSQL they say `SKIPPED` (and fail with `CI=true`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::postgres_db::TestDatabase;
use common::{group_message, logged_in, message_to, refused_start, Client, TestServer, SECRET};
use protocol::client::{CreateGroup, GetHistory, LeaveGroup, PublishKey, Sync, UserRef};
use protocol::server::GroupInfo;
use protocol::{ClientMessage, ErrorType, ServerMessage};

const QUIET: Duration = Duration::from_millis(300);

/// A fresh database and a server on it, or `None` (skipped).
fn start(test: &str) -> Option<(TestDatabase, TestServer)> {
    let database = TestDatabase::create(test)?;
    let server = TestServer::start(&["--database", &database.url]);
    Some((database, server))
}

/// Registers every name over one throwaway connection.
fn register_all(server: &TestServer, names: &[&str]) {
    let mut client = server.client();
    for name in names {
        client.register(name, SECRET);
    }
    client.close();
}

/// Sends and waits for the Ack (skipping pushes); the server's id.
#[track_caller]
fn send_acked(client: &mut Client, message: ClientMessage) -> i64 {
    client.send(&message);
    loop {
        match client.recv() {
            ServerMessage::Ack(ack) => return ack.message_id,
            ServerMessage::Presence(_) | ServerMessage::GroupInfo(_) => continue,
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
}

/// Receives exactly `count` delivered messages (skipping other frames).
#[track_caller]
fn recv_messages(client: &mut Client, count: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    while ids.len() < count {
        if let ServerMessage::Message(message) = client.recv() {
            ids.push(message.message_id);
        }
    }
    ids
}

#[track_caller]
fn recv_group_info(client: &mut Client) -> GroupInfo {
    loop {
        match client.recv() {
            ServerMessage::GroupInfo(info) => return info,
            ServerMessage::Presence(_) => continue,
            other => panic!("expected GroupInfo, got {other:?}"),
        }
    }
}

/// Registering, a password login, a taken name refused, a wrong password
/// refused, and a session resumed after a restart.
#[test]
fn accounts_register_log_in_and_resume() {
    let Some((_database, mut server)) = start("accounts_register_log_in_and_resume") else {
        return;
    };
    let mut client = server.client();
    let alice_id = client.register("alice", SECRET);
    client.send(&common::register_message("alice", SECRET, "a@b.c"));
    client.recv_fail_register();
    client.send(&common::login_with_secret("alice", "wrong-password-1"));
    client.recv_fail_login();
    let login = client.login("alice", SECRET);
    assert_eq!(login.user_id, alice_id);
    let session = login.session_id.expect("a session id");
    drop(client);
    server.restart();
    let mut client = server.client();
    assert_eq!(client.resume("alice", &session).user_id, alice_id);
    let mut other = server.client();
    other.send(&common::login_with_session("alice", "not-a-session"));
    other.recv_fail_login();
    let mut laptop = server.client();
    laptop.login("alice", SECRET);
    laptop.send(&ClientMessage::GetSessions);
    let ServerMessage::Sessions(sessions) = laptop.recv() else {
        panic!("expected the sessions");
    };
    assert_eq!(sessions.data.len(), 2, "{sessions:?}");
    assert_eq!(sessions.data.iter().filter(|s| s.online).count(), 2);
    assert_eq!(sessions.data.iter().filter(|s| s.current).count(), 1);
}

/// A 1:1 message is acked and delivered live; one sent while the
/// recipient is away is pushed at its next login, once.
#[test]
fn messages_are_delivered_live_and_from_the_offline_queue() {
    let Some((_database, server)) = start("messages_are_delivered_live_and_from_the_offline_queue")
    else {
        return;
    };
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let live = send_acked(&mut alice, message_to("bob", "hello", Some("c-1")));
    let delivered = bob.recv_delivered();
    assert_eq!(
        (delivered.message_id, delivered.content.as_str()),
        (live, "hello")
    );
    bob.close();

    let queued: Vec<i64> = (0..3)
        .map(|i| send_acked(&mut alice, message_to("bob", &format!("q{i}"), None)))
        .collect();
    assert!(queued[0] > live);
    let mut bob = logged_in(&server, "bob");
    assert_eq!(recv_messages(&mut bob, 3), queued);
    bob.close();
    let mut bob = logged_in(&server, "bob");
    bob.expect_silence(QUIET);
}

/// A receipts device resumed after its connection died gets everything
/// past its confirmation, and nothing it confirmed; the sender is told.
#[test]
fn a_receipts_session_resumes_from_its_confirmation() {
    let Some((_database, server)) = start("a_receipts_session_resumes_from_its_confirmation")
    else {
        return;
    };
    register_all(&server, &["alice", "bob"]);
    let mut alice = server.client();
    alice.login_with_receipts("alice");
    let mut bob = server.client();
    let session = bob
        .login_with_receipts("bob")
        .session_id
        .expect("a session id");
    let sent: Vec<i64> = (0..4)
        .map(|i| send_acked(&mut alice, message_to("bob", &format!("m{i}"), None)))
        .collect();
    assert_eq!(recv_messages(&mut bob, 4), sent);
    bob.confirm(sent[1]);
    match alice.recv() {
        ServerMessage::Delivered(receipt) => assert_eq!(receipt.through, sent[1]),
        other => panic!("expected Delivered, got {other:?}"),
    }
    drop(bob);

    let mut bob = server.client();
    bob.resume_with_receipts("bob", &session);
    assert_eq!(recv_messages(&mut bob, 2), sent[2..]);
    bob.expect_silence(QUIET);
}

/// A group is created, its messages fan out to every member (queued for
/// the absent), and a member who leaves gets no more.
#[test]
fn groups_fan_out_and_members_leave() {
    let Some((_database, server)) = start("groups_fan_out_and_members_leave") else {
        return;
    };
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    alice.send(&ClientMessage::CreateGroup(CreateGroup {
        name: "team".into(),
        members: vec!["bob".into(), "carol".into()],
    }));
    let info = recv_group_info(&mut alice);
    assert_eq!(info.members, ["alice", "bob", "carol"]);
    recv_group_info(&mut bob);
    let first = send_acked(&mut alice, group_message(info.group_id, "hi all"));
    assert_eq!(recv_messages(&mut bob, 1), [first]);

    let mut carol = logged_in(&server, "carol");
    assert_eq!(carol.recv_delivered().message_id, first, "queued for carol");

    bob.send(&ClientMessage::LeaveGroup(LeaveGroup {
        group_id: info.group_id,
    }));
    assert!(matches!(bob.recv(), ServerMessage::Groups(g) if g.data.is_empty()));
    assert_eq!(recv_group_info(&mut alice).members, ["alice", "carol"]);
    let second = send_acked(&mut alice, group_message(info.group_id, "without bob"));
    let got = loop {
        match carol.recv() {
            ServerMessage::Message(message) => break message.message_id,
            _ => continue,
        }
    };
    assert_eq!(got, second);
    bob.expect_silence(QUIET);
}

/// Contacts are added (mutual when both did), listed in the directory,
/// and removed; keys are published and read back.
#[test]
fn contacts_directory_and_keys() {
    let Some((_database, server)) = start("contacts_directory_and_keys") else {
        return;
    };
    register_all(&server, &["alice", "bob", "Carl"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let add = |client: &mut Client, name: &str| {
        client.send(&ClientMessage::AddContact(UserRef {
            username: name.into(),
        }));
        loop {
            match client.recv() {
                ServerMessage::Directory(directory) => return directory,
                _ => continue,
            }
        }
    };
    add(&mut alice, "bob");
    let directory = add(&mut alice, "Carl");
    let names: Vec<&str> = directory.data.iter().map(|e| e.username.as_str()).collect();
    assert_eq!(names, ["Carl", "bob"], "by username in byte order");
    assert!(!directory.data[1].mutual);
    add(&mut bob, "alice");
    alice.send(&ClientMessage::GetDirectory);
    let directory = loop {
        match alice.recv() {
            ServerMessage::Directory(directory) => break directory,
            _ => continue,
        }
    };
    let bob_entry = directory.data.iter().find(|e| e.username == "bob").unwrap();
    assert!(bob_entry.mutual && bob_entry.online);

    alice.send(&ClientMessage::RemoveContact(UserRef {
        username: "Carl".into(),
    }));
    let directory = loop {
        match alice.recv() {
            ServerMessage::Directory(directory) => break directory,
            _ => continue,
        }
    };
    assert_eq!(directory.data.len(), 1);

    alice.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "alice-key-1".into(),
    }));
    assert_eq!(alice.recv_key().public_key.as_deref(), Some("alice-key-1"));
    bob.send(&ClientMessage::GetKey(UserRef {
        username: "alice".into(),
    }));
    let key = loop {
        match bob.recv() {
            ServerMessage::Key(key) => break key,
            _ => continue,
        }
    };
    assert_eq!(key.public_key.as_deref(), Some("alice-key-1"));
    alice.send(&ClientMessage::GetKey(UserRef {
        username: "Carl".into(),
    }));
    assert_eq!(alice.recv_key().public_key, None);
}

/// History pages backwards and Sync forwards, each with `has_more`.
#[test]
fn history_and_sync_page_with_has_more() {
    let Some((_database, server)) = start("history_and_sync_page_with_has_more") else {
        return;
    };
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    let mut carol = logged_in(&server, "carol");
    let sent: Vec<i64> = (0..5)
        .map(|i| send_acked(&mut alice, message_to("bob", &format!("h{i}"), None)))
        .collect();
    send_acked(&mut carol, message_to("alice", "not bob's", None));

    let mut history = |before: Option<i64>, limit: i64| {
        alice.send(&ClientMessage::GetHistory(GetHistory {
            chat_id: "bob".into(),
            before,
            limit: Some(limit),
        }));
        let page = loop {
            match alice.recv() {
                ServerMessage::History(page) => break page,
                _ => continue,
            }
        };
        let ids: Vec<i64> = page.data.iter().map(|m| m.message_id).collect();
        (ids, page.has_more)
    };
    assert_eq!(history(None, 2), (sent[3..].to_vec(), true));
    assert_eq!(history(Some(sent[3]), 2), (sent[1..3].to_vec(), true));
    assert_eq!(history(Some(sent[1]), 2), (sent[..1].to_vec(), false));

    let mut bob = logged_in(&server, "bob");
    recv_messages(&mut bob, 5);
    let mut sync = |since: i64, limit: i64| {
        bob.send(&ClientMessage::Sync(Sync {
            since,
            limit: Some(limit),
        }));
        let page = bob.recv_synced();
        let ids: Vec<i64> = page.data.iter().map(|m| m.message_id).collect();
        (ids, page.has_more)
    };
    assert_eq!(sync(0, 3), (sent[..3].to_vec(), true));
    assert_eq!(sync(sent[2], 3), (sent[3..].to_vec(), false));
}

/// A resend with the same client id, on a new connection, is acked with
/// the first id, delivered once and stored once — after a restart too.
#[test]
fn a_resent_client_id_is_acked_with_the_first_id_and_stored_once() {
    let Some((database, mut server)) =
        start("a_resent_client_id_is_acked_with_the_first_id_and_stored_once")
    else {
        return;
    };
    register_all(&server, &["alice", "bob"]);
    let mut bob = logged_in(&server, "bob");
    let mut alice = logged_in(&server, "alice");
    let first = send_acked(&mut alice, message_to("bob", "once", Some("c-42")));
    drop(alice);
    let mut alice = logged_in(&server, "alice");
    let again = send_acked(&mut alice, message_to("bob", "once", Some("c-42")));
    assert_eq!(again, first, "the resend is acked with the first id");
    assert_eq!(recv_messages(&mut bob, 1), [first]);
    bob.expect_silence(QUIET);
    drop((alice, bob));

    server.restart();
    let mut alice = logged_in(&server, "alice");
    let after_restart = send_acked(&mut alice, message_to("bob", "once", Some("c-42")));
    assert_eq!(
        after_restart, first,
        "recognised from the rows after a restart"
    );
    let stored: BTreeSet<i64> = database.stored_messages().into_keys().collect();
    assert_eq!(stored, BTreeSet::from([first]), "stored once");
}

/// `kill -9` right after an Ack: the message is in the database after the
/// restart (and delivered), the start reports the crash, and the next id
/// is larger than every id handed out before.
#[test]
fn an_acked_message_survives_kill_9_and_ids_are_not_reused() {
    let Some((database, mut server)) =
        start("an_acked_message_survives_kill_9_and_ids_are_not_reused")
    else {
        return;
    };
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let acked: Vec<i64> = (0..20)
        .map(|i| send_acked(&mut alice, message_to("bob", &format!("k{i}"), None)))
        .collect();
    drop(alice);
    server.crash_and_restart();
    assert!(
        server.log_text().contains("did not shut down cleanly"),
        "the crash is recognised"
    );
    let stored = database.stored_messages();
    for id in &acked {
        assert!(stored.contains_key(id), "acked {id} is stored");
    }
    let mut bob = logged_in(&server, "bob");
    assert_eq!(recv_messages(&mut bob, acked.len()), acked);
    let mut alice = logged_in(&server, "alice");
    let next = send_acked(&mut alice, message_to("bob", "after", None));
    assert!(
        next > *acked.iter().max().unwrap(),
        "{next} is past {acked:?}"
    );
}

/// Two servers started at the same moment on a fresh database: one takes
/// it and migrates it once; the other is refused (one server per database
/// unless in cluster mode) and says why. Once the first has stopped, a new
/// start takes the database and serves, its ids from the counter.
#[test]
fn one_server_per_database_even_when_two_start_together() {
    let Some(database) =
        TestDatabase::create("one_server_per_database_even_when_two_start_together")
    else {
        return;
    };
    let url = database.url.clone();
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || TestServer::start(&["--database", &url]))
        })
        .collect();
    let (mut started, refused): (Vec<_>, Vec<_>) = starts
        .into_iter()
        .map(|start| start.join())
        .partition(Result::is_ok);
    assert_eq!((started.len(), refused.len()), (1, 1), "exactly one runs");
    let why = match refused.into_iter().next() {
        Some(Err(panic)) => panic.downcast_ref::<String>().cloned().unwrap_or_default(),
        _ => unreachable!("partitioned"),
    };
    assert!(
        why.contains("another chat-server is using this database"),
        "{why}"
    );
    let mut check = database.connect();
    let versions: Vec<i32> = check
        .query("SELECT version FROM schema_version", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, [4], "one version row");

    let mut first = started.pop().unwrap().unwrap();
    assert!(first.stop_gracefully().success());
    let next = TestServer::start(&["--database", &url]);
    register_all(&next, &["alice", "bob"]);
    let mut alice = logged_in(&next, "alice");
    let id = send_acked(&mut alice, message_to("bob", "still here", None));
    let counter: i64 = check
        .query_one(
            "SELECT value FROM server_state WHERE key = 'ids_reserved_through'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(counter, id, "the id counter commits with the message");
    alice.send(&message_to("nobody", "x", None));
    alice.expect_error(ErrorType::UnknownUser, Some(11));
}

/// A PostgreSQL that does not answer stops the start with where it looked
/// (without the password) and why.
#[test]
fn an_unreachable_database_is_named_without_its_password() {
    let stderr = refused_start(&["--database", "postgres://chat:s3cret@127.0.0.1:1/chat"]);
    assert!(
        stderr.contains("postgres://chat@127.0.0.1:1/chat") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
}

/// A database whose schema a newer server wrote is refused, not migrated
/// backwards or written to.
#[test]
fn a_newer_schema_is_refused() {
    let Some(database) = TestDatabase::create("a_newer_schema_is_refused") else {
        return;
    };
    database
        .connect()
        .batch_execute(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version VALUES (99)",
        )
        .unwrap();
    let stderr = refused_start(&["--database", &database.url]);
    assert!(stderr.contains("schema version 99 is newer"), "{stderr}");
}

/// PostgreSQL closing the server's connection (a restart, an administrator)
/// costs at most the batch in flight: the next one reconnects, and sends are
/// acked and delivered again.
#[test]
fn a_connection_postgres_closed_is_opened_again() {
    let Some((database, server)) = start("a_connection_postgres_closed_is_opened_again") else {
        return;
    };
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    send_acked(&mut alice, message_to("bob", "before", None));
    bob.recv_delivered();
    let terminated = database
        .connect()
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .len();
    assert_eq!(terminated, 1, "the server's one connection");

    let mut acked = None;
    for attempt in 0..5 {
        alice.send(&message_to("bob", &format!("after {attempt}"), None));
        match alice.recv() {
            ServerMessage::Ack(ack) => {
                acked = Some(ack.message_id);
                break;
            }
            ServerMessage::Error(error) => assert_eq!(error.error_type, ErrorType::ServerBusy),
            other => panic!("expected an Ack or server_busy, got {other:?}"),
        }
    }
    let acked = acked.expect("a send is acked again after the reconnect");
    assert_eq!(recv_messages(&mut bob, 1), [acked]);
    assert!(
        server.log_text().contains("reconnected to"),
        "{}",
        server.log_text()
    );
}

/// PostgreSQL cannot store a NUL character, so the server refuses one in
/// any text it keeps (on every backend): `bad_request`, nothing stored,
/// and the connection goes on.
#[test]
fn text_with_a_nul_character_is_refused_and_the_connection_goes_on() {
    let Some((_database, server)) =
        start("text_with_a_nul_character_is_refused_and_the_connection_goes_on")
    else {
        return;
    };
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let refused = [
        message_to("bob", "a\0b", None),
        message_to("bob", "fine", Some("id\0")),
        ClientMessage::CreateGroup(CreateGroup {
            name: "te\0am".into(),
            members: vec!["bob".into()],
        }),
        ClientMessage::PublishKey(PublishKey {
            public_key: "AA\0A".into(),
        }),
    ];
    for request in &refused {
        alice.send(request);
        let tag = i64::from(request.tag());
        alice.expect_error(ErrorType::BadRequest, Some(tag));
    }
    assert!(send_acked(&mut alice, message_to("bob", "after", None)) > 0);
}
