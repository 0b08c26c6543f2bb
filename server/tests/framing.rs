//! Framing and request validation: Ping, `time` on every frame, bad frames,
//! unknown tags, `not_logged_in`, and the frame size limit.

mod common;

use std::time::Duration;

use common::{logged_in, register_all, Client, TestServer};
use protocol::ErrorType;
use tungstenite::Message;

/// Ping answers Pong before and after login; every server frame carries an
/// integer `time`; a client's `time` and unknown fields are ignored.
#[test]
fn ping_answers_pong_and_server_frames_carry_time() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut client = server.client();
    client.send_raw(r#"{"tag":8,"time":1640995200,"extra":{"nested":[1,2]}}"#);
    let pong = client.recv_json();
    assert_eq!(pong["tag"], 32, "{pong}");
    assert!(pong["time"].is_i64(), "Pong has no integer time: {pong}");

    client.send_raw("not json");
    let error = client.recv_json();
    assert_eq!(error["tag"], 30, "{error}");
    assert!(error["time"].is_i64(), "Error has no integer time: {error}");
    assert!(error["detail"].is_string(), "Error has no detail: {error}");

    client.send(&common::login_with_secret("alice", common::SECRET));
    let ok = client.recv_json();
    assert_eq!(ok["tag"], 22, "{ok}");
    assert!(
        ok["time"].is_i64(),
        "SuccessLogin has no integer time: {ok}"
    );
    client.ping_pong();
}

