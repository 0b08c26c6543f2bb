//! The per-connection output budget through the real binary (issue 11,
//! memory): what others send a connection, what waits for a connection
//! finishing its login, History/Sync pages and requests pipelined behind a
//! login are all bounded in bytes; a recipient that reads is never closed for
//! what others send it, and a client that follows the paging contract always
//! catches up. Memory is read from `/proc/PID/status`.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    login_with_secret, login_with_session, message_to, register_all, tcp_connect_from, Client,
    TestServer, SECRET,
};
use protocol::client::{CreateGroup, GetHistory, SendMessage, Sync};
use protocol::{ClientMessage, ErrorType, ServerMessage};

/// Generous deadline for moving many megabytes through one connection.
const DEADLINE: Duration = Duration::from_secs(60);
/// The size of one large message's content (the frame cap is 64 KiB).
const LARGE: usize = 60_000;

/// The server's resident memory in KiB.
fn rss_kib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// Sends `count` large messages to `dest` (a user, or a group id) from
/// `sender`, at most [`WINDOW`] unacknowledged (within the connection's
/// share of the storage queue), and waits for their Acks.
fn send_large(sender: &mut Client, dest: Dest, count: usize) {
    let content = "x".repeat(LARGE);
    let message = match dest {
        Dest::User(name) => message_to(name, &content, None),
        Dest::Group(group_id) => ClientMessage::Message(SendMessage {
            dest_id: None,
            group_id: Some(group_id),
            content,
            is_encrypted: false,
            message_id: None,
            source_id: None,
        }),
    };
    let (mut sent, mut acked) = (0, 0);
    while acked < count {
        while sent < count && sent - acked < WINDOW {
            sender.send(&message);
            sent += 1;
        }
        sender.recv_ack();
        acked += 1;
    }
}

/// Large messages a sender keeps unacknowledged (2.9 MB).
const WINDOW: usize = 48;

/// Where [`send_large`] sends.
#[derive(Clone, Copy)]
enum Dest {
    User(&'static str),
    Group(i64),
}

/// Reads until `count` Message frames arrived (answering none of them
/// except, with `confirm`, by confirming each), pausing `pace` after each;
/// returns their ids. Fails if the connection closes first or the deadline
/// passes.
fn read_messages(client: &mut Client, count: usize, confirm: bool, pace: Duration) -> Vec<i64> {
    let deadline = Instant::now() + DEADLINE;
    let mut ids = Vec::new();
    while ids.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages within {DEADLINE:?}",
            ids.len()
        );
        match client.recv() {
            ServerMessage::Message(message) => {
                if confirm {
                    client.confirm(message.message_id);
                }
                ids.push(message.message_id);
                thread::sleep(pace);
            }
            ServerMessage::Presence(_) | ServerMessage::Delivered(_) => {}
            other => panic!("expected messages, got {other:?}"),
        }
    }
    ids
}

/// Asserts `ids` are strictly increasing (in order, none twice).
#[track_caller]
fn assert_in_order(ids: &[i64]) {
    let out_of_order = ids.windows(2).find(|pair| pair[0] >= pair[1]);
    assert!(out_of_order.is_none(), "out of order: {out_of_order:?}");
}

/// Issue 11.5: 256 × 60 KB sent to bob (inside the sender's burst, no
/// contact needed) while he reads as fast as he can: he is not closed, and
/// gets every one of them, in order. What did not fit his output budget
/// waited in storage and was pushed as he drained.
fn a_reader_gets_everything_others_send(receipts: bool, to_group: bool) {
    // Without the senders' byte rate, which would stop alice long before.
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = common::logged_in(&server, "alice");
    let dest = if to_group {
        alice.send(&ClientMessage::CreateGroup(CreateGroup {
            name: "big".into(),
            members: vec!["bob".into()],
        }));
        match alice.recv() {
            ServerMessage::GroupInfo(info) => Dest::Group(info.group_id),
            other => panic!("expected GroupInfo, got {other:?}"),
        }
    } else {
        Dest::User("bob")
    };
    // bob reads steadily, a little slower than alice sends.
    let socket =
        tcp_connect_from(Ipv4Addr::LOCALHOST, server.port, Some(64 * 1024)).expect("TCP connect");
    let mut bob = Client::handshake(socket, server.port).expect("handshake");
    if receipts {
        bob.login_with_receipts("bob");
    } else {
        bob.login("bob", SECRET);
    }
    let count = 256;
    let pace = Duration::from_millis(10);
    let reader = thread::spawn(move || read_messages(&mut bob, count, receipts, pace));
    send_large(&mut alice, dest, count);
    let ids = reader
        .join()
        .expect("bob read everything without being closed");
    assert_in_order(&ids);
    assert_eq!(ids.len(), count);
    assert!(
        !server.log_text().contains("slow consumer"),
        "a reader was closed as a slow consumer"
    );
}

