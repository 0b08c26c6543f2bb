//! Limits and abuse, through the real binary: the default rate limits let
//! real people (and tests) through untouched and stop floods and guessing;
//! abusive connections are closed; browser origins and stalled handshakes
//! are handled.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{
    logged_in, login_with_secret, message_to, register_all, register_message, send_registrations,
    Client, TestServer, SECRET,
};
use protocol::server::{LoginError, RegisterError};
use protocol::ServerMessage;
use tungstenite::client::IntoClientRequest;

/// 50 registrations and 50 logins from one address within a second, 300
/// messages pipelined on one connection, and a handful of failed logins all
/// pass the default limits untouched.
#[test]
fn the_default_limits_let_ordinary_bursts_through() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    for i in 0..50 {
        client.send(&register_message(
            &format!("user{i}"),
            SECRET,
            "u@example.com",
        ));
    }
    for _ in 0..50 {
        assert!(matches!(client.recv(), ServerMessage::SuccessRegister(_)));
    }
    for i in 0..4 {
        let mut wrong = server.client();
        wrong.send(&login_with_secret(&format!("user{i}"), "not-the-secret"));
        assert!(
            matches!(wrong.recv(), ServerMessage::FailLogin(f) if f.error_type == LoginError::InvalidCredentials)
        );
    }
    let mut logins: Vec<Client> = (0..50).map(|_| server.client()).collect();
    for (i, login) in logins.iter_mut().enumerate() {
        login.send(&login_with_secret(&format!("user{i}"), SECRET));
    }
    for login in &mut logins {
        assert!(matches!(login.recv(), ServerMessage::SuccessLogin(_)));
    }
    let sender = &mut logins[0];
    for i in 0..300 {
        sender.send(&message_to("user1", &format!("m{i}"), None));
    }
    for _ in 0..300 {
        assert!(matches!(sender.recv(), ServerMessage::Ack(_)));
    }
}

/// After five failed logins within a minute the account's password logins
/// get `rate_limited` — even with the right password — while other accounts
/// are unaffected.
#[test]
fn repeated_failed_logins_lock_the_account() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut client = server.client();
    for _ in 0..5 {
        client.send(&login_with_secret("alice", "guess-guess"));
        assert!(
            matches!(client.recv(), ServerMessage::FailLogin(f) if f.error_type == LoginError::InvalidCredentials)
        );
    }
    client.send(&login_with_secret("alice", SECRET));
    assert!(
        matches!(client.recv(), ServerMessage::FailLogin(f) if f.error_type == LoginError::RateLimited)
    );
    client.send(&login_with_secret("bob", SECRET));
    assert!(matches!(client.recv(), ServerMessage::SuccessLogin(_)));
}

/// A flood of registrations from one address is cut off with `rate_limited`.
#[test]
fn a_registration_flood_is_rate_limited() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    let total = 400;
    send_registrations(&mut client, "flood", total);
    let limited = (0..total)
        .filter(|_| matches!(client.recv(), ServerMessage::FailRegister(f) if f.error_type == RegisterError::RateLimited))
        .count();
    assert!(limited > 0, "400 registrations in a burst all passed");
}

/// A client that keeps sending bad frames after being told is disconnected
/// with close code 1008, and others are unaffected.
#[test]
fn a_client_that_keeps_sending_bad_frames_is_disconnected() {
    let server = TestServer::start(&[]);
    let mut abuser = server.client();
    let mut closed = None;
    for _ in 0..100 {
        abuser.send_raw("this is not json");
        match abuser.try_recv() {
            Some(ServerMessage::Error(_)) => {}
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                closed = Some(());
                break;
            }
        }
    }
    assert!(closed.is_some(), "100 bad frames and still connected");
    let mut other = server.client();
    other.ping_pong();
}

/// With `--allowed-origin`, a browser handshake from another origin is
/// refused (HTTP 403) while the allowed origin and clients without an Origin
/// header are served.
#[test]
fn handshakes_from_other_origins_are_refused() {
    let server = TestServer::start(&["--allowed-origin", "https://chat.example"]);
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let with_origin = |origin: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        tungstenite::client(request, stream)
            .map(|(ws, _)| ws)
            .map_err(Box::new)
    };
    match with_origin("https://evil.example").map_err(|e| *e) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 403);
        }
        Err(other) => panic!("expected HTTP 403, got {other}"),
        Ok(_) => panic!("a handshake from another origin was accepted"),
    }
    let allowed = with_origin("https://chat.example").expect("the allowed origin is served");
    Client::from_websocket(allowed).ping_pong();
    server.client().ping_pong(); // no Origin header at all
}

/// A connection that never finishes its WebSocket handshake is dropped after
/// about ten seconds, and delays no one meanwhile.
#[test]
fn a_stalled_handshake_is_dropped_after_ten_seconds() {
    let server = TestServer::start(&[]);
    let mut stalled = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::io::Write::write_all(&mut stalled, b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut alice = {
        register_all(&server, &["alice"]);
        logged_in(&server, "alice")
    };
    alice.ping_pong();
    let mut buffer = [0u8; 64];
    let read = stalled.read(&mut buffer);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the server to drop the stalled connection, read {read:?}"
    );
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(14),
        "dropped after {waited:?}"
    );
}
