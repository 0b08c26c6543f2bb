//! Contacts (tags 4, 6, 7 and the pushed ContactRequest), presence, and keys
//! (tags 9 and 10).

mod common;

use std::time::Duration;

use common::{logged_in, register_all, Client, TestServer};
use protocol::client::{PublishKey, UserRef};
use protocol::server::{Directory, DirectoryEntry};
use protocol::{ClientMessage, ErrorType, ServerMessage};

const QUIET: Duration = Duration::from_millis(300);

fn add_contact(client: &mut Client, name: &str) -> Directory {
    client.send(&ClientMessage::AddContact(UserRef {
        username: name.into(),
    }));
    client.recv_directory()
}

fn remove_contact(client: &mut Client, name: &str) -> Directory {
    client.send(&ClientMessage::RemoveContact(UserRef {
        username: name.into(),
    }));
    client.recv_directory()
}

fn directory(client: &mut Client) -> Directory {
    client.send(&ClientMessage::GetDirectory);
    client.recv_directory()
}

fn entry<'a>(directory: &'a Directory, name: &str) -> &'a DirectoryEntry {
    directory
        .data
        .iter()
        .find(|e| e.username == name)
        .unwrap_or_else(|| panic!("{name} missing from {directory:?}"))
}

fn names(directory: &Directory) -> Vec<&str> {
    directory.data.iter().map(|e| e.username.as_str()).collect()
}

/// Frames that arrive within a short window, minus Presence (pushed to both
/// when a pair becomes mutual while both are online; tested on its own).
fn drain_except_presence(client: &mut Client) -> Vec<ServerMessage> {
    let frames = client.drain(QUIET);
    frames
        .into_iter()
        .filter(|m| !matches!(m, ServerMessage::Presence(_)))
        .collect()
}

/// AddContact answers the updated Directory; the added user gets a
/// ContactRequest (nobody else does); adding back makes the pair mutual on both
/// sides and sends no ContactRequest.
#[test]
fn add_contact_lists_the_user_and_requests_once() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = server.client();
    let bob_id = bob.login("bob", common::SECRET).user_id;
    let mut carol = logged_in(&server, "carol");

    let listed = add_contact(&mut alice, "bob");
    assert_eq!(names(&listed), ["bob"]);
    let row = entry(&listed, "bob");
    assert_eq!(row.user_id, bob_id);
    assert!(!row.mutual && !row.online, "{row:?}");
    assert_eq!(
        row.last_activity, None,
        "last_activity is null for a non-mutual contact"
    );

    match bob.recv() {
        ServerMessage::ContactRequest(request) => assert_eq!(request.username, "alice"),
        other => panic!("expected ContactRequest, got {other:?}"),
    }
    carol.expect_silence(QUIET);
    alice.expect_silence(Duration::from_millis(50));
    assert!(
        directory(&mut bob).data.is_empty(),
        "being added does not list alice for bob"
    );

    let bob_view = add_contact(&mut bob, "alice");
    let row = entry(&bob_view, "alice");
    assert!(
        row.mutual && row.online,
        "alice is mutual and online: {row:?}"
    );
    assert!(row.last_activity.is_some(), "{row:?}");
    let pushed = drain_except_presence(&mut alice);
    assert!(
        pushed.is_empty(),
        "no ContactRequest when the add makes the pair mutual: {pushed:?}"
    );

    let alice_view = directory(&mut alice);
    let row = entry(&alice_view, "bob");
    assert!(row.mutual && row.online, "{row:?}");

    // Adding again changes nothing and requests nothing.
    assert_eq!(names(&add_contact(&mut alice, "bob")), ["bob"]);
    assert!(drain_except_presence(&mut bob).is_empty());
}

