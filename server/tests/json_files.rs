//! The `export-json` and `import-json` subcommands on the real binary: a round
//! trip between two servers, and through PostgreSQL (`--database`, a fresh
//! database; `SKIPPED` without one, failing with `CI=true`), refusal of
//! malformed files, and exports killed mid-write.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Instant;

use common::postgres_db::TestDatabase;
use common::{logged_in, login_with_secret, register_all, TestServer, SECRET};
use protocol::client::{PublishKey, UserRef};
use protocol::ClientMessage;

/// Runs `chat-server --data-dir DATA SUBCOMMAND DIR` to completion.
fn run(data_dir: &Path, subcommand: &str, dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg(subcommand)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run chat-server")
}

/// Runs `chat-server --database URL SUBCOMMAND DIR` and asserts exit 0;
/// returns its stdout.
#[track_caller]
fn run_on_postgres_ok(url: &str, subcommand: &str, dir: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--database", url, subcommand])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run chat-server");
    assert!(
        output.status.success(),
        "{subcommand} on PostgreSQL failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Alice logs in on `server` with her old password and her directory lists
/// bob (mutual) and carol, as the round-trip tests made them.
#[track_caller]
fn assert_alice_lists_bob_and_carol(server: &TestServer) {
    let mut alice = server.client();
    alice.login("alice", SECRET);
    alice.send(&ClientMessage::GetDirectory);
    let directory = alice.recv_directory();
    let mut listed: Vec<(&str, bool)> = directory
        .data
        .iter()
        .map(|entry| (entry.username.as_str(), entry.mutual))
        .collect();
    listed.sort();
    assert_eq!(listed, [("bob", true), ("carol", false)]);
}

/// Runs a subcommand and asserts exit 0; returns its stdout.
#[track_caller]
fn run_ok(data_dir: &Path, subcommand: &str, dir: &Path) -> String {
    let output = run(data_dir, subcommand, dir);
    assert!(
        output.status.success(),
        "{subcommand} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn add_contact(client: &mut common::Client, name: &str) {
    client.send(&ClientMessage::AddContact(UserRef {
        username: name.into(),
    }));
    client.recv_directory();
}

/// Accounts and contacts made over a real server survive export → import into
/// a fresh data dir: a server started there logs users in with their old
/// passwords and lists their contacts; a second import skips everything.
#[test]
fn exported_accounts_log_in_on_a_fresh_server_with_their_old_passwords() {
    let mut first = TestServer::start(&[]);
    register_all(&first, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&first, "alice");
    add_contact(&mut alice, "bob");
    add_contact(&mut alice, "carol");
    alice.close();
    let mut bob = logged_in(&first, "bob");
    add_contact(&mut bob, "alice");
    bob.close();
    assert!(first.stop_gracefully().success());

    let exported = tempfile::tempdir().unwrap();
    let out = run_ok(first.data_dir(), "export-json", exported.path());
    assert!(
        out.starts_with("exported 3 users and 3 contacts to "),
        "{out}"
    );
    for name in ["users.json", "contacts.json"] {
        let mode = fs::metadata(exported.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }

    let fresh = tempfile::tempdir().unwrap();
    let data_dir = fresh.path().join("data");
    let out = run_ok(&data_dir, "import-json", exported.path());
    assert!(
        out.starts_with(
            "imported 3 users (0 skipped: already present), 3 contacts (0 skipped: already present)"
        ),
        "{out}"
    );
    let out = run_ok(&data_dir, "import-json", exported.path());
    assert!(
        out.starts_with(
            "imported 0 users (3 skipped: already present), 0 contacts (3 skipped: already present)"
        ),
        "{out}"
    );

    // A later --data-dir overrides the harness's own.
    let second = TestServer::start(&["--data-dir", data_dir.to_str().unwrap()]);
    assert_alice_lists_bob_and_carol(&second);

    let mut wrong = second.client();
    wrong.send(&login_with_secret("bob", "not-the-password"));
    wrong.recv_fail_login();
    assert!(
        !data_dir.join("users.json").exists(),
        "no mirror without --json-mirror"
    );
}

/// SQLite → files → PostgreSQL → files gives the same files, byte for byte;
/// a second import into PostgreSQL skips everything; a server on that
/// database logs the users in with their old passwords and lists their
/// contacts.
#[test]
fn a_round_trip_through_postgres_gives_the_same_files() {
    let test = "a_round_trip_through_postgres_gives_the_same_files";
    let Some(database) = TestDatabase::create(test) else {
        return;
    };
    let mut first = TestServer::start(&[]);
    register_all(&first, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&first, "alice");
    add_contact(&mut alice, "bob");
    add_contact(&mut alice, "carol");
    alice.send(&ClientMessage::PublishKey(PublishKey {
        public_key: "alice-public-key".into(),
    }));
    alice.recv_key();
    alice.close();
    let mut bob = logged_in(&first, "bob");
    add_contact(&mut bob, "alice");
    bob.close();
    assert!(first.stop_gracefully().success());

    let from_sqlite = tempfile::tempdir().unwrap();
    run_ok(first.data_dir(), "export-json", from_sqlite.path());
    let out = run_on_postgres_ok(&database.url, "import-json", from_sqlite.path());
    assert!(
        out.starts_with(
            "imported 3 users (0 skipped: already present), 3 contacts (0 skipped: already present)"
        ),
        "{out}"
    );
    let from_postgres = tempfile::tempdir().unwrap();
    let out = run_on_postgres_ok(&database.url, "export-json", from_postgres.path());
    assert!(
        out.starts_with("exported 3 users and 3 contacts to "),
        "{out}"
    );
    for name in ["users.json", "contacts.json"] {
        assert_eq!(
            fs::read_to_string(from_sqlite.path().join(name)).unwrap(),
            fs::read_to_string(from_postgres.path().join(name)).unwrap(),
            "{name} differs after the round trip"
        );
        let mode = fs::metadata(from_postgres.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let out = run_on_postgres_ok(&database.url, "import-json", from_sqlite.path());
    assert!(
        out.starts_with(
            "imported 0 users (3 skipped: already present), 0 contacts (3 skipped: already present)"
        ),
        "{out}"
    );

    let second = TestServer::start(&["--database", &database.url]);
    assert_alice_lists_bob_and_carol(&second);
    let mut wrong = second.client();
    wrong.send(&login_with_secret("bob", "not-the-password"));
    wrong.recv_fail_login();
}

/// A malformed file makes import-json exit 2 with a message naming the file,
/// and the database stays as it was; export-json without a database exits 2.
#[test]
fn a_malformed_file_is_refused_with_exit_code_2_and_changes_nothing() {
    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    assert!(server.stop_gracefully().success());
    let files = tempfile::tempdir().unwrap();
    run_ok(server.data_dir(), "export-json", files.path());

    let target = tempfile::tempdir().unwrap();
    let users = fs::read_to_string(files.path().join("users.json")).unwrap();
    fs::write(files.path().join("users.json"), &users[..users.len() - 10]).unwrap();
    let output = run(target.path(), "import-json", files.path());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("users.json: refused, nothing was imported"),
        "{stderr}"
    );

    // Nothing was imported: the valid file now imports both users.
    fs::write(files.path().join("users.json"), &users).unwrap();
    let out = run_ok(target.path(), "import-json", files.path());
    assert!(out.starts_with("imported 2 users (0 skipped"), "{out}");

    let empty = tempfile::tempdir().unwrap();
    let output = run(&empty.path().join("none"), "export-json", files.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no database at"));
}

/// The subcommands' help says the server must be stopped first.
#[test]
fn help_says_the_server_must_not_be_running() {
    for subcommand in ["export-json", "import-json"] {
        let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args([subcommand, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("Stop the server first"), "{help}");
    }
}

/// An export killed (SIGKILL) at any moment leaves each file either absent or
/// complete and byte-identical to a finished export — never truncated — and
/// the directory it leaves still imports.
#[test]
fn an_export_killed_at_any_moment_leaves_whole_files_or_none() {
    // A database large enough that writing it takes a while: 20,000 users.
    let data = tempfile::tempdir().unwrap();
    {
        let mut conn = rusqlite::Connection::open(data.path().join("chat.db")).unwrap();
        server::storage::schema::prepare(&mut conn, false).unwrap();
        let hash = server::password::hash_password(SECRET, 1);
        let tx = conn.transaction().unwrap();
        for n in 0..20_000 {
            tx.execute(
                "INSERT INTO users (username, email, password_hash, salt, created_at)
                 VALUES (?1, ?2, ?3, ?4, 1700000000)",
                rusqlite::params![
                    format!("user{n}"),
                    format!("user{n}@example.com"),
                    hash.phc,
                    hash.salt
                ],
            )
            .unwrap();
        }
        tx.execute(
            "INSERT INTO contacts (owner_id, contact_id, created_at) VALUES (1, 2, 1700000001)",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let reference = tempfile::tempdir().unwrap();
    let started = Instant::now();
    run_ok(data.path(), "export-json", reference.path());
    // Kills are spread over the whole run of an export, start to exit.
    let export_time = started.elapsed();
    let whole_users = fs::read(reference.path().join("users.json")).unwrap();
    let whole_contacts = fs::read(reference.path().join("contacts.json")).unwrap();

    const KILLS: u32 = 20;
    let killed = tempfile::tempdir().unwrap();
    let mut temp_files_seen = 0;
    for step in 0..KILLS {
        let mut child = export_child(data.path(), killed.path());
        thread::sleep(export_time * step / KILLS);
        let _ = child.kill();
        let _ = child.wait();
        assert_whole(killed.path(), &whole_users, &whole_contacts, step);
        if killed.path().join(".users.json.tmp").exists() {
            temp_files_seen += 1;
        }
    }
    // Then kills aimed at the window itself: the moment the temp file
    // appears, between its creation and the rename.
    let temp = killed.path().join(".users.json.tmp");
    let mut caught_mid_write = 0;
    for attempt in 0..10 {
        let _ = fs::remove_file(&temp);
        let mut child = export_child(data.path(), killed.path());
        while !temp.exists() && child.try_wait().unwrap().is_none() {
            std::hint::spin_loop();
        }
        let _ = child.kill();
        let _ = child.wait();
        if temp.exists() {
            caught_mid_write += 1;
        }
        assert_whole(killed.path(), &whole_users, &whole_contacts, attempt);
    }
    assert!(
        caught_mid_write > 0,
        "no kill landed between write and rename"
    );
    eprintln!("kills aimed at the write that landed before the rename: {caught_mid_write} of 10");
    eprintln!(
        "an export takes {export_time:?}; kills that left a temp file behind: \
         {temp_files_seen} of {KILLS}"
    );
    // Whatever temp file the last kill left is ignored by an import...
    if killed.path().join("contacts.json").exists() {
        let target = tempfile::tempdir().unwrap();
        let out = run_ok(target.path(), "import-json", killed.path());
        assert!(out.starts_with("imported 20000 users (0 skipped"), "{out}");
    }
    // ...and replaced by the next finished export.
    run_ok(data.path(), "export-json", killed.path());
    assert!(!killed.path().join(".users.json.tmp").exists());
    assert!(!killed.path().join(".contacts.json.tmp").exists());
    assert_eq!(
        fs::read(killed.path().join("users.json")).unwrap(),
        whole_users
    );
}

/// `chat-server --data-dir DATA export-json DIR`, running, output discarded.
fn export_child(data_dir: &Path, dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("export-json")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Each file in `dir` is absent or exactly the whole export.
#[track_caller]
fn assert_whole(dir: &Path, whole_users: &[u8], whole_contacts: &[u8], step: u32) {
    for (name, whole) in [
        ("users.json", whole_users),
        ("contacts.json", whole_contacts),
    ] {
        if let Ok(bytes) = fs::read(dir.join(name)) {
            assert!(
                bytes == whole,
                "step {step}: {name} has {} bytes, not the whole {}",
                bytes.len(),
                whole.len()
            );
        }
    }
}

/// export-json on a PostgreSQL that does not answer exits 2 naming the
/// database, never its password.
#[test]
fn an_unreachable_postgres_is_named_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("export-json")
        .arg(dir.path())
        .args(["--database", "postgres://chat:s3cret@127.0.0.1:1/chatdb"])
        .stdin(Stdio::null())
        .output()
        .expect("run chat-server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("postgres://chat@127.0.0.1:1/chatdb"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(!dir.path().join("users.json").exists());
}
