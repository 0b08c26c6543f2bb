//! Security properties visible from outside: what is stored for passwords
//! and sessions, and who may read the files.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{register_all, TestServer, SECRET};
use protocol::ServerMessage;

/// The database keeps only a SHA-256 of each session id and a PHC-form
/// PBKDF2 hash of each password: neither the session id nor the secret
/// appears anywhere in the database files.
#[test]
fn sessions_and_passwords_are_stored_only_as_hashes() {
    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut alice = server.client();
    let session_id = alice
        .login("alice", SECRET)
        .session_id
        .expect("a session id");
    drop(alice);
    server.stop_gracefully();

    let db = rusqlite::Connection::open(server.data_dir().join("chat.db")).unwrap();
    let stored: String = db
        .query_row("SELECT session_hash FROM sessions", [], |row| row.get(0))
        .unwrap();
    assert_eq!(stored, server::password::session_hash(&session_id));
    let phc: String = db
        .query_row(
            "SELECT password_hash FROM users WHERE username = 'alice'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(phc.starts_with("$pbkdf2-sha256$i=1000$"), "{phc}");
    drop(db);
    for entry in std::fs::read_dir(server.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&session_id),
            "session id in {}",
            path.display()
        );
        assert!(!text.contains(SECRET), "secret in {}", path.display());
    }
}

/// The default password cost is 600,000 iterations, recorded in each hash.
#[test]
fn the_default_password_cost_is_600000_iterations() {
    // The harness lowers the cost for speed; a later flag overrides it.
    let mut server = TestServer::start(&["--pbkdf2-iterations", "600000"]);
    let mut client = server.client();
    client.send(&common::register_message("alice", SECRET, "a@example.com"));
    // A full-cost hash on a low-priority thread can take seconds on a busy
    // machine: wait up to a minute rather than the harness's 5 s.
    let answer = (0..12).find_map(|_| client.try_recv());
    assert!(
        matches!(answer, Some(ServerMessage::SuccessRegister(_))),
        "{answer:?}"
    );
    drop(client);
    server.stop_gracefully();
    let db = rusqlite::Connection::open(server.data_dir().join("chat.db")).unwrap();
    let phc: String = db
        .query_row("SELECT password_hash FROM users", [], |row| row.get(0))
        .unwrap();
    assert!(phc.starts_with("$pbkdf2-sha256$i=600000$"), "{phc}");
}

/// The database and the log file are readable by their owner only (0600).
#[test]
fn data_files_are_private_to_their_owner() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    for name in ["chat.db", "server.log"] {
        let mode = std::fs::metadata(server.data_dir().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
    }
}

/// `--synchronous full` really sets SQLite's FULL mode (and the default is
/// NORMAL): the server's startup line says which one the database runs with.
#[test]
fn the_durability_mode_follows_the_flag() {
    let normal = TestServer::start(&[]);
    let full = TestServer::start(&["--synchronous", "full"]);
    assert!(
        normal.log_text().contains("synchronous=NORMAL"),
        "{}",
        normal.log_text()
    );
    assert!(
        full.log_text().contains("synchronous=FULL"),
        "{}",
        full.log_text()
    );
}
