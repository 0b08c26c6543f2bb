//! Faults: a crash mid-stream, SIGTERM under load, a full disk and a client
//! that stops reading — each checked against what was acknowledged.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{logged_in, message_to, register_all, Client, TestServer};
use protocol::{ClientMessage, ErrorType, ServerMessage};

/// Messages in flight per sender in the streaming tests.
const WINDOW: usize = 64;

/// What a streaming sender saw before its connection ended.
#[derive(Default)]
struct StreamOutcome {
    /// Contents the server acknowledged, with their server ids.
    acked: HashMap<String, i64>,
    /// Messages the server refused with an Error.
    refused: usize,
    /// Everything sent.
    sent: Vec<String>,
}

/// Acks a streaming sender must have before a test interrupts it.
const ACKS_BEFORE_FAULT: usize = 100;
/// How long a streaming sender may take to reach [`ACKS_BEFORE_FAULT`]
/// (generous: a busy machine is slow, never wrong).
const STREAM_START_DEADLINE: Duration = Duration::from_secs(30);

/// Sends `content-<n>` messages to `dest` with a window of [`WINDOW`] until
/// `limit` are sent or the connection ends; collects the answers and counts
/// the acks in `acks` as they come.
fn stream_until_closed(
    mut client: Client,
    dest: &str,
    prefix: &str,
    limit: usize,
    acks: &AtomicUsize,
) -> StreamOutcome {
    let mut outcome = StreamOutcome::default();
    let mut in_flight = 0;
    loop {
        while in_flight < WINDOW && outcome.sent.len() < limit {
            let content = format!("{prefix}-{}", outcome.sent.len());
            let id = content.clone();
            if client
                .try_send(&message_to(dest, &content, Some(&id)))
                .is_err()
            {
                return outcome;
            }
            outcome.sent.push(content);
            in_flight += 1;
        }
        if in_flight == 0 {
            return outcome;
        }
        match client.try_recv() {
            Some(ServerMessage::Ack(ack)) => {
                let content = ack.client_message_id.expect("the client id is echoed");
                outcome.acked.insert(content, ack.message_id);
                acks.fetch_add(1, Ordering::Release);
                in_flight -= 1;
            }
            Some(ServerMessage::Error(error)) => {
                assert_eq!(error.ref_tag, Some(11), "{error:?}");
                in_flight -= 1;
                outcome.refused += 1;
            }
            Some(_) => {}
            None => return outcome,
        }
    }
}

/// The stored messages' contents (with their ids), read straight from the
/// SQLite file of a stopped server; also checks the file's integrity.
fn stored_messages(data_dir: &Path) -> HashMap<String, Vec<i64>> {
    let db = rusqlite::Connection::open(data_dir.join("chat.db")).expect("open chat.db");
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    let mut statement = db
        .prepare("SELECT content, message_id FROM messages")
        .expect("prepare");
    let mut stored: HashMap<String, Vec<i64>> = HashMap::new();
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .expect("query");
    for row in rows {
        let (content, id) = row.expect("row");
        stored.entry(content).or_default().push(id);
    }
    stored
}

/// Starts a streaming sender from `client` to `dest` on its own thread and
/// returns once it has [`ACKS_BEFORE_FAULT`] acks, so a fault hits a stream
/// that is really flowing, however slow the machine.
fn start_stream(
    client: Client,
    dest: &'static str,
    prefix: &'static str,
) -> thread::JoinHandle<StreamOutcome> {
    let acks = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&acks);
    let sender =
        thread::spawn(move || stream_until_closed(client, dest, prefix, 1_000_000, &counted));
    let started = Instant::now();
    while acks.load(Ordering::Acquire) < ACKS_BEFORE_FAULT {
        assert!(
            started.elapsed() < STREAM_START_DEADLINE && !sender.is_finished(),
            "the stream never got going: {} acks in {:?}",
            acks.load(Ordering::Acquire),
            started.elapsed()
        );
        thread::sleep(Duration::from_millis(10));
    }
    sender
}

/// A SIGKILL in the middle of a stream of pipelined messages loses no
/// acknowledged message, stores none twice, and leaves a sound database.
#[test]
fn a_crash_mid_stream_keeps_every_acked_message_exactly_once() {
    let mut server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let alice = logged_in(&server, "alice");
    // Let the stream get going, then kill the process without warning.
    let sender = start_stream(alice, "bob", "crash");
    server.crash_and_restart();
    let outcome = sender.join().expect("sender thread");
    assert!(outcome.acked.len() >= ACKS_BEFORE_FAULT);
    // After the restart the server works and ids keep growing.
    let mut alice = logged_in(&server, "alice");
    alice.send(&message_to("bob", "after the crash", None));
    let after = alice.recv_ack().message_id;
    assert!(outcome.acked.values().all(|id| *id < after));
    server.stop_gracefully();

    let stored = stored_messages(server.data_dir());
    for (content, id) in &outcome.acked {
        assert_eq!(stored.get(content), Some(&vec![*id]), "{content}");
    }
    assert!(
        stored.values().all(|ids| ids.len() == 1),
        "a message stored twice"
    );
}

