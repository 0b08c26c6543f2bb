//! Resource budgets through the real binary (issue 11): what one client,
//! address or account may take — password guesses in flight, group
//! operations, connections, registration probes, hashing time for a stored
//! hash — and that taking it leaves everyone else served. Also the lockout
//! that cannot lock the rightful user out forever, the private data
//! directory, close code 1007 and Logout reaching connections still resuming.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    login_with_secret, login_with_session, message_to, register_all, register_message,
    send_registrations, tcp_connect_from, Client, TestServer, SECRET,
};
use protocol::client::{AddGroupMembers, CreateGroup, Logout};
use protocol::server::{LoginError, RegisterError};
use protocol::{ClientMessage, ErrorType, ServerMessage};
use tungstenite::Message;

/// The address every harness client connects from.
const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Another client address on the loopback interface.
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// A third one.
const FARAWAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Generous deadline for conditions that need many frames or a restart.
const DEADLINE: Duration = Duration::from_secs(30);

/// How a Login was answered.
#[derive(Debug, PartialEq, Eq)]
enum LoginOutcome {
    Success,
    Failed(LoginError),
}

fn login_outcome(client: &mut Client) -> LoginOutcome {
    match client.recv() {
        ServerMessage::SuccessLogin(_) => LoginOutcome::Success,
        ServerMessage::FailLogin(f) => LoginOutcome::Failed(f.error_type),
        other => panic!("expected a Login answer, got {other:?}"),
    }
}

/// Logs in as `name` with `secret` from `source` and returns the answer.
fn login_from(server: &TestServer, source: Ipv4Addr, name: &str, secret: &str) -> LoginOutcome {
    let mut client = Client::try_connect_from(source, server.port).expect("connect");
    client.send(&login_with_secret(name, secret));
    login_outcome(&mut client)
}

/// Issue 11.4: thirty password guesses for one account sent in parallel
/// are not all hashed: at most one is in flight at a time, the others get
/// `rate_limited` at once, and no more guesses are verified than the
/// lockout allows — so the right password at the end is only accepted if
/// the lockout was not reached.
#[test]
fn parallel_password_guesses_for_one_account_are_not_all_hashed() {
    // A costlier hash keeps the first guess in flight while the rest arrive.
    let server = TestServer::start(&["--pbkdf2-iterations", "100000"]);
    register_all(&server, &["alice"]);
    let mut guessers: Vec<Client> = (0..30).map(|_| server.client()).collect();
    for (i, guesser) in guessers.iter_mut().enumerate() {
        let secret = if i == 29 { SECRET } else { "wrong-guess-1" };
        guesser.send(&login_with_secret("alice", secret));
    }
    let outcomes: Vec<LoginOutcome> = guessers.iter_mut().map(login_outcome).collect();
    let verified_wrong = outcomes
        .iter()
        .filter(|o| **o == LoginOutcome::Failed(LoginError::InvalidCredentials))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| **o == LoginOutcome::Failed(LoginError::RateLimited))
        .count();
    let succeeded = outcomes
        .iter()
        .filter(|o| **o == LoginOutcome::Success)
        .count();
    let lockout_threshold = 5;
    assert!(
        verified_wrong <= lockout_threshold,
        "{verified_wrong} parallel guesses were hashed and answered: {outcomes:?}"
    );
    assert!(refused > 0 && succeeded <= 1, "{outcomes:?}");
    assert_eq!(verified_wrong + refused + succeeded, 30);
    if succeeded == 0 {
        // The answer now depends only on whether the lockout was reached.
        let expected = match verified_wrong {
            n if n >= lockout_threshold => LoginOutcome::Failed(LoginError::RateLimited),
            _ => LoginOutcome::Success,
        };
        assert_eq!(login_from(&server, HOME, "alice", SECRET), expected);
    }
}

/// Issue 11.3: sixty logins flooding from one address do not stall a login
/// from another: the hashing workers take addresses in turn, so the quiet
/// login is verified after about one of the flood's hashes, while most of the
/// flood is still waiting.
#[test]
fn a_login_flood_from_one_address_does_not_delay_another_address() {
    // One worker and a hash of tens of milliseconds: the flood takes seconds.
    let server = TestServer::start(&["--pbkdf2-iterations", "50000", "--hash-workers", "1"]);
    register_all(&server, &["alice"]);
    let flood = 60;
    let mut flooders: Vec<Client> = (0..flood)
        .map(|_| Client::try_connect_from(ELSEWHERE, server.port).expect("connect"))
        .collect();
    for (i, flooder) in flooders.iter_mut().enumerate() {
        flooder.send(&login_with_secret(&format!("nobody{i}"), "wrong-guess-1"));
    }
    let mut quiet = server.client();
    quiet.send(&login_with_secret("alice", SECRET));
    assert_eq!(login_outcome(&mut quiet), LoginOutcome::Success);
    // Every flood answer sent before the quiet one is in its socket by now
    // (loopback delivers within the sending write).
    let answered = flooders
        .iter()
        .filter(|flooder| flooder.has_unread_bytes())
        .count();
    assert!(
        answered <= 10,
        "{answered} of {flood} flood logins were hashed before the quiet one"
    );
    for flooder in flooders.iter_mut().filter(|f| f.has_unread_bytes()) {
        assert_eq!(
            login_outcome(flooder),
            LoginOutcome::Failed(LoginError::InvalidCredentials)
        );
    }
}

