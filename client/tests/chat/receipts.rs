//! Receipts (protocol 1.1) through the real binaries: `chat` confirms what
//! it has shown, a resumed (or restarted) `chat` shows each message once,
//! and the sender sees how far their messages are delivered.
//!
//! Part of the `chat` test target (declared in `tests/chat.rs`).

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{
    chat_command, register_all, run_script, DropProxy, Finished, Live, Server, STEP_TIMEOUT,
};

/// The tag of `Received`.
const RECEIVED_TAG: i64 = 17;

/// The session file as JSON.
fn saved(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// Waits until the session file says everything up to `message_id` was
/// shown (`confirmed_through`): `chat` writes it right after printing.
fn wait_until_saved_through(path: &Path, message_id: i64) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let through = fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|saved| saved["confirmed_through"].as_i64())
            .unwrap_or(0);
        if through >= message_id {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached confirmed_through {message_id} (at {through})",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The server ids of the messages a `--json` script sent (its Ack frames).
fn acked_ids(finished: &Finished) -> Vec<i64> {
    finished
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|frame| frame["tag"] == 24)
        .map(|frame| frame["message_id"].as_i64().expect("an Ack has an id"))
        .collect()
}

/// alice sends `texts` to bob from a `--json` script; returns their ids.
fn alice_sends(server_url: &str, dir: &Path, texts: &[&str]) -> Vec<i64> {
    let mut command = chat_command(server_url, &dir.join("alice.json"));
    command.arg("--json");
    let script: String = std::iter::once("/login alice password1\n".to_string())
        .chain(texts.iter().map(|text| format!("/msg bob {text}\n")))
        .collect();
    let finished = run_script(command, &script);
    assert_eq!(finished.code, 0, "{finished:?}");
    let ids = acked_ids(&finished);
    assert_eq!(ids.len(), texts.len(), "{finished:?}");
    ids
}

/// How many of `lines` show alice's message `text`.
fn shown(lines: &[String], text: &str) -> usize {
    let ending = format!("alice: {text}");
    lines.iter().filter(|line| line.ends_with(&ending)).count()
}

/// A message sent while bob's `chat` is not running is shown once when it
/// resumes the saved session (the server pushes it, and the client's own
/// catch-up finds it too), and not again by the run after.
#[test]
fn a_message_sent_while_away_is_shown_once_after_resuming() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    register_all(
        &server,
        dir.path(),
        &[("alice", "password1"), ("bob", "password2")],
    );
    let bob_session = dir.path().join("bob.json");
    let first = run_script(
        chat_command(&server.url(), &bob_session),
        "/login bob password2\n",
    );
    assert_eq!(first.code, 0, "{first:?}");
    let [id] = alice_sends(&server.url(), dir.path(), &["while you were out"])[..] else {
        unreachable!()
    };

    let mut bob = Live::start(chat_command(&server.url(), &bob_session));
    bob.expect_line("alice: while you were out");
    // A round trip to the server after the catch-up was asked for, then a
    // quiet spell: nothing else arrives.
    bob.send("/friends");
    bob.expect_line("no contacts yet");
    bob.drain_for(Duration::from_millis(300));
    assert_eq!(shown(&bob.seen, "while you were out"), 1, "{:#?}", bob.seen);
    wait_until_saved_through(&bob_session, id);
    assert_eq!(bob.finish(), 0);

    // The server has bob's confirmation: the next run is not even sent it
    // again (with --json every frame received is printed).
    let mut command = chat_command(&server.url(), &bob_session);
    command.arg("--json");
    let again = run_script(command, "/friends\n");
    assert_eq!(again.code, 0, "{again:?}");
    assert!(!again.stdout.contains(r#""tag":11"#), "{again:?}");
    assert!(
        !again.stdout.contains(&format!("\"message_id\":{id}")),
        "{again:?}"
    );
}

/// bob's `chat` is killed (SIGKILL) right after showing messages, twice,
/// and restarted each time: across the three runs every message is shown
/// exactly once. The first run's `Received` frames are dropped by a proxy,
/// so the server pushes those messages again on the resume and the client
/// must drop them by its saved confirmation; the second run's get through.
#[test]
fn a_killed_chat_shows_nothing_twice_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    register_all(
        &server,
        dir.path(),
        &[("alice", "password1"), ("bob", "password2")],
    );
    let proxy = DropProxy::start(server.port, RECEIVED_TAG);
    let bob_session = dir.path().join("bob.json");
    let bob_command = || chat_command(&proxy.url(), &bob_session);
    let mut all_lines = Vec::new();

    let mut bob = Live::start(bob_command());
    bob.send("/login bob password2");
    bob.expect_line("logged in as bob");
    let ids = alice_sends(&server.url(), dir.path(), &["one", "two", "three"]);
    for text in ["one", "two", "three"] {
        bob.expect_line(&format!("alice: {text}"));
    }
    wait_until_saved_through(&bob_session, ids[2]);
    all_lines.extend(bob.seen.clone());
    bob.kill();

    // Sent while bob's chat is down; from now on his confirmations arrive.
    let ids = alice_sends(&server.url(), dir.path(), &["four"]);
    proxy.set_dropping(false);
    let mut bob = Live::start(bob_command());
    bob.expect_line("alice: four");
    bob.send("/friends");
    bob.expect_line("no contacts yet");
    wait_until_saved_through(&bob_session, ids[0]);
    all_lines.extend(bob.seen.clone());
    bob.kill();

    alice_sends(&server.url(), dir.path(), &["five"]);
    let mut bob = Live::start(bob_command());
    bob.expect_line("alice: five");
    bob.send("/friends");
    bob.expect_line("no contacts yet");
    bob.drain_for(Duration::from_millis(300));
    all_lines.extend(bob.seen.clone());
    assert_eq!(bob.finish(), 0);

    for text in ["one", "two", "three", "four", "five"] {
        assert_eq!(shown(&all_lines, text), 1, "{text:?} in {all_lines:#?}");
    }
    let saved = saved(&bob_session);
    assert!(
        saved["confirmed_through"].as_i64().unwrap() > ids[0],
        "{saved}"
    );
}