#[test]
fn a_reader_is_never_closed_for_what_others_send() {
    a_reader_gets_everything_others_send(false, false);
}

#[test]
fn a_receipts_reader_is_never_closed_for_what_others_send() {
    a_reader_gets_everything_others_send(true, false);
}

#[test]
fn a_group_reader_is_never_closed_for_what_others_send() {
    a_reader_gets_everything_others_send(false, true);
}

/// Issue 11.1: frames for a connection finishing its login were held without
/// limit (RSS 29 → 73 MB with 300 × 60 KB sent to a resume that never
/// reads). Now what does not fit the held budget stays in storage: memory
/// stays flat, and once the client reads it gets everything, in order.
#[test]
fn a_login_that_never_finishes_holds_a_bounded_amount() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob", "carol"]);
    let session = {
        let mut bob = server.client();
        let ok = bob.login("bob", SECRET);
        bob.close();
        ok.session_id.expect("a session id")
    };
    let mut alice = common::logged_in(&server, "alice");
    // A 9 MB offline queue: more than the socket buffers hold, so a resume
    // that does not read stays mid-login.
    let queued = 150;
    send_large(&mut alice, Dest::User("bob"), queued);
    let socket =
        tcp_connect_from(Ipv4Addr::LOCALHOST, server.port, Some(64 * 1024)).expect("TCP connect");
    let mut bob = Client::handshake(socket, server.port).expect("handshake");
    bob.send(&login_with_session("bob", &session));
    thread::sleep(Duration::from_millis(500));
    // The same 18 MB to someone offline first: what storing them costs (the
    // SQLite page cache grows with the data, up to 64 MiB) is the baseline.
    let live = 300;
    let start = rss_kib(&server);
    send_large(&mut alice, Dest::User("carol"), live);
    let stored = rss_kib(&server).saturating_sub(start);
    let before = rss_kib(&server);
    send_large(&mut alice, Dest::User("bob"), live);
    let grown = rss_kib(&server).saturating_sub(before);
    assert!(
        grown < stored + 6 * 1024,
        "RSS grew {grown} KiB while 18 MB waited for a login that does not read \
         (storing them for someone offline: {stored} KiB)"
    );
    let success = bob.recv();
    assert!(
        matches!(success, ServerMessage::SuccessLogin(_)),
        "{success:?}"
    );
    let ids = read_messages(&mut bob, queued + live, false, Duration::ZERO);
    assert_in_order(&ids);
    bob.expect_silence(Duration::from_millis(300));
}