/// Issue 11.13 (lockout): an attacker failing from other addresses keeps
/// the account locked for them, but the address the user logged in from
/// before still logs in; and that address is locked only by its own failures.
#[test]
fn a_usual_address_logs_in_while_failures_elsewhere_keep_the_account_locked() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    assert_eq!(
        login_from(&server, HOME, "alice", SECRET),
        LoginOutcome::Success
    );
    for _ in 0..5 {
        assert_eq!(
            login_from(&server, ELSEWHERE, "alice", "wrong-guess-1"),
            LoginOutcome::Failed(LoginError::InvalidCredentials)
        );
    }
    let locked = LoginOutcome::Failed(LoginError::RateLimited);
    assert_eq!(login_from(&server, ELSEWHERE, "alice", SECRET), locked);
    assert_eq!(login_from(&server, FARAWAY, "alice", SECRET), locked);
    assert_eq!(
        login_from(&server, HOME, "alice", SECRET),
        LoginOutcome::Success,
        "the usual address is not locked out by someone else's guesses"
    );
    for _ in 0..5 {
        assert_eq!(
            login_from(&server, HOME, "alice", "wrong-guess-2"),
            LoginOutcome::Failed(LoginError::InvalidCredentials)
        );
    }
    assert_eq!(login_from(&server, HOME, "alice", SECRET), locked);
}