/// Every tag except Register, Login and Ping needs a login: a well-formed
/// request before login is `not_logged_in` with its tag as `ref_tag`.
#[test]
fn requests_before_login_are_not_logged_in() {
    let server = TestServer::start(&[]);
    register_all(&server, &["bob"]);
    let mut client = server.client();
    for (tag, frame) in [
        (3, r#"{"tag":3}"#),
        (4, r#"{"tag":4}"#),
        (5, r#"{"tag":5,"chat_id":"bob"}"#),
        (6, r#"{"tag":6,"username":"bob"}"#),
        (7, r#"{"tag":7,"username":"bob"}"#),
        (9, r#"{"tag":9,"public_key":"key"}"#),
        (10, r#"{"tag":10,"username":"bob"}"#),
        (11, r#"{"tag":11,"dest_id":"bob","content":"hi"}"#),
        (16, r#"{"tag":16,"since":0}"#),
    ] {
        client.send_raw(frame);
        let error = client.recv_error();
        assert_eq!(
            (error.error_type, error.ref_tag),
            (ErrorType::NotLoggedIn, Some(tag)),
            "{frame}"
        );
    }
    // A malformed request is a bad request first, logged in or not.
    client.send_raw(r#"{"tag":5,"chat_id":5}"#);
    client.expect_error(ErrorType::BadRequest, Some(5));
    // Nothing above reached bob.
    let mut bob = logged_in(&server, "bob");
    bob.expect_silence(Duration::from_millis(200));
}

/// Bad frames get `bad_request` (or `unknown_tag`) with the right `ref_tag`,
/// logged in or not, and never close the connection.
#[test]
fn bad_frames_are_answered_and_keep_the_connection() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    check_bad_frames(|| server.client());
    check_bad_frames(|| logged_in(&server, "alice"));
}

/// The server may close a connection for *repeated* abuse, so the cases are
/// spread over fresh connections, a few on each.
const BAD_FRAMES_PER_CONNECTION: usize = 5;

fn check_bad_frames(mut connect: impl FnMut() -> Client) {
    let cases: &[(&str, ErrorType, Option<i64>)] = &[
        ("not json", ErrorType::BadRequest, None),
        ("", ErrorType::BadRequest, None),
        (r#"{"tag":8"#, ErrorType::BadRequest, None),
        ("[1,2,3]", ErrorType::BadRequest, None),
        (r#""tag""#, ErrorType::BadRequest, None),
        ("42", ErrorType::BadRequest, None),
        ("{}", ErrorType::BadRequest, None),
        (r#"{"username":"alice"}"#, ErrorType::BadRequest, None),
        (r#"{"tag":"8"}"#, ErrorType::BadRequest, None),
        (r#"{"tag":null}"#, ErrorType::BadRequest, None),
        (r#"{"tag":99}"#, ErrorType::UnknownTag, Some(99)),
        (
            r#"{"tag":21,"username":"alice","user_id":1}"#,
            ErrorType::UnknownTag,
            Some(21),
        ),
        (r#"{"tag":0}"#, ErrorType::UnknownTag, Some(0)),
        (
            r#"{"tag":1,"username":"x"}"#,
            ErrorType::BadRequest,
            Some(1),
        ),
        (r#"{"tag":2}"#, ErrorType::BadRequest, Some(2)),
        (
            r#"{"tag":6,"username":["bob"]}"#,
            ErrorType::BadRequest,
            Some(6),
        ),
        (r#"{"tag":10}"#, ErrorType::BadRequest, Some(10)),
        (r#"{"tag":16,"since":"0"}"#, ErrorType::BadRequest, Some(16)),
    ];
    for chunk in cases.chunks(BAD_FRAMES_PER_CONNECTION) {
        let mut client = connect();
        for (frame, error_type, ref_tag) in chunk {
            client.send_raw(frame);
            let error = client.recv_error();
            assert_eq!(
                (error.error_type, error.ref_tag),
                (*error_type, *ref_tag),
                "frame {frame:?}"
            );
            client.ping_pong();
        }
    }
    // A binary frame is a bad request even when it holds valid JSON.
    let mut client = connect();
    client.send_binary(br#"{"tag":8}"#);
    client.expect_error(ErrorType::BadRequest, None);
    client.ping_pong();
}

/// The group tags 12–15 need a login like every tag but 1, 2 and 8.
#[test]
fn group_tags_need_a_login() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    for (tag, frame) in [
        (12, r#"{"tag":12,"name":"team","members":["bob"]}"#),
        (13, r#"{"tag":13,"group_id":1,"members":["bob"]}"#),
        (14, r#"{"tag":14,"group_id":1}"#),
        (15, r#"{"tag":15}"#),
    ] {
        client.send_raw(frame);
        let error = client.recv_error();
        assert_eq!(
            (error.error_type, error.ref_tag),
            (ErrorType::NotLoggedIn, Some(tag)),
            "{frame}"
        );
    }
    client.ping_pong();
}

/// A frame over `--max-message-bytes` closes that connection with code 1009,
/// a frame under the limit is served, and other clients keep working.
#[test]
fn oversized_frame_closes_only_that_connection() {
    let server = TestServer::start(&["--max-message-bytes", "4096"]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");

    alice.send(&common::message_to("bob", &"a".repeat(3000), None));
    alice.recv_ack();
    assert_eq!(bob.recv_delivered().content.len(), 3000);

    alice.send(&common::message_to("bob", &"b".repeat(5000), None));
    let mut ws = alice.into_inner();
    let close_code = loop {
        match ws.read() {
            // A `too_large` Error before the close is allowed by PROTOCOL.md.
            Ok(Message::Text(text)) if text.contains("too_large") => continue,
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a close after an oversized frame, got {other:?}"),
            Err(e) => panic!("expected a close frame (1009) after an oversized frame, got {e}"),
        }
    };
    assert_eq!(close_code, Some(1009));

    bob.expect_silence(Duration::from_millis(200));
    bob.ping_pong();
    bob.send(&common::message_to("bob", "still here", None));
    bob.recv_ack();
    let mut fresh = server.client();
    fresh.ping_pong();
}

/// Without `--max-message-bytes` the limit is 64 KiB: a 60 000-byte frame is
/// served and a 70 000-byte frame closes the connection with code 1009.
#[test]
fn default_frame_limit_is_64_kib() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut alice = logged_in(&server, "alice");
    alice.send(&common::message_to("alice", &"a".repeat(60_000), None));
    alice.recv_ack();
    alice.send(&common::message_to("alice", &"b".repeat(70_000), None));
    let closed = alice.expect_close();
    assert_eq!(closed.code(), Some(1009), "{closed:?}");
}

/// The WebSocket endpoint answers on any path, not only `/`.
#[test]
fn any_path_is_served() {
    let server = TestServer::start(&[]);
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(common::RECV_TIMEOUT)).unwrap();
    let url = format!("ws://127.0.0.1:{}/some/chat/path?x=1", server.port);
    let (ws, _) = tungstenite::client(url, stream).expect("handshake on a non-root path");
    Client::from_websocket(ws).ping_pong();
}
