//! `--json-mirror`: the storage thread keeps `<data-dir>/users.json` and
//! `contacts.json` current while the server runs.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{logged_in, register_all, TestServer};
use protocol::client::UserRef;
use protocol::ClientMessage;

/// How long the mirror may lag a change: the debounce (1 s) plus the storage
/// thread's idle tick (0.5 s), with room for a slow machine.
const MIRROR_DEADLINE: Duration = Duration::from_secs(5);

/// The file parsed, once it exists and `accept` holds for it, within the deadline.
#[track_caller]
fn wait_for(path: &Path, accept: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + MIRROR_DEADLINE;
    loop {
        // A reader never sees a partial file (rename protocol), so any file
        // that exists must parse.
        if let Ok(bytes) = fs::read(path) {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{} is not whole JSON: {e}", path.display()));
            if accept(&value) {
                return value;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not show the change within {MIRROR_DEADLINE:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn usernames(users: &serde_json::Value) -> Vec<String> {
    users["users"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|user| user["username"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// With --json-mirror, a registration and a contact appear in the data dir's
/// users.json and contacts.json within a few seconds, mode 0600.
#[test]
fn the_mirror_shows_registrations_and_contacts_within_seconds() {
    let server = TestServer::start(&["--json-mirror"]);
    let users_path = server.data_dir().join("users.json");
    let contacts_path = server.data_dir().join("contacts.json");

    register_all(&server, &["alice", "bob"]);
    let users = wait_for(&users_path, |users| {
        let names = usernames(users);
        names.iter().any(|n| n == "alice") && names.iter().any(|n| n == "bob")
    });
    assert_eq!(users["version"], 1);
    assert!(users["users"][0]["password_hash"]
        .as_str()
        .unwrap()
        .starts_with("$pbkdf2-sha256$"));

    let mut alice = logged_in(&server, "alice");
    alice.send(&ClientMessage::AddContact(UserRef {
        username: "bob".into(),
    }));
    alice.recv_directory();
    wait_for(&contacts_path, |contacts| {
        contacts["contacts"].as_array().is_some_and(|list| {
            list.iter()
                .any(|c| c["owner"] == "alice" && c["contact"] == "bob")
        })
    });
    for path in [&users_path, &contacts_path] {
        let mode = fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
}