/// Issue 11.8: a flood of group operations on one connection is cut off
/// with `rate_limited`, and the other members receive a GroupInfo only for
/// the operations that passed.
#[test]
fn group_operations_are_rate_limited_per_connection() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = common::logged_in(&server, "alice");
    let mut bob = common::logged_in(&server, "bob");
    alice.send(&ClientMessage::CreateGroup(CreateGroup {
        name: "g".into(),
        members: vec!["bob".into()],
    }));
    let group_id = match alice.recv() {
        ServerMessage::GroupInfo(info) => info.group_id,
        other => panic!("expected GroupInfo, got {other:?}"),
    };
    let flood = 256;
    for _ in 0..flood {
        alice.send(&ClientMessage::AddGroupMembers(AddGroupMembers {
            group_id,
            members: vec![],
        }));
    }
    let (mut passed, mut limited) = (0, 0);
    for _ in 0..flood {
        match alice.recv() {
            ServerMessage::GroupInfo(_) => passed += 1,
            ServerMessage::Error(e) if e.error_type == ErrorType::RateLimited => {
                assert_eq!(e.ref_tag, Some(13));
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(limited > 0, "{flood} AddGroupMembers all passed");
    assert!(passed <= 40, "{passed} passed the group-operation burst");
    // Bob's GroupInfo frames were queued before his Pong.
    bob.send(&ClientMessage::Ping);
    let mut infos = 0;
    loop {
        match bob.recv() {
            ServerMessage::GroupInfo(_) => infos += 1,
            ServerMessage::Pong => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        infos,
        passed + 1,
        "one for the creation, one per passed add"
    );

    // CreateGroup shares the budget of a fresh connection the same way.
    let mut creator = common::logged_in(&server, "bob");
    for i in 0..100 {
        creator.send(&ClientMessage::CreateGroup(CreateGroup {
            name: format!("g{i}"),
            members: vec![],
        }));
    }
    let created = (0..100)
        .filter(|_| matches!(creator.recv(), ServerMessage::GroupInfo(_)))
        .count();
    assert!(created <= 40, "{created} of 100 groups created");
}

/// Issue 11.9: silent sockets from one address take at most its share of
/// `--max-connections` (max(8, 50/16) = 8 here); the rest from there get HTTP
/// 503, another address is still served, and closed sockets give their
/// places back.
#[test]
fn one_address_cannot_fill_the_server_with_silent_sockets() {
    let server = TestServer::start(&["--max-connections", "50"]);
    let silent: Vec<TcpStream> = (0..50)
        .map(|_| tcp_connect_from(HOME, server.port, None).expect("TCP connect"))
        .collect();
    let mut other = Client::try_connect_from(ELSEWHERE, server.port)
        .expect("another address is served while one address floods");
    other.ping_pong();
    match Client::try_connect_from(HOME, server.port) {
        Err(error) => assert!(error.contains("503"), "{error}"),
        Ok(_) => panic!("a connection past the per-address cap was served"),
    }
    drop(silent);
    let deadline = Instant::now() + DEADLINE;
    let mut back = loop {
        match Client::try_connect_from(HOME, server.port) {
            Ok(client) => break client,
            Err(error) if Instant::now() < deadline => {
                assert!(error.contains("503"), "{error}");
                std::thread::sleep(Duration::from_millis(50)); // retry pacing
            }
            Err(error) => panic!("closed sockets did not give their places back: {error}"),
        }
    };
    back.ping_pong();
    assert!(server.log_text().contains("connections from its address"));
}

/// `--max-connections-per-address` sets the cap explicitly.
#[test]
fn the_per_address_cap_follows_its_flag() {
    let server = TestServer::start(&["--max-connections-per-address", "2"]);
    let mut first = server.client();
    let mut second = server.client();
    first.ping_pong();
    second.ping_pong();
    assert!(Client::try_connect(server.port).is_err());
    Client::try_connect_from(ELSEWHERE, server.port)
        .expect("another address")
        .ping_pong();
}

/// Issue 11.10: probing which usernames exist with Register is limited by
/// the per-address registration rate like any registration: the rate is
/// checked before the name is looked up.
#[test]
fn username_probes_through_register_are_rate_limited() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut prober = server.client();
    let probes = 300;
    for _ in 0..probes {
        prober.send(&register_message("alice", SECRET, "a@example.com"));
    }
    let (mut taken, mut limited) = (0, 0);
    for _ in 0..probes {
        match prober.recv_fail_register().error_type {
            RegisterError::UsernameTaken => taken += 1,
            RegisterError::RateLimited => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(limited > 0, "{probes} probes were all answered");
    assert!(taken <= 150, "{taken} probes learned the name is taken");
}

/// Issue 11.11: a stored password hash longer than the bound is refused by
/// `import-json`, and one already in the database fails verification at
/// once instead of costing the login seconds (or here, at 600,000
/// iterations over 48 KB of key, hours).
#[test]
fn an_oversized_stored_hash_is_refused_on_import_and_costs_no_login_time() {
    let huge_key = "A".repeat(48 * 1024);
    let huge = format!("$pbkdf2-sha256$i=600000$c2FsdHNhbHRzYWx0c2FsdA${huge_key}");

    let files = tempfile::tempdir().unwrap();
    let users = serde_json::json!({"version": 1, "users": [{
        "username": "mallory", "email": "m@example.com", "password_hash": huge,
        "salt": "c2FsdHNhbHRzYWx0c2FsdA", "created_at": 1_700_000_000
    }]});
    std::fs::write(files.path().join("users.json"), users.to_string()).unwrap();
    let contacts = serde_json::json!({"version": 1, "contacts": []});
    std::fs::write(files.path().join("contacts.json"), contacts.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("import-json")
        .arg(files.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("longer than 256 bytes"), "{stderr}");

    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    server.restart_with(|data_dir| {
        let db = rusqlite::Connection::open(data_dir.join("chat.db")).unwrap();
        db.execute(
            "UPDATE users SET password_hash = ?1 WHERE username = 'alice'",
            [&huge],
        )
        .unwrap();
    });
    let mut alice = server.client();
    alice.send(&login_with_secret("alice", SECRET));
    assert_eq!(
        login_outcome(&mut alice),
        LoginOutcome::Failed(LoginError::InvalidCredentials)
    );
    assert_eq!(
        login_from(&server, HOME, "bob", SECRET),
        LoginOutcome::Success
    );
}

/// Issue 11.13: a data directory the server creates is private (0700), like
/// the files in it.
#[test]
fn the_data_directory_is_created_private() {
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("fresh").join("data");
    let server = TestServer::start(&["--data-dir", data_dir.to_str().unwrap()]);
    register_all(&server, &["alice"]);
    for dir in [data_dir.as_path(), data_dir.parent().unwrap()] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{} has mode {:o}", dir.display(), mode);
    }
}

/// Issue 11.13: a text frame that is not UTF-8 is answered with close code
/// 1007 (invalid payload), not a dropped connection.
#[test]
fn a_text_frame_that_is_not_utf8_gets_close_code_1007() {
    let server = TestServer::start(&[]);
    let mut ws = server.client().into_inner();
    // A masked, final text frame carrying 0xFF 0xFE: no UTF-8 starts so.
    let mask = [1u8, 2, 3, 4];
    let payload = [0xffu8, 0xfe];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    ws.get_mut().write_all(&frame).unwrap();
    let closed = Client::from_websocket(ws).expect_close();
    assert_eq!(closed.code(), Some(1007), "{closed:?}");
    server.client().ping_pong();
}

/// Issue 11.12: Logout ends its session on every connection, including one
/// still resuming it (here, one that does not read its offline queue, so its
/// login cannot finish): that connection is closed, and the request it
/// pipelined behind its Login never runs.
#[test]
fn logout_closes_connections_still_resuming_the_session() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let session = {
        let mut alice = server.client();
        let ok = alice.login("alice", SECRET);
        alice.close();
        ok.session_id.expect("a session id")
    };
    // Some 9 MB waiting for alice: more than a small receive buffer and the
    // server's socket buffer hold, so a resume that does not read stalls.
    let mut bob = common::logged_in(&server, "bob");
    // One at a time: pipelined, they can outrun the per-connection storage
    // budget (9 MB against 4 MiB) and be refused `server_busy`.
    let content = "q".repeat(60_000);
    for _ in 0..150 {
        bob.send(&message_to("alice", &content, None));
        bob.recv_ack();
    }
    let stalled_socket = tcp_connect_from(HOME, server.port, Some(64 * 1024)).expect("TCP connect");
    let mut stalled = Client::handshake(stalled_socket, server.port).expect("handshake");
    stalled.send(&login_with_session("alice", &session));
    stalled.send(&message_to("bob", "sent after the logout", Some("late")));

    let mut other = server.client();
    other.send(&login_with_session("alice", &session));
    // GetDirectory waits behind the login: its answer comes once this
    // connection has taken the rest of the queue and is logged in.
    other.send(&ClientMessage::GetDirectory);
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "the second resume never finished"
        );
        match other.recv() {
            ServerMessage::Directory(_) => break,
            ServerMessage::SuccessLogin(_) | ServerMessage::Message(_) => continue,
            unexpected => panic!("unexpected {unexpected:?}"),
        }
    }
    other.send(&ClientMessage::Logout(Logout { username: None }));
    loop {
        match other.recv() {
            ServerMessage::SuccessLogout(_) => break,
            ServerMessage::Message(_) => continue,
            unexpected => panic!("expected SuccessLogout, got {unexpected:?}"),
        }
    }

    let mut ws = stalled.into_inner();
    ws.get_ref().set_read_timeout(Some(DEADLINE)).unwrap();
    let ended = loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let frame = protocol::decode_server(text.as_str()).unwrap();
                assert!(
                    !matches!(frame, ServerMessage::Ack(_)),
                    "the request behind the resume ran after the logout"
                );
                assert!(Instant::now() < deadline, "never closed after the logout");
            }
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the resuming connection was not closed by the logout")
            }
            Err(_) => break None, // dropped after the close deadline
        }
    };
    assert!(ended.is_none() || ended == Some(1000), "{ended:?}");
    bob.send(&ClientMessage::Ping);
    assert!(
        matches!(bob.recv(), ServerMessage::Pong),
        "bob received the message pipelined behind the logged-out resume"
    );
}

