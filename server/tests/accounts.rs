//! Accounts and sessions: Register (tag 1), Login (tag 2) by secret and by
//! session id, and Logout (tag 3).

mod common;

use std::time::Duration;

use common::{
    logged_in, login_with_secret, login_with_session, register_all, register_message, Client,
    TestServer, SECRET,
};
use protocol::client::{Logout, PublishKey};
use protocol::server::{LoginError, RegisterError};
use protocol::{ClientMessage, ErrorType, ServerMessage};

const QUIET: Duration = Duration::from_millis(300);

fn register_fails(client: &mut Client, name: &str, secret: &str, email: &str) -> RegisterError {
    client.send(&register_message(name, secret, email));
    client.recv_fail_register().error_type
}

/// A fresh username registers with a positive id, distinct users get distinct
/// ids, and usernames are case-sensitive.
#[test]
fn register_succeeds_with_distinct_ids_and_case_sensitive_names() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    let ann = client.register("ann", SECRET);
    let ann_upper = client.register("ANN", SECRET);
    let bob = client.register("bob", SECRET);
    assert!(
        ann > 0 && ann_upper > 0 && bob > 0,
        "user ids {ann} {ann_upper} {bob}"
    );
    assert!(ann != ann_upper && ann != bob && ann_upper != bob);
}

/// Registering an existing username is `username_taken`.
#[test]
fn register_existing_username_is_username_taken() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    client.register("alice", SECRET);
    let error = register_fails(&mut client, "alice", "another-secret", "other@example.com");
    assert_eq!(error, RegisterError::UsernameTaken);
}

/// Usernames outside 3–32 characters of `A-Z a-z 0-9 _ . -` are
/// `invalid_username`, and the boundary lengths and every allowed character pass.
#[test]
fn register_validates_usernames() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    let too_long = "a".repeat(33);
    for bad in [
        "ab",
        too_long.as_str(),
        "has space",
        "bang!",
        "sl/ash",
        "émile",
        "",
    ] {
        let error = register_fails(&mut client, bad, SECRET, "x@example.com");
        assert_eq!(error, RegisterError::InvalidUsername, "username {bad:?}");
    }
    let longest = "b".repeat(32);
    for good in ["abc", longest.as_str(), "A-z_0.9"] {
        client.register(good, SECRET);
    }
}

/// An email without a local part, without exactly one `@`, or whose domain has
/// no dot is `invalid_email`.
#[test]
fn register_validates_emails() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    for bad in [
        "",
        "no-at-sign",
        "@example.com",
        "a@localhost",
        "a@@example.com",
        "a@b@c.com",
    ] {
        let error = register_fails(&mut client, "alice", SECRET, bad);
        assert_eq!(error, RegisterError::InvalidEmail, "email {bad:?}");
    }
    client.send(&register_message("alice", SECRET, "a@example.com"));
    assert!(matches!(client.recv(), ServerMessage::SuccessRegister(_)));
}

/// A secret of 7 characters is `weak_secret`; 8 characters are accepted.
#[test]
fn register_rejects_secrets_shorter_than_eight_characters() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    let error = register_fails(&mut client, "alice", "1234567", "a@example.com");
    assert_eq!(error, RegisterError::WeakSecret);
    client.register("alice", "12345678");
    client.login("alice", "12345678");
}

/// A Register with a missing or wrongly typed field is `Error{bad_request}`
/// with `ref_tag` 1, and creates no account.
#[test]
fn register_with_missing_or_mistyped_field_is_bad_request() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    client.send_raw(r#"{"tag":1,"username":"alice","secret":"correct-horse-42"}"#);
    client.expect_error(ErrorType::BadRequest, Some(1));
    client.send_raw(r#"{"tag":1,"username":"alice","secret":12345678,"email":"a@example.com"}"#);
    client.expect_error(ErrorType::BadRequest, Some(1));
    // Neither attempt created alice.
    client.register("alice", SECRET);
}

/// Register never logs the connection in: GetDirectory afterwards is
/// `not_logged_in`.
#[test]
fn register_does_not_log_in() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    client.register("alice", SECRET);
    client.send(&ClientMessage::GetDirectory);
    client.expect_error(ErrorType::NotLoggedIn, Some(4));
}

