//! The server as a process: heartbeat and idle timeout, `--max-connections`,
//! stalled handshakes, graceful shutdown, persistence across a restart, and
//! what server.log may and may not contain.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{logged_in, message_to, register_all, Client, Closed, TestServer, SECRET};
use protocol::client::{GetHistory, PublishKey, UserRef};
use protocol::{ClientMessage, ErrorType, ServerMessage};
use tungstenite::Message;

/// What a client that never writes anything sees, with times from its connect.
struct SilentClientLog {
    first_ping: Option<Duration>,
    closed: Option<Duration>,
}

/// Connects, completes the handshake, then only reads raw bytes (so no Pong is
/// ever sent) until the server ends the connection or `limit` passes.
fn watch_silently(port: u16, limit: Duration) -> SilentClientLog {
    let start = Instant::now();
    let mut stream = Client::connect(port).into_inner().into_inner();
    let mut log = SilentClientLog {
        first_ping: None,
        closed: None,
    };
    let mut pending = Vec::new();
    let mut buffer = [0u8; 4096];
    while start.elapsed() < limit {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => {
                log.closed.get_or_insert(start.elapsed());
                break;
            }
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => {
                log.closed.get_or_insert(start.elapsed());
                break;
            }
        }
        // Server frames are unmasked: opcode in the low bits of byte 0, then a
        // 7-bit length (126 and 127 announce longer lengths).
        while pending.len() >= 2 {
            let opcode = pending[0] & 0x0f;
            let (header, length) = match pending[1] & 0x7f {
                126 if pending.len() >= 4 => {
                    (4, u16::from_be_bytes([pending[2], pending[3]]) as usize)
                }
                126 | 127 => break,
                short => (2, short as usize),
            };
            if pending.len() < header + length {
                break;
            }
            pending.drain(..header + length);
            match opcode {
                0x9 => {
                    log.first_ping.get_or_insert(start.elapsed());
                }
                0x8 => {
                    log.closed.get_or_insert(start.elapsed());
                }
                _ => {}
            }
        }
        if log.closed.is_some() {
            break;
        }
    }
    log
}

/// With `--heartbeat 1 --timeout 3`, a silent connection is pinged within about
/// a second and closed after about three, while a connection that answers
/// pings stays open.
#[test]
fn idle_connections_are_pinged_then_closed_but_answering_ones_stay() {
    let server = TestServer::start(&["--heartbeat", "1", "--timeout", "3"]);
    let port = server.port;
    let silent = thread::spawn(move || watch_silently(port, Duration::from_secs(8)));

    // tungstenite answers each ping with a pong on the next read.
    let mut ws = server.client().into_inner();
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(6) {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected frame on an answering connection: {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!(
                "the answering connection was closed after {:?}: {e}",
                start.elapsed()
            ),
        }
    }
    assert!(pings >= 2, "only {pings} pings in 6 s with --heartbeat 1");
    let mut client = Client::from_websocket(ws);
    client.ping_pong();

    let log = silent.join().unwrap();
    let first_ping = log
        .first_ping
        .expect("the silent connection never saw a ping");
    // Upper bounds are generous (a busy machine only delays); the lower
    // bound is exact: the server must not close before the timeout.
    assert!(
        first_ping <= Duration::from_millis(4000),
        "first ping after {first_ping:?}"
    );
    let closed = log
        .closed
        .expect("the silent connection was not closed within 8 s");
    assert!(
        (Duration::from_millis(2500)..=Duration::from_millis(7500)).contains(&closed),
        "silent connection closed after {closed:?}, expected about 3 s"
    );
}