/// alice sees her message to bob as delivered (/status, and ✓✓ in
/// /history) once bob's `chat` has shown it, and not before; no line is
/// printed per receipt.
#[test]
fn the_sender_sees_delivery_after_the_recipient_has_shown_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    register_all(
        &server,
        dir.path(),
        &[("alice", "password1"), ("bob", "password2")],
    );
    let bob_session = dir.path().join("bob.json");
    let first = run_script(
        chat_command(&server.url(), &bob_session),
        "/login bob password2\n",
    );
    assert_eq!(first.code, 0, "{first:?}");

    let mut alice = Live::start(chat_command(&server.url(), &dir.path().join("alice.json")));
    alice.send("/login alice password1");
    alice.expect_line("logged in as alice");
    alice.send("/status");
    alice.expect_line("logged in as alice on");
    alice.expect_line("no messages of yours are known delivered or waiting");
    alice.send("/msg bob are you there?");
    alice.expect_line("alice → bob: are you there?");
    alice.send("/status bob");
    alice.expect_line("your messages (✓✓ = delivered to one of their devices):");
    let waiting = alice.expect_line("  bob ");
    assert!(
        waiting.contains("1 message not delivered yet (the first sent "),
        "{waiting}"
    );
    assert!(!waiting.contains("✓✓"), "{waiting}");

    let mut bob = Live::start(chat_command(&server.url(), &bob_session));
    bob.expect_line("alice: are you there?");

    // The receipt comes within a server tick of bob's confirmation; ask
    // until it is in.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let delivered = loop {
        alice.send("/status bob");
        let line = alice.expect_line("  bob ");
        if line.contains("✓✓") {
            break line;
        }
        assert!(Instant::now() < deadline, "never delivered: {line}");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        delivered.contains("✓✓ delivered up to your message of "),
        "{delivered}"
    );
    assert!(!delivered.contains("not delivered"), "{delivered}");

    bob.send("@alice yes");
    alice.expect_line("bob: yes");
    alice.send("/history bob");
    let mine = alice.expect_line("alice: are you there?");
    assert!(mine.ends_with("alice: are you there? ✓✓"), "{mine}");
    let theirs = alice.expect_line("bob: yes");
    assert!(!theirs.contains("✓✓"), "{theirs}");
    // Receipts are quiet: no line was printed for one, and the only message
    // line marked ✓✓ is the one in /history.
    let marked: Vec<&String> = alice
        .seen
        .iter()
        .filter(|line| line.ends_with("✓✓"))
        .collect();
    assert_eq!(marked, [&mine], "{:#?}", alice.seen);
    assert_eq!(alice.finish(), 0);
    assert_eq!(bob.finish(), 0);
}