/// SIGTERM while messages flow: the process exits 0 within 5 s, and every
/// message the server took in was either acknowledged (and is stored) or
/// refused — nothing is stored that was not acknowledged, nothing lost that was.
#[test]
fn sigterm_under_load_acks_or_refuses_everything_it_took() {
    let mut server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let alice = logged_in(&server, "alice");
    let sender = start_stream(alice, "bob", "term");
    let signalled = Instant::now();
    let status = server.stop_gracefully();
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let outcome = sender.join().expect("sender thread");
    assert!(outcome.acked.len() > 100, "the stream never got going");

    let stored = stored_messages(server.data_dir());
    for (content, id) in &outcome.acked {
        assert_eq!(stored.get(content), Some(&vec![*id]), "{content}");
    }
    let unacked_but_stored: Vec<&String> = stored
        .keys()
        .filter(|content| !outcome.acked.contains_key(*content))
        .collect();
    assert!(
        unacked_but_stored.is_empty(),
        "stored without an Ack: {unacked_but_stored:?}"
    );
}

/// When the disk is full, writes get `server_busy`, nothing unstored is
/// acknowledged, and the server keeps answering and serving history.
#[test]
fn a_full_disk_refuses_writes_but_keeps_serving() {
    let limit = 2 * 1024 * 1024;
    let mut server = TestServer::start_with_file_size_limit(&["--no-rate-limits"], Some(limit));
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let padding = "x".repeat(16 * 1024);
    let mut acked = HashMap::new();
    let mut busy = 0;
    for i in 0..600 {
        let content = format!("full-{i}-{padding}");
        alice.send(&message_to("bob", &content, Some(&format!("full-{i}"))));
        match alice.recv() {
            ServerMessage::Ack(ack) => {
                acked.insert(content, ack.message_id);
            }
            ServerMessage::Error(error) => {
                assert_eq!(error.error_type, ErrorType::ServerBusy, "{error:?}");
                busy += 1;
                if busy >= 5 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(busy > 0, "the disk never filled up ({} acked)", acked.len());
    // Still serving: a Ping, and the history of what was stored.
    alice.ping_pong();
    alice.send(&protocol::ClientMessage::GetHistory(
        protocol::client::GetHistory {
            chat_id: "bob".into(),
            before: None,
            limit: Some(5),
        },
    ));
    assert!(matches!(alice.recv(), ServerMessage::History(h) if !h.data.is_empty()));
    drop(alice);
    server.stop_gracefully();

    let stored = stored_messages(server.data_dir());
    for (content, id) in &acked {
        assert_eq!(
            stored.get(content),
            Some(&vec![*id]),
            "acked but not stored"
        );
    }
}

/// A client that stops reading is not disconnected for what others send it
/// (24 MiB here): past its output budget the messages wait in storage;
/// others are unaffected; and when it reads again it gets every one of them,
/// in order, on the same connection.
#[test]
fn a_client_that_stops_reading_gets_everything_when_it_reads_again() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob"); // does not read for a while
    let mut carol = logged_in(&server, "carol");
    let padding = "y".repeat(60 * 1024);
    let total = 400; // ~24 MiB: more than socket buffers plus the 1 MiB cap
    let mut acked = Vec::new();
    for i in 0..total {
        alice.send(&message_to("bob", &format!("slow-{i}-{padding}"), None));
        match alice.recv() {
            ServerMessage::Ack(ack) => acked.push(ack.message_id),
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
    // Others are served normally.
    alice.send(&message_to("carol", "still here?", None));
    assert!(matches!(carol.recv(), ServerMessage::Message(m) if m.content == "still here?"));

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while seen.len() < total {
        assert!(Instant::now() < deadline, "only {} arrived", seen.len());
        if let ServerMessage::Message(m) = bob.recv() {
            seen.push(m.message_id);
        }
    }
    assert_eq!(seen, acked);
}

/// A client that does not read its *own* replies is closed once 1 MiB of
/// them waits (1008): pages are bounded, but it keeps asking for more.
#[test]
fn a_client_that_does_not_read_its_own_replies_is_closed() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice"]);
    let mut alice = logged_in(&server, "alice");
    let padding = "z".repeat(60 * 1024);
    for i in 0..20 {
        alice.send(&message_to("alice", &format!("{i}-{padding}"), None));
        assert!(matches!(alice.recv(), ServerMessage::Ack(_)));
    }
    let sync = ClientMessage::Sync(protocol::client::Sync {
        since: 0,
        limit: None,
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("slow consumer") {
        assert!(Instant::now() < deadline, "never closed");
        // Paced so that most are not refused for being in flight at once.
        if alice.try_send(&sync).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let (_, closed) = alice.read_until_closed(Duration::from_secs(20));
    assert_eq!(closed.code(), Some(1008), "{closed:?}");
}