/// Login with the right secret answers SuccessLogin with the registered user id
/// and a UUID v4 session id, and the connection is then logged in.
#[test]
fn login_with_secret_succeeds() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    let user_id = client.register("alice", SECRET);
    let ok = client.login("alice", SECRET);
    assert_eq!(ok.user_id, user_id);
    let session_id = ok.session_id.expect("SuccessLogin carries a session_id");
    assert!(
        is_uuid_v4(&session_id),
        "session_id {session_id:?} is not a UUID v4"
    );
    client.send(&ClientMessage::GetDirectory);
    assert!(client.recv_directory().data.is_empty());
}

/// An unknown user and a wrong secret both get `invalid_credentials`, and the
/// connection stays usable and logged out.
#[test]
fn login_failures_are_indistinguishable_invalid_credentials() {
    let server = TestServer::start(&[]);
    let mut client = server.client();
    client.register("alice", SECRET);
    client.send(&login_with_secret("nobody", SECRET));
    assert_eq!(
        client.recv_fail_login().error_type,
        LoginError::InvalidCredentials
    );
    client.send(&login_with_secret("alice", "wrong-password"));
    assert_eq!(
        client.recv_fail_login().error_type,
        LoginError::InvalidCredentials
    );
    // Usernames are case-sensitive: ALICE is nobody.
    client.send(&login_with_secret("ALICE", SECRET));
    assert_eq!(
        client.recv_fail_login().error_type,
        LoginError::InvalidCredentials
    );
    client.send(&ClientMessage::GetDirectory);
    client.expect_error(ErrorType::NotLoggedIn, Some(4));
    client.login("alice", SECRET);
}

/// A session id resumes the session on a new connection without the password,
/// as the same user, while the first connection stays logged in and after it
/// has closed.
#[test]
fn login_with_session_id_resumes_on_a_new_connection() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut first = server.client();
    let first_login = first.login("alice", SECRET);
    let session_id = first_login.session_id.expect("session_id");
    let mut resumed = server.client();
    let ok = resumed.resume("alice", &session_id);
    assert_eq!(ok.user_id, first_login.user_id);
    resumed.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "resumed-key".into(),
    }));
    assert_eq!(resumed.recv_key().username, "alice");
    first.ping_pong();

    // The session outlives the connection that created it.
    first.close();
    resumed.close();
    let mut later = server.client();
    assert_eq!(
        later.resume("alice", &session_id).user_id,
        first_login.user_id
    );
}

/// A Login carrying both is a resume: a valid session id wins over a wrong
/// secret, and an invalid session id fails even with the right secret.
#[test]
fn login_with_session_id_ignores_the_secret() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut first = server.client();
    let session_id = first.login("alice", SECRET).session_id.expect("session_id");

    let mut both = server.client();
    both.send(&ClientMessage::Login(protocol::client::Login {
        username: "alice".into(),
        secret: Some("wrong-password".into()),
        session_id: Some(session_id),
        receipts: false,
    }));
    assert_eq!(both.recv_success_login().username, "alice");

    let mut stale = server.client();
    stale.send(&ClientMessage::Login(protocol::client::Login {
        username: "alice".into(),
        secret: Some(SECRET.into()),
        session_id: Some("00000000-0000-4000-8000-000000000000".into()),
        receipts: false,
    }));
    assert_eq!(
        stale.recv_fail_login().error_type,
        LoginError::InvalidSession
    );
}