/// The hashing queue's bound (`HASH_QUEUE_MAX`, 1,024 jobs waiting): with
/// the per-address limits off, one worker and hashes slow, registrations
/// past it are answered `rate_limited` at once — the event loop answers
/// what the queue gives back — and the server goes on answering the same
/// connection.
#[test]
fn registrations_past_the_hash_queue_are_refused_at_once() {
    let server = TestServer::start(&[
        "--no-rate-limits",
        "--hash-workers",
        "1",
        "--pbkdf2-iterations",
        "500000",
    ]);
    let mut client = server.client();
    let sent = 1_100;
    send_registrations(&mut client, "user", sent);
    // 1,024 wait and the worker may have taken one more before the queue
    // filled. Should a hash finish meanwhile (a slow, busy machine), its
    // place in the queue takes one more registration.
    let (fewest, most) = (sent - 1_024 - 1, sent - 1_024);
    // (refused, finished): the answers to the registrations so far.
    let mut answers = (0, 0);
    fn take(message: ServerMessage, (refused, finished): &mut (usize, usize)) {
        match message {
            ServerMessage::FailRegister(fail) => {
                assert_eq!(fail.error_type, RegisterError::RateLimited, "{fail:?}");
                *refused += 1;
            }
            ServerMessage::SuccessRegister(_) => {
                *finished += 1;
                // Refusals come at once; a hash takes a good part of a second.
                assert!(*finished <= 2, "hashes finished before the refusals came");
            }
            other => panic!("unexpected {other:?} after {refused} refusals"),
        }
    }
    while answers.0 + answers.1 < fewest {
        take(client.recv(), &mut answers);
    }
    client.send(&ClientMessage::Ping);
    loop {
        match client.recv() {
            ServerMessage::Pong => break,
            other => take(other, &mut answers),
        }
    }
    let (refused, finished) = answers;
    let fewest = fewest - finished;
    assert!(
        (fewest..=most).contains(&refused),
        "{refused} of {sent} refused"
    );
}