/// Issue 11.2: 30 pipelined `Sync{since: 0, limit: 1000}` over 200 × 60 KB
/// took RSS from 35 to 381 MB. Now a connection has at most two pages in
/// storage at once (the rest are refused, `rate_limited`), and a page is cut
/// at 128 KiB of content.
#[test]
fn pipelined_syncs_take_a_bounded_amount() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = common::logged_in(&server, "alice");
    send_large(&mut alice, Dest::User("bob"), 200);
    let before = rss_kib(&server);
    let sync = ClientMessage::Sync(Sync {
        since: 0,
        limit: Some(1000),
    });
    for _ in 0..30 {
        alice.send(&sync);
    }
    let (mut pages, mut refused) = (0, 0);
    for _ in 0..30 {
        match alice.recv() {
            ServerMessage::Synced(page) => {
                let bytes: usize = page.data.iter().map(|m| m.content.len()).sum();
                assert!(bytes <= 128 * 1024, "a page of {bytes} bytes");
                assert!(page.has_more);
                pages += 1;
            }
            ServerMessage::Error(error) => {
                assert_eq!(error.error_type, ErrorType::RateLimited, "{error:?}");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let grown = rss_kib(&server).saturating_sub(before);
    assert!(pages >= 2 && pages + refused == 30, "{pages} pages");
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB for 30 Syncs");
}

/// Issue 11.6: a default Sync or History over 20 × 60 KB closed the
/// requester (the page was bigger than its output cap). Pages are now cut by
/// bytes, so a client that follows `has_more` reads all of it.
#[test]
fn a_client_that_follows_the_paging_contract_reads_everything() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = common::logged_in(&server, "alice");
    let count = 20;
    send_large(&mut alice, Dest::User("bob"), count);

    let mut synced = Vec::new();
    let mut since = 0;
    loop {
        alice.send(&ClientMessage::Sync(Sync { since, limit: None }));
        let page = alice.recv_synced();
        synced.extend(page.data.iter().map(|m| m.message_id));
        since = *synced
            .last()
            .expect("a page is never empty while more remain");
        if !page.has_more {
            break;
        }
    }
    assert_in_order(&synced);
    assert_eq!(synced.len(), count);

    let mut history = BTreeSet::new();
    let mut before = None;
    loop {
        alice.send(&ClientMessage::GetHistory(GetHistory {
            chat_id: "bob".into(),
            before,
            limit: None,
        }));
        let page = alice.recv_history();
        let oldest = page.data.first().expect("a non-empty page").message_id;
        history.extend(page.data.iter().map(|m| m.message_id));
        before = Some(oldest);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(history.into_iter().collect::<Vec<_>>(), synced);
}

/// Issue 11.7: up to 256 × 64 KiB (16 MiB) could wait behind one pending
/// login. Now what a connection pipelines behind its Login is bounded in
/// bytes: the rest is refused with `server_busy` at once.
#[test]
fn requests_behind_a_pending_login_are_bounded_in_bytes() {
    // A slow hash keeps the login pending while the requests arrive.
    let server = TestServer::start(&["--pbkdf2-iterations", "200000"]);
    let deadline = Instant::now() + DEADLINE;
    let mut alice = server.client();
    // The slow hash may take seconds on a busy machine: wait for the
    // answer (up to the deadline), not for a fixed time.
    alice.send(&common::register_message("alice", SECRET, "a@example.com"));
    let registered = recv_before(&mut alice, deadline);
    assert!(
        matches!(registered, ServerMessage::SuccessRegister(_)),
        "{registered:?}"
    );
    alice.send(&login_with_secret("alice", SECRET));
    let content = "x".repeat(LARGE);
    let pipelined = 30;
    for _ in 0..pipelined {
        alice.send(&message_to("alice", &content, None));
    }
    let (mut busy, mut acked, mut logged_in) = (0, 0, false);
    while busy + acked < pipelined {
        assert!(Instant::now() < deadline, "{busy} busy, {acked} acked");
        match recv_before(&mut alice, deadline) {
            ServerMessage::Error(error) => {
                assert_eq!(error.error_type, ErrorType::ServerBusy, "{error:?}");
                busy += 1;
            }
            ServerMessage::Ack(_) => acked += 1,
            ServerMessage::SuccessLogin(_) => logged_in = true,
            ServerMessage::Message(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(logged_in, "the login itself went through");
    assert!(
        acked <= 256 * 1024 / LARGE,
        "{acked} large requests waited behind the login"
    );
    assert!(acked >= 1, "a few requests may wait behind a login");
}

/// The next frame, waiting for it until `deadline` rather than the
/// harness's fixed receive timeout.
fn recv_before(client: &mut common::Client, deadline: Instant) -> ServerMessage {
    match client.poll(deadline.saturating_duration_since(Instant::now())) {
        common::Polled::Frame(message, _) => message,
        common::Polled::Quiet => panic!("no frame before the deadline"),
        common::Polled::Ended => panic!("the connection ended"),
    }
}