/// A session id that was never issued, or that belongs to another user, is
/// `invalid_session`; Login with neither secret nor session id is `bad_request`.
#[test]
fn login_with_bad_session_is_invalid_session() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut bob = server.client();
    let bob_session = bob.login("bob", SECRET).session_id.expect("session_id");

    let mut client = server.client();
    client.send(&login_with_session(
        "alice",
        "00000000-0000-4000-8000-000000000000",
    ));
    assert_eq!(
        client.recv_fail_login().error_type,
        LoginError::InvalidSession
    );
    client.send(&login_with_session("alice", &bob_session));
    assert_eq!(
        client.recv_fail_login().error_type,
        LoginError::InvalidSession
    );
    client.send_raw(r#"{"tag":2,"username":"alice"}"#);
    client.expect_error(ErrorType::BadRequest, Some(2));
    client.send(&ClientMessage::GetDirectory);
    client.expect_error(ErrorType::NotLoggedIn, Some(4));
}

/// A second Login on a logged-in connection is `already_logged_in`, even as
/// another user, and the connection stays logged in as the first user.
#[test]
fn login_twice_on_one_connection_is_already_logged_in() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut client = logged_in(&server, "alice");
    client.send(&login_with_secret("bob", SECRET));
    assert_eq!(
        client.recv_fail_login().error_type,
        LoginError::AlreadyLoggedIn
    );
    client.send(&login_with_secret("alice", SECRET));
    assert_eq!(
        client.recv_fail_login().error_type,
        LoginError::AlreadyLoggedIn
    );
    // Checked first: a wrong secret does not turn it into invalid_credentials.
    client.send(&login_with_secret("alice", "wrong-password"));
    assert_eq!(
        client.recv_fail_login().error_type,
        LoginError::AlreadyLoggedIn
    );
    client.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "k".into(),
    }));
    assert_eq!(client.recv_key().username, "alice");
}

/// Logout answers SuccessLogout then closes the connection; the ended session no
/// longer resumes, and a connection that had resumed it is closed too.
#[test]
fn logout_ends_the_session_and_closes_its_connections() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut client = server.client();
    let session_id = client
        .login("alice", SECRET)
        .session_id
        .expect("session_id");
    let mut same_session = server.client();
    same_session.resume("alice", &session_id);

    client.send(&ClientMessage::Logout(Logout::default()));
    match client.recv() {
        ServerMessage::SuccessLogout(ok) => assert_eq!(ok.username, "alice"),
        other => panic!("expected SuccessLogout, got {other:?}"),
    }
    let closed = client.expect_close();
    assert_eq!(closed.code(), Some(1000), "expected close 1000: {closed:?}");
    let closed = same_session.expect_close();
    assert_eq!(
        closed.code(),
        Some(1000),
        "the other connection of the ended session got no close 1000: {closed:?}"
    );

    let mut again = server.client();
    again.send(&login_with_session("alice", &session_id));
    assert_eq!(
        again.recv_fail_login().error_type,
        LoginError::InvalidSession
    );
}

/// Logout ends only its own session: another session of the same user keeps its
/// connection and can still be resumed.
#[test]
fn logout_leaves_other_sessions_of_the_user_alone() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut leaving = server.client();
    leaving.login("alice", SECRET);
    let mut staying = server.client();
    let other_session = staying
        .login("alice", SECRET)
        .session_id
        .expect("session_id");

    leaving.send(&ClientMessage::Logout(Logout {
        username: Some("alice".into()),
    }));
    assert!(matches!(leaving.recv(), ServerMessage::SuccessLogout(_)));
    leaving.expect_close();

    staying.expect_silence(QUIET);
    staying.send(&ClientMessage::GetDirectory);
    staying.recv_directory();
    let mut resumed = server.client();
    resumed.resume("alice", &other_session);
}

/// Logout naming another user is `forbidden` and leaves the connection logged in.
#[test]
fn logout_naming_another_user_is_forbidden() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut client = logged_in(&server, "alice");
    client.send(&ClientMessage::Logout(Logout {
        username: Some("bob".into()),
    }));
    client.expect_error(ErrorType::Forbidden, Some(3));
    client.send(&ClientMessage::GetDirectory);
    client.recv_directory();
}

fn is_uuid_v4(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b', 'A', 'B'])
}