/// With `--max-connections 2` a third connection is refused or closed at once,
/// and after one closes a new connection is served.
#[test]
fn max_connections_refuses_the_extra_one_until_a_slot_frees() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let mut first = server.client();
    first.ping_pong();
    let mut second = server.client();
    second.ping_pong();

    let start = Instant::now();
    assert!(
        !is_served(server.port),
        "the connection past --max-connections was served"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "refusing the extra connection took {:?}",
        start.elapsed()
    );
    second.ping_pong();

    first.close();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !is_served(server.port) {
        assert!(
            Instant::now() < deadline,
            "no connection served within 3 s after one closed"
        );
        thread::sleep(Duration::from_millis(100));
    }
    second.ping_pong();
}

/// Whether a new connection gets a Pong for its Ping. A refused handshake or a
/// close counts as not served; silence until the read timeout fails the test,
/// since a connection past the limit must be refused or closed at once.
fn is_served(port: u16) -> bool {
    let Ok(client) = Client::try_connect(port) else {
        return false;
    };
    let mut ws = client.into_inner();
    if ws.send(Message::text(r#"{"tag":8}"#)).is_err() {
        return false;
    }
    match ws.read() {
        Ok(Message::Text(text)) => {
            assert!(text.contains("\"tag\":32"), "expected Pong, got {text}");
            true
        }
        Ok(Message::Close(_)) => false,
        Ok(other) => panic!("unexpected frame {other:?}"),
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            panic!("a connection was neither served nor closed within the read timeout")
        }
        Err(_) => false,
    }
}

/// A connection that stops halfway through its HTTP upgrade does not delay
/// other clients.
#[test]
fn stalled_handshake_delays_no_one() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut stalled = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .unwrap();
    let start = Instant::now();
    let mut alice = logged_in(&server, "alice");
    alice.ping_pong();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    drop(stalled);
}

/// SIGTERM sends every client a close frame (1001), exits 0 within 5 s and
/// logs `shutdown complete`.
#[test]
fn sigterm_closes_clients_and_exits_cleanly() {
    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut alice = logged_in(&server, "alice");
    let mut anonymous = server.client();
    anonymous.ping_pong();

    let start = Instant::now();
    let closing = thread::spawn(move || (alice.expect_close(), anonymous.expect_close()));
    let status = server.stop_gracefully();
    let elapsed = start.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(elapsed <= Duration::from_secs(5), "exit took {elapsed:?}");
    let (alice_closed, anonymous_closed) = closing.join().unwrap();
    for closed in [alice_closed, anonymous_closed] {
        assert!(
            matches!(closed, Closed::Frame(_)),
            "no close frame: {closed:?}"
        );
        assert_eq!(closed.code(), Some(1001), "{closed:?}");
    }
    let log = server.log_text();
    assert!(log.contains("shutdown complete"), "server.log:\n{log}");
}

/// Accounts, contacts, messages (queued and in history), keys and sessions
/// survive a restart, and message ids keep growing after it.
#[test]
fn data_survives_a_restart() {
    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = server.client();
    let session_id = alice.login("alice", SECRET).session_id.expect("session_id");
    alice.send(&ClientMessage::AddContact(UserRef {
        username: "bob".into(),
    }));
    alice.recv_directory();
    alice.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "alice-key".into(),
    }));
    alice.recv_key();
    alice.send(&message_to("bob", "before the restart", None));
    let old_id = alice.recv_ack().message_id;
    alice.close();

    server.restart();

    let mut alice = server.client();
    alice.resume("alice", &session_id);
    alice.send(&ClientMessage::GetDirectory);
    let directory = alice.recv_directory();
    assert_eq!(directory.data.len(), 1, "{directory:?}");
    assert_eq!(directory.data[0].username, "bob");
    alice.send(&ClientMessage::GetHistory(GetHistory {
        chat_id: "bob".into(),
        before: None,
        limit: None,
    }));
    let history = alice.recv_history();
    assert_eq!(history.data.len(), 1, "{history:?}");
    assert_eq!(history.data[0].message_id, old_id);
    assert_eq!(history.data[0].content, "before the restart");

    let mut bob = server.client();
    bob.login("bob", SECRET);
    let queued = bob.recv_delivered();
    assert_eq!(
        (queued.message_id, queued.content.as_str()),
        (old_id, "before the restart")
    );
    bob.send(&ClientMessage::GetKey(UserRef {
        username: "alice".into(),
    }));
    assert_eq!(bob.recv_key().public_key.as_deref(), Some("alice-key"));

    bob.send(&message_to("alice", "after the restart", None));
    let new_id = bob.recv_ack().message_id;
    assert!(
        new_id > old_id,
        "id {new_id} after restart is not above {old_id}"
    );
    assert_eq!(alice.recv_delivered().message_id, new_id);

    // A username taken before the restart is still taken.
    let mut other = server.client();
    other.send(&common::register_message("alice", SECRET, "a@example.com"));
    assert!(matches!(other.recv(), ServerMessage::FailRegister(_)));
}

