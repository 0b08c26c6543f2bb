//! GetSessions (tag 18, an extension) through the real binary: a user sees
//! each of their sessions (devices) — which one is asking, which are online
//! now — and never another user's; a logout removes its session.

mod common;

use std::time::Duration;

use common::{Client, TestServer, SECRET};
use protocol::client::Logout;
use protocol::server::SessionInfo;
use protocol::{ClientMessage, ServerMessage};

/// Asks for the caller's sessions.
fn sessions_of(client: &mut Client) -> Vec<SessionInfo> {
    client.send(&ClientMessage::GetSessions);
    match client.recv() {
        ServerMessage::Sessions(sessions) => sessions.data,
        other => panic!("expected Sessions, got {other:?}"),
    }
}

#[test]
fn each_device_is_listed_once_with_who_asks_and_who_is_online() {
    let server = TestServer::start(&[]);
    let mut phone = server.client();
    phone.register_and_login("alice");
    let mut laptop = server.client();
    laptop.login("alice", SECRET);
    let mut bob = server.client();
    bob.register_and_login("bob");
    let mut tablet = server.client();
    tablet.login("alice", SECRET);
    tablet.close();
    // The tablet's departure is recorded once its close reaches the server.
    std::thread::sleep(Duration::from_millis(200));

    let seen = sessions_of(&mut phone);
    assert_eq!(seen.len(), 3, "alice's three logins, not bob's: {seen:?}");
    assert_eq!(seen.iter().filter(|s| s.current).count(), 1, "{seen:?}");
    assert_eq!(seen.iter().filter(|s| s.online).count(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.online || !s.current),
        "the asking session is online: {seen:?}"
    );
    for session in &seen {
        assert_eq!(session.address.as_deref(), Some("127.0.0.1"));
        assert!(session.created_at > 0 && session.last_used_at >= session.created_at);
    }
    assert_eq!(sessions_of(&mut bob).len(), 1);

    laptop.send(&ClientMessage::Logout(Logout::default()));
    assert!(matches!(laptop.recv(), ServerMessage::SuccessLogout(_)));
    let after = sessions_of(&mut phone);
    assert_eq!(after.len(), 2, "the logged-out session is gone: {after:?}");
    assert_eq!(after.iter().filter(|s| s.current).count(), 1);
    assert_eq!(after.iter().filter(|s| s.online).count(), 1, "{after:?}");
}

/// However many sessions a user holds, GetSessions lists the 100 newest.
#[test]
fn the_list_is_bounded_to_the_newest_sessions() {
    let server = TestServer::start(&["--no-rate-limits"]);
    let mut asking = server.client();
    asking.register_and_login("alice");
    for _ in 0..100 {
        let mut other = server.client();
        other.login("alice", SECRET);
    }
    let seen = sessions_of(&mut asking);
    // All 101 are created within a second or so here, so which one is left
    // out is not asserted; the count is the bound.
    assert_eq!(seen.len(), 100, "the cap, not all 101");
}