/// After RemoveContact the remover no longer lists the user, who still lists
/// the remover with `mutual: false` (and so `online: false`).
#[test]
fn remove_contact_leaves_the_remover_listed_as_not_mutual() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    add_contact(&mut alice, "bob");
    let mut bob = logged_in(&server, "bob");
    bob.expect_silence(QUIET);
    add_contact(&mut bob, "alice");
    assert!(matches!(bob.recv(), ServerMessage::Presence(p) if p.username == "alice"));
    drain_except_presence(&mut alice);

    let bob_view = remove_contact(&mut bob, "alice");
    assert!(bob_view.data.is_empty(), "{bob_view:?}");
    let alice_view = directory(&mut alice);
    let row = entry(&alice_view, "bob");
    assert!(!row.mutual, "{row:?}");
    assert!(
        !row.online,
        "a non-mutual contact is never shown online: {row:?}"
    );
    assert_eq!(row.last_activity, None);

    // Removing someone who is not listed leaves the Directory unchanged.
    assert!(remove_contact(&mut bob, "alice").data.is_empty());
}

/// AddContact or RemoveContact of an unknown user is `unknown_user`; adding
/// yourself is `bad_request`.
#[test]
fn add_contact_of_unknown_user_or_self_is_rejected() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut alice = logged_in(&server, "alice");
    alice.send(&ClientMessage::AddContact(UserRef {
        username: "nobody".into(),
    }));
    alice.expect_error(ErrorType::UnknownUser, Some(6));
    alice.send(&ClientMessage::AddContact(UserRef {
        username: "alice".into(),
    }));
    alice.expect_error(ErrorType::BadRequest, Some(6));
    assert!(directory(&mut alice).data.is_empty());
}

/// Presence goes to mutual contacts when a user's first connection logs in and
/// when the last one goes away (even without a close frame), not for the
/// connections in between.
#[test]
fn presence_is_pushed_on_first_login_and_last_disconnect() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    // Make the pair mutual while never both online.
    let mut alice = logged_in(&server, "alice");
    add_contact(&mut alice, "bob");
    alice.close();
    let mut bob = logged_in(&server, "bob");
    // alice added bob while he was offline: no ContactRequest is queued for him.
    bob.expect_silence(QUIET);
    let row = add_contact(&mut bob, "alice").data[0].clone();
    assert!(row.mutual && !row.online, "{row:?}");

    let alice = logged_in(&server, "alice");
    let presence = bob.recv_presence();
    assert_eq!(
        (presence.username.as_str(), presence.online),
        ("alice", true)
    );
    let row = entry(&directory(&mut bob), "alice").clone();
    assert!(row.online, "{row:?}");

    let alice_phone = logged_in(&server, "alice");
    bob.expect_silence(QUIET);
    alice_phone.close();
    bob.expect_silence(QUIET);
    // The last connection vanishes without a close frame (a dropped socket).
    drop(alice);
    let presence = bob.recv_presence();
    assert_eq!(
        (presence.username.as_str(), presence.online),
        ("alice", false)
    );
    let row = entry(&directory(&mut bob), "alice").clone();
    assert!(!row.online, "{row:?}");
    assert!(row.last_activity.is_some());
}

/// Logging out of a user's only connection tells mutual contacts the user went
/// offline.
#[test]
fn logout_of_the_last_connection_pushes_presence_offline() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    add_contact(&mut alice, "bob");
    alice.close();
    let mut bob = logged_in(&server, "bob");
    add_contact(&mut bob, "alice");
    let mut alice = logged_in(&server, "alice");
    assert!(bob.recv_presence().online);

    alice.send(&ClientMessage::Logout(protocol::client::Logout::default()));
    assert!(matches!(alice.recv(), ServerMessage::SuccessLogout(_)));
    alice.expect_close();
    let presence = bob.recv_presence();
    assert_eq!(
        (presence.username.as_str(), presence.online),
        ("alice", false)
    );
}

/// A one-sided contact never sees the other user online, neither in the
/// Directory nor as a Presence.
#[test]
fn non_mutual_contact_never_sees_presence() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "carol"]);
    let mut carol = logged_in(&server, "carol");
    add_contact(&mut carol, "alice");

    let mut alice = logged_in(&server, "alice");
    alice.expect_silence(QUIET);
    carol.expect_silence(QUIET);
    let row = entry(&directory(&mut carol), "alice").clone();
    assert!(!row.online && !row.mutual, "{row:?}");
    assert_eq!(row.last_activity, None);
    alice.close();
    carol.expect_silence(QUIET);
}