/// Every acked message survives a crash (SIGKILL) of the server process.
#[test]
fn acked_messages_survive_a_crash() {
    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let count = 30;
    for i in 0..count {
        alice.send(&message_to("bob", &format!("durable {i}"), None));
    }
    let acked: Vec<i64> = (0..count).map(|_| alice.recv_ack().message_id).collect();
    server.crash_and_restart();

    let mut bob = logged_in(&server, "bob");
    let queued: Vec<i64> = (0..count)
        .map(|_| bob.recv_delivered().message_id)
        .collect();
    assert_eq!(queued, acked);
    bob.expect_silence(Duration::from_millis(200));
}

/// server.log names each login (`alice logged in`) but never contains a
/// secret, a session id or message content.
#[test]
fn log_records_logins_without_secrets_sessions_or_content() {
    check_log_hygiene(&[]);
}

/// Even with `--debug`, neither server.log nor stderr contains a secret, a
/// session id or message content.
#[test]
fn debug_log_has_no_secrets_sessions_or_content() {
    check_log_hygiene(&["--debug"]);
}

fn check_log_hygiene(extra_args: &[&str]) {
    let mut server = TestServer::start(extra_args);
    let secret = "hunter2-secret-password";
    let content = "the-eagle-lands-at-midnight";
    let mut alice = server.client();
    alice.register("alice", secret);
    let session_id = alice.login("alice", secret).session_id.expect("session_id");
    let mut bob = server.client();
    bob.register("bob", secret);
    bob.login("bob", secret);
    alice.send(&message_to("bob", content, Some("client-id-1")));
    alice.recv_ack();
    bob.recv_delivered();
    let mut resumed = server.client();
    resumed.resume("alice", &session_id);
    // A failed login with a wrong secret must not log the attempt's secret.
    let mut failing = server.client();
    failing.send(&common::login_with_secret("alice", "wrong-secret-attempt"));
    failing.recv_fail_login();
    failing.send(&ClientMessage::Message(protocol::client::SendMessage {
        dest_id: Some("bob".into()),
        group_id: None,
        content: "unauthenticated-content".into(),
        message_id: None,
        source_id: None,
        is_encrypted: false,
    }));
    failing.expect_error(ErrorType::NotLoggedIn, Some(11));

    // Stop the server so every log line is flushed.
    drop((alice, bob, resumed, failing));
    let status = server.stop_gracefully();
    assert!(status.success());
    let log = server.log_text();
    assert!(
        log.lines().any(|l| l.contains("alice logged in")),
        "no `alice logged in` line in server.log:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("bob logged in")),
        "server.log:\n{log}"
    );
    for forbidden in [
        secret,
        "wrong-secret-attempt",
        session_id.as_str(),
        content,
        "unauthenticated-content",
    ] {
        assert!(
            !log.contains(forbidden),
            "server.log contains {forbidden:?}:\n{log}"
        );
    }
    let stderr = server.stderr_text();
    for forbidden in [secret, session_id.as_str(), content] {
        assert!(!stderr.contains(forbidden), "stderr contains {forbidden:?}");
    }
}