/// PublishKey answers Key with the caller's own key; GetKey returns a published
/// key, `null` for a user without one, and `unknown_user` for nobody.
#[test]
fn keys_are_published_and_fetched() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");

    alice.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "alice-public-key-v1".into(),
    }));
    let key = alice.recv_key();
    assert_eq!(key.username, "alice");
    assert_eq!(key.public_key.as_deref(), Some("alice-public-key-v1"));

    bob.send(&ClientMessage::GetKey(UserRef {
        username: "alice".into(),
    }));
    assert_eq!(
        bob.recv_key().public_key.as_deref(),
        Some("alice-public-key-v1")
    );

    alice.send(&ClientMessage::GetKey(UserRef {
        username: "bob".into(),
    }));
    let json = alice.recv_json();
    assert_eq!(json["tag"], 33, "{json}");
    assert_eq!(json["username"], "bob", "{json}");
    assert!(
        json.get("public_key").is_some_and(|v| v.is_null()),
        "public_key must be present and null: {json}"
    );

    bob.send(&ClientMessage::GetKey(UserRef {
        username: "nobody".into(),
    }));
    bob.expect_error(ErrorType::UnknownUser, Some(10));

    // Publishing again replaces the key.
    alice.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "alice-public-key-v2".into(),
    }));
    assert_eq!(
        alice.recv_key().public_key.as_deref(),
        Some("alice-public-key-v2")
    );
    bob.send(&ClientMessage::GetKey(UserRef {
        username: "alice".into(),
    }));
    assert_eq!(
        bob.recv_key().public_key.as_deref(),
        Some("alice-public-key-v2")
    );
}

/// A key over 4 KiB is refused with an Error and does not replace the stored
/// key.
#[test]
fn key_over_four_kib_is_refused() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut alice = logged_in(&server, "alice");
    alice.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "small".into(),
    }));
    alice.recv_key();
    alice.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "k".repeat(4097),
    }));
    let error = alice.recv_error();
    assert!(
        matches!(
            error.error_type,
            ErrorType::BadRequest | ErrorType::TooLarge
        ),
        "{error:?}"
    );
    assert_eq!(error.ref_tag, Some(9));
    alice.send(&ClientMessage::GetKey(UserRef {
        username: "alice".into(),
    }));
    assert_eq!(alice.recv_key().public_key.as_deref(), Some("small"));
}

/// Protocol 1.1: when two online users become mutual contacts, each gets a
/// Presence (online) for the other; nobody else hears of it, and an add that
/// makes a pair mutual while the other is offline sends none.
#[test]
fn becoming_mutual_while_both_are_online_sends_presence_both_ways() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let mut carol = logged_in(&server, "carol");
    add_contact(&mut alice, "bob");
    assert!(matches!(bob.recv(), ServerMessage::ContactRequest(r) if r.username == "alice"));

    add_contact(&mut bob, "alice");
    match bob.recv() {
        ServerMessage::Presence(p) => assert!(p.username == "alice" && p.online, "{p:?}"),
        other => panic!("expected Presence for alice, got {other:?}"),
    }
    match alice.recv() {
        ServerMessage::Presence(p) => assert!(p.username == "bob" && p.online, "{p:?}"),
        other => panic!("expected Presence for bob, got {other:?}"),
    }
    carol.expect_silence(QUIET);

    // carol adds alice while alice is away; alice adds carol back on return:
    // carol is online, alice is the one acting, so both hear of it.
    add_contact(&mut carol, "alice");
    drop(alice);
    let _ = bob.recv(); // Presence: alice went offline
    let mut alice = logged_in(&server, "alice");
    add_contact(&mut alice, "carol");
    assert!(
        matches!(alice.recv(), ServerMessage::Presence(p) if p.username == "carol" && p.online)
    );
    assert!(
        matches!(carol.recv(), ServerMessage::Presence(p) if p.username == "alice" && p.online)
    );
}
