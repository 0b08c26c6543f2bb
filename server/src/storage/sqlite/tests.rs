//! The SQLite backend's unit tests, beside its files: each command family's
//! behaviour through `execute`, the index passes, and the page readers on
//! every split of the messages between indexed and not.

use std::path::Path;

use super::messages::{peer_history, sync_page};
use super::*;
use crate::completion::{ConnId, Requester};
use crate::config::{LAST_USED_RESOLUTION_SECS, QUEUE_PAGE_BYTES, SESSION_IDLE_SECS};
use crate::password::hash_password;
use crate::storage::pages::{merge_pages, OFFLINE_CHUNK, QUEUE_PAGE};
use crate::storage::{begin_run, NewMessage, Snapshot, StoredMessage};

const CONN: Requester = Requester::anonymous(ConnId { slot: 0, serial: 1 });

/// Opens the database at `path` and begins a run on it, as a start does.
fn open_at(path: &Path) -> (SqliteBackend, Snapshot) {
    let mut backend = SqliteBackend::open(path, false).unwrap();
    let snapshot = begin_run(&mut backend).unwrap();
    (backend, snapshot)
}

fn open() -> (tempfile::TempDir, SqliteBackend) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, snapshot) = open_at(&dir.path().join("chat.db"));
    assert!(snapshot.users.is_empty());
    assert_eq!(snapshot.next_message_id, 1);
    assert!(!snapshot.recovered_from_crash);
    (dir, backend)
}

/// A pass moves one slice of users forward; the slices together cover
/// every 1:1 message, in both indexes, and the tail empties.
#[test]
fn index_passes_move_one_slice_at_a_time() {
    let (_dir, mut backend) = open();
    let (a, b) = alice_sends_bob_three(&mut backend);
    assert_eq!(backend.indexes.lowest(), 0);
    assert!(backend.index_pass());
    assert_eq!(backend.indexes.lowest(), 0, "one slice moved, not all");
    let mut passes = 1;
    while backend.index_pass() {
        passes += 1;
    }
    assert_eq!(passes, indexes::INDEX_SLICES);
    assert_indexed(&backend, (a, b), 3);
}

/// A pass covers more ids when the tail holds rows for more receivers, so
/// each receiver gets several rows per index page a pass rewrites; within
/// its floor and ceiling.
#[test]
fn a_pass_spans_more_ids_when_more_users_receive() {
    use indexes::{pass_span_for, INDEX_PASS_ROWS, INDEX_PASS_ROWS_MAX, INDEX_SLICES};
    assert_eq!(pass_span_for(0), INDEX_PASS_ROWS);
    assert_eq!(pass_span_for(100), INDEX_PASS_ROWS);
    assert_eq!(pass_span_for(512), 16_384);
    assert_eq!(pass_span_for(usize::MAX), INDEX_PASS_ROWS_MAX);

    let (_dir, mut backend) = open();
    let users: Vec<i64> = (0..512)
        .map(|i| create_user(&mut backend, &format!("u{i}")))
        .collect();
    let first_slice_user = |backend: &SqliteBackend| {
        let slices = INDEX_SLICES as i64;
        let user = users
            .iter()
            .copied()
            .find(|user| user % slices == 0)
            .unwrap();
        backend.indexes.through(user)
    };
    let few = 2 * INDEX_PASS_ROWS as usize;
    backend.execute(burst(&users[..16], few));
    assert!(backend.index_pass());
    assert_eq!(first_slice_user(&backend), INDEX_PASS_ROWS, "16 receivers");
    while backend.index_pass() {}

    let many = 2 * 16_384;
    backend.execute(burst(&users, many));
    assert!(backend.index_pass());
    assert_eq!(
        first_slice_user(&backend),
        (few + 16_384) as i64,
        "512 receivers: 32 rows each"
    );
    while backend.index_pass() {}
    assert_eq!(backend.indexes.tail_rows(), 0);
    for table in ["received", "sent"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE ?1 > 0");
        assert_eq!(
            count(&backend, &sql, 1),
            (few + many) as i64,
            "every message in {table}"
        );
    }
}

/// A database indexed under another slicing starts from its lowest mark:
/// the rows past it are indexed again, each once, and the slices that no
/// longer exist are dropped. Here 64 slices, one of them behind: its users
/// now share a slice with users whose own mark is further on.
#[test]
fn a_start_under_another_slicing_indexes_from_the_lowest_mark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (mut backend, _) = open_at(&path);
    let users: Vec<i64> = (0..40)
        .map(|i| create_user(&mut backend, &format!("u{i}")))
        .collect();
    backend.execute(burst(&users, 400));
    backend.finish();
    drop(backend);
    // As a 64-slice build would have left it after indexing only up to 300
    // (slice 35, which holds user 35) and 350 (the others).
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM index_slices;
             DELETE FROM received WHERE message_id > 300;
             DELETE FROM sent WHERE message_id > 300;",
        )
        .unwrap();
        for slice in 0..64 {
            let mark = if slice == 35 { 300 } else { 350 };
            conn.execute(
                "INSERT INTO index_slices (slice, indexed_through) VALUES (?1, ?2)",
                [slice, mark],
            )
            .unwrap();
        }
    }
    let (backend, _) = open_at(&path);
    for table in ["received", "sent"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE ?1 > 0");
        assert_eq!(count(&backend, &sql, 1), 400, "every message in {table}");
    }
    let slices = "SELECT COUNT(*) FROM index_slices WHERE ?1 > 0";
    assert_eq!(count(&backend, slices, 1), indexes::INDEX_SLICES as i64);
}

/// What a killed run left unindexed is indexed at the next start.
#[test]
fn a_start_indexes_what_the_last_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (mut backend, _) = open_at(&path);
    let pair = alice_sends_bob_three(&mut backend);
    assert!(backend.index_pass());
    drop(backend); // no finish(): as if killed
    let (backend, _) = open_at(&path);
    assert_indexed(&backend, pair, 3);
}

fn alice_sends_bob_three(backend: &mut SqliteBackend) -> (i64, i64) {
    let a = create_user(backend, "alice");
    let b = create_user(backend, "bob");
    for id in 1..=3 {
        store(backend, id, a, b, true);
    }
    (a, b)
}

/// Every message up to `through` is indexed, and `from` → `to` has that
/// many in each index.
#[track_caller]
fn assert_indexed(backend: &SqliteBackend, (from, to): (i64, i64), through: i64) {
    assert_eq!(backend.indexes.lowest(), through);
    let sql = "SELECT COUNT(*) FROM received WHERE receiver_id = ?1";
    assert_eq!(count(backend, sql, to), through);
    let sql = "SELECT COUNT(*) FROM sent WHERE sender_id = ?1";
    assert_eq!(count(backend, sql, from), through);
}

fn count(backend: &SqliteBackend, sql: &str, user_id: i64) -> i64 {
    backend
        .conn
        .query_row(sql, [user_id], |row| row.get(0))
        .unwrap()
}

/// Leaves exactly the messages up to `through` in the per-user indexes.
fn index_only_through(tx: &Transaction, through: i64) {
    tx.execute_batch("DELETE FROM received; DELETE FROM sent;")
        .unwrap();
    tx.execute(
        "INSERT INTO received SELECT receiver_id, message_id, sender_id FROM messages
         WHERE receiver_id IS NOT NULL AND message_id <= ?1",
        [through],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO sent SELECT sender_id, message_id, receiver_id FROM messages
         WHERE receiver_id IS NOT NULL AND message_id <= ?1",
        [through],
    )
    .unwrap();
}

#[test]
fn a_start_after_a_crash_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (mut backend, _) = open_at(&path);
    backend.finish();
    drop(backend);
    let (backend, snapshot) = open_at(&path);
    assert!(
        !snapshot.recovered_from_crash,
        "the last run finished cleanly"
    );
    drop(backend); // no finish(): as if killed
    let (_backend, snapshot) = open_at(&path);
    assert!(snapshot.recovered_from_crash);
}

/// Storage gives ids in commit order from a counter that commits with the
/// messages: a start after a clean stop or a crash goes on past every id
/// handed out, and ids of resends and failed stores are never given again.
#[test]
fn ids_are_given_at_commit_and_never_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (mut backend, first) = open_at(&path);
    assert_eq!(first.next_message_id, 1);
    let a = create_user(&mut backend, "alice");
    store(&mut backend, 1, a, a, true);
    store(&mut backend, 2, a, a, true);
    backend.finish();
    drop(backend);

    let (mut backend, second) = open_at(&path);
    assert_eq!(second.next_message_id, 3);
    store(&mut backend, 3, a, a, true);
    // A batch that fails is retried alone; the failed store's id is not
    // kept, and nobody saw it.
    let replies = backend.execute(vec![with_client_id(0, 999, "x", 100)]);
    assert!(matches!(
        replies[..],
        [Reply::Failed {
            ticket: Some(_),
            ..
        }]
    ));
    drop(backend); // no finish(): as if killed

    let (mut backend, third) = open_at(&path);
    assert!(third.recovered_from_crash);
    assert_eq!(third.next_message_id, 4);
    store(&mut backend, 4, a, a, true);
}

fn create_user(backend: &mut SqliteBackend, name: &str) -> i64 {
    let replies = backend.execute(vec![Command::CreateUser {
        to: CONN,
        username: name.into(),
        email: format!("{name}@example.com"),
        hash: hash_password("password123", 1),
        now: 100,
        shared: None,
    }]);
    match replies.as_slice() {
        [Reply::UserCreated {
            user_id: Some(id), ..
        }] => *id,
        other => panic!("unexpected {other:?}"),
    }
}

fn store(backend: &mut SqliteBackend, id: i64, from: i64, to: i64, delivered: bool) {
    let replies = backend.execute(vec![Command::StoreMessage {
        to: CONN,
        ticket: 1,
        client_message_id: None,
        message: NewMessage {
            message_id: 0,
            sender_id: from,
            receiver_id: Some(to),
            group_id: None,
            content: format!("m{id}"),
            is_encrypted: false,
            time: 100 + id,
            delivered,
        },
    }]);
    assert!(
        matches!(replies.as_slice(), [Reply::MessageStored { message_id, .. }] if *message_id == id),
        "storage gives ids in order: {replies:?}"
    );
}

fn ids(messages: &[StoredMessage]) -> Vec<i64> {
    messages.iter().map(|m| m.message_id).collect()
}

#[test]
fn usernames_are_unique_and_case_sensitive() {
    let (_dir, mut backend) = open();
    create_user(&mut backend, "ann");
    create_user(&mut backend, "ANN");
    let replies = backend.execute(vec![Command::CreateUser {
        to: CONN,
        username: "ann".into(),
        email: "x@y.z".into(),
        hash: hash_password("password123", 1),
        now: 1,
        shared: None,
    }]);
    assert!(matches!(
        replies.as_slice(),
        [Reply::UserCreated { user_id: None, .. }]
    ));
}

fn page_of(ids: &[i64], bytes: usize) -> Vec<StoredMessage> {
    ids.iter()
        .map(|&message_id| StoredMessage {
            message_id,
            sender: "a".into(),
            receiver: None,
            group_id: None,
            content: "x".repeat(bytes),
            is_encrypted: false,
            time: 0,
        })
        .collect()
}

/// Two queue pages merged never reach past where either stopped: a
/// direct page cut by bytes at 3 with group messages 4 and 5 after it
/// gives 1-3 and "more", so 4 and 5 come with the next page, after the
/// direct messages the cut left out.
#[test]
fn merged_queue_pages_stop_where_either_page_stopped() {
    let direct = (page_of(&[1, 3], 10), true);
    let group = (page_of(&[2, 4, 5], 10), false);
    let (page, more) = merge_pages(direct, group, QUEUE_PAGE);
    let ids: Vec<i64> = page.iter().map(|m| m.message_id).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert!(more);

    let (page, more) = merge_pages(
        (page_of(&[1], 10), false),
        (page_of(&[2], 10), false),
        QUEUE_PAGE,
    );
    assert_eq!(page.len(), 2);
    assert!(!more);

    let big = QUEUE_PAGE_BYTES / 2 + 1;
    let (page, more) = merge_pages(
        (page_of(&[1], big), false),
        (page_of(&[2], big), false),
        QUEUE_PAGE,
    );
    assert_eq!(page.len(), 1, "cut by bytes after merging");
    assert!(more);
}

#[test]
fn history_pages_newest_first_listed_oldest_first() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    let c = create_user(&mut backend, "carol");
    for id in 1..=5 {
        store(
            &mut backend,
            id,
            if id % 2 == 0 { a } else { b },
            if id % 2 == 0 { b } else { a },
            true,
        );
    }
    store(&mut backend, 6, a, c, true);
    // Whatever part of the messages is indexed, the answers are the same.
    for indexed_through in [0, 3, 6] {
        let tx = backend.conn.transaction().unwrap();
        index_only_through(&tx, indexed_through);
        let (page, more) =
            peer_history(&tx, &mut Indexes::at(indexed_through), (a, b), None, 2).unwrap();
        assert_eq!((ids(&page), more), (vec![4, 5], true));
        let (page, more) =
            peer_history(&tx, &mut Indexes::at(indexed_through), (a, b), Some(4), 10).unwrap();
        assert_eq!((ids(&page), more), (vec![1, 2, 3], false));
        let (page, more) =
            peer_history(&tx, &mut Indexes::at(indexed_through), (b, c), None, 10).unwrap();
        assert_eq!((ids(&page), more), (vec![], false));
    }
}

#[test]
fn sync_covers_sent_and_received_once_each() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    store(&mut backend, 1, a, b, true);
    store(&mut backend, 2, b, a, true);
    store(&mut backend, 3, a, a, true);
    store(&mut backend, 4, b, b, true);
    for indexed_through in [0, 2, 4] {
        let tx = backend.conn.transaction().unwrap();
        index_only_through(&tx, indexed_through);
        let (page, more) = sync_page(&tx, &mut Indexes::at(indexed_through), a, 0, 2).unwrap();
        assert_eq!((ids(&page), more), (vec![1, 2], true));
        let (page, more) = sync_page(&tx, &mut Indexes::at(indexed_through), a, 2, 10).unwrap();
        assert_eq!((ids(&page), more), (vec![3], false));
    }
}

/// Taking the queue marks nothing (two devices logging in at once each
/// get all of it); marking what was written out takes it for good.
#[test]
fn the_offline_queue_is_taken_once_marked() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    store(&mut backend, 1, a, b, false);
    store(&mut backend, 2, a, b, true);
    store(&mut backend, 3, a, b, false);
    let peer = "127.0.0.1:5000".parse().unwrap();
    let open_session = |hash: &str| Command::OpenSession {
        to: CONN,
        user_id: b,
        session_hash: hash.into(),
        peer,
        include_groups: true,
        now: 200,
    };
    let replies = backend.execute(vec![open_session("h1")]);
    let [Reply::SessionOpened { queued, .. }] = replies.as_slice() else {
        panic!("{replies:?}");
    };
    assert_eq!(ids(queued), vec![1, 3], "2 was taken when stored");
    let replies = backend.execute(vec![open_session("h2")]);
    let [Reply::SessionOpened {
        queued,
        queue_before,
        ..
    }] = replies.as_slice()
    else {
        panic!("{replies:?}");
    };
    assert_eq!(ids(queued), vec![1, 3], "not taken until written out");
    assert_eq!(*queue_before, 4, "the queue holds everything committed");
    backend.execute(vec![Command::MarkDelivered {
        user_id: b,
        message_ids: vec![1, 3],
    }]);
    let replies = backend.execute(vec![open_session("h3")]);
    let [Reply::SessionOpened { queued, .. }] = replies.as_slice() else {
        panic!("{replies:?}");
    };
    assert!(queued.is_empty());
}

#[test]
fn a_long_queue_is_taken_in_chunks() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    let total = i64::from(OFFLINE_CHUNK) * 2 + 1;
    for id in 1..=total {
        store(&mut backend, id, a, b, false);
    }
    let take = |after| Command::TakeQueue {
        to: CONN,
        user_id: b,
        queue_before: i64::MAX,
        after,
        since: None,
        include_groups: true,
    };
    let mut taken = Vec::new();
    loop {
        let replies = backend.execute(vec![take(taken.last().copied().unwrap_or(0))]);
        let [Reply::QueueChunk {
            queued,
            more_queued,
            ..
        }] = replies.as_slice()
        else {
            panic!("{replies:?}");
        };
        taken.extend(ids(queued));
        if !more_queued {
            break;
        }
    }
    assert_eq!(taken, (1..=total).collect::<Vec<_>>());
}

/// Opens session "h" for `user_id` at `now` (a password login); returns
/// the peer address it used.
fn open_session_h(backend: &mut SqliteBackend, user_id: i64, now: i64) -> std::net::SocketAddr {
    let peer = "127.0.0.1:5000".parse().unwrap();
    backend.execute(vec![Command::OpenSession {
        to: CONN,
        user_id,
        session_hash: "h".into(),
        peer,
        include_groups: true,
        now,
    }]);
    peer
}

#[test]
fn sessions_resume_only_for_their_user_and_until_ended() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    let peer = open_session_h(&mut backend, a, 200);
    let resume = |user_id| Command::ResumeSession {
        to: CONN,
        user_id,
        receipts: false,
        session_hash: "h".into(),
        peer,
        include_groups: true,
        now: 300,
    };
    assert!(matches!(
        backend.execute(vec![resume(b)])[..],
        [Reply::SessionInvalid { .. }]
    ));
    assert!(matches!(
        backend.execute(vec![resume(a)])[..],
        [Reply::SessionOpened { .. }]
    ));
    backend.execute(vec![Command::EndSession {
        to: CONN,
        session_hash: "h".into(),
    }]);
    assert!(matches!(
        backend.execute(vec![resume(a)])[..],
        [Reply::SessionInvalid { .. }]
    ));
}

/// A login or a departure within a minute of the session's stored
/// `last_used_at` writes nothing; one past it moves the time; expiry still
/// counts from the stored time.
#[test]
fn a_session_is_touched_at_most_once_a_minute() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let peer = open_session_h(&mut backend, a, 1_000);
    let resume = |now| Command::ResumeSession {
        to: CONN,
        user_id: a,
        receipts: false,
        session_hash: "h".into(),
        peer,
        include_groups: true,
        now,
    };
    let lost = |now| Command::ConnectionLost {
        user_id: a,
        username: "alice".into(),
        session_hash: "h".into(),
        last: true,
        groups_taken: None,
        now,
    };
    let last_used = |backend: &SqliteBackend| {
        count(
            backend,
            "SELECT last_used_at FROM sessions WHERE user_id = ?1",
            a,
        )
    };
    let soon = 1_000 + LAST_USED_RESOLUTION_SECS - 1;
    assert!(matches!(
        backend.execute(vec![resume(soon)])[..],
        [Reply::SessionOpened { .. }]
    ));
    backend.execute(vec![lost(soon)]);
    assert_eq!(last_used(&backend), 1_000);
    let later = 1_000 + LAST_USED_RESOLUTION_SECS;
    backend.execute(vec![resume(later)]);
    assert_eq!(last_used(&backend), later);
    backend.execute(vec![lost(later + LAST_USED_RESOLUTION_SECS)]);
    assert_eq!(last_used(&backend), later + LAST_USED_RESOLUTION_SECS);
    let expired = later + LAST_USED_RESOLUTION_SECS + SESSION_IDLE_SECS;
    assert!(matches!(
        backend.execute(vec![resume(expired)])[..],
        [Reply::SessionInvalid { .. }]
    ));
}

#[test]
fn contacts_report_mutuality() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    let add = |owner_id, contact_id| Command::AddContact {
        to: CONN,
        owner_id,
        owner_name: String::new(),
        contact_id,
        now: 1,
    };
    let replies = backend.execute(vec![add(a, b)]);
    assert!(matches!(
        &replies[..],
        [Reply::ContactAdded { added: true, mutual: false, contacts, .. }] if !contacts[0].mutual
    ));
    let replies = backend.execute(vec![add(b, a), add(b, a)]);
    assert!(matches!(
        &replies[..],
        [
            Reply::ContactAdded {
                added: true,
                mutual: true,
                ..
            },
            Reply::ContactAdded {
                added: false,
                mutual: true,
                ..
            }
        ]
    ));
    let tx = backend.conn.transaction().unwrap();
    assert_eq!(contacts::mutual_contacts(&tx, a).unwrap(), vec![b]);
}

#[test]
fn a_failing_command_fails_alone() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    // The second's sender does not exist: it violates a foreign key.
    let message = |ticket, sender_id| Command::StoreMessage {
        to: CONN,
        ticket,
        client_message_id: None,
        message: NewMessage {
            message_id: 0,
            sender_id,
            receiver_id: Some(a),
            group_id: None,
            content: "x".into(),
            is_encrypted: false,
            time: 1,
            delivered: true,
        },
    };
    let replies = backend.execute(vec![message(1, a), message(2, a + 100), message(3, a)]);
    assert!(
        matches!(
            &replies[..],
            [
                Reply::MessageStored { message_id: 1, .. },
                Reply::Failed { .. },
                Reply::MessageStored { message_id: 2, .. }
            ]
        ),
        "{replies:?}"
    );
}

/// A message from `from` to itself with a client id, sent at `time`.
fn with_client_id(id: i64, from: i64, client_id: &str, time: i64) -> Command {
    Command::StoreMessage {
        to: CONN,
        ticket: id as u64,
        client_message_id: Some(client_id.into()),
        message: NewMessage {
            message_id: id,
            sender_id: from,
            receiver_id: Some(from),
            group_id: None,
            content: format!("m{id}"),
            is_encrypted: false,
            time,
            delivered: true,
        },
    }
}

/// The `duplicate_of` of each `MessageStored` reply, in order.
fn duplicates(replies: &[Reply]) -> Vec<Option<i64>> {
    replies
        .iter()
        .map(|reply| match reply {
            Reply::MessageStored { duplicate_of, .. } => *duplicate_of,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn stored_count(backend: &SqliteBackend) -> i64 {
    backend
        .conn
        .query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))
        .unwrap()
}

#[test]
fn a_resend_is_recognised_in_its_batch_and_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (mut backend, _) = open_at(&path);
    let a = create_user(&mut backend, "alice");
    let now = unix_now();
    let replies = backend.execute(vec![
        with_client_id(1, a, "c1", now),
        with_client_id(2, a, "c1", now),
        with_client_id(3, a, "c2", now),
    ]);
    assert_eq!(duplicates(&replies), [None, Some(1), None]);
    assert_eq!(stored_count(&backend), 2);
    // Dropped without finishing, as `kill -9` leaves it.
    drop(backend);
    let (mut backend, _) = open_at(&path);
    let replies = backend.execute(vec![
        with_client_id(4, a, "c1", now),
        with_client_id(5, a, "c2", now),
        with_client_id(6, a, "c3", now),
    ]);
    // The resend in the first batch took no id, so c2 has id 2.
    assert_eq!(duplicates(&replies), [Some(1), Some(2), None]);
    assert_eq!(stored_count(&backend), 3);
}

#[test]
fn ids_older_than_the_retention_are_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (mut backend, _) = open_at(&path);
    let a = create_user(&mut backend, "alice");
    let long_ago = unix_now() - crate::config::CLIENT_ID_RETENTION_SECS - 10;
    backend.execute(vec![with_client_id(1, a, "old", long_ago)]);
    drop(backend);
    let (mut backend, _) = open_at(&path);
    let replies = backend.execute(vec![with_client_id(2, a, "old", unix_now())]);
    assert_eq!(duplicates(&replies), [None], "past 24 h a resend is new");
}

#[test]
fn a_failed_batch_leaves_no_client_id_behind() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let now = unix_now();
    // The second command's sender does not exist: the batch fails, and
    // each command is retried alone; the first must then be stored, not
    // taken for a resend of itself.
    let replies = backend.execute(vec![
        with_client_id(1, a, "c1", now),
        with_client_id(1, a + 100, "c2", now),
    ]);
    assert!(
        matches!(
            &replies[..],
            [
                Reply::MessageStored {
                    message_id: 1,
                    duplicate_of: None,
                    ..
                },
                Reply::Failed { .. }
            ]
        ),
        "{replies:?}"
    );
    assert_eq!(stored_count(&backend), 1);
    let replies = backend.execute(vec![with_client_id(2, a, "c2", now)]);
    assert_eq!(duplicates(&replies), [None], "c2 was never stored");
}

#[test]
fn a_version_3_database_keeps_its_client_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let now = unix_now();
    {
        // The schema as version 3 wrote it, with one remembered id.
        let conn = rusqlite::Connection::open(&path).unwrap();
        for (_, migration) in &schema::MIGRATIONS[..3] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO users (user_id, username, email, password_hash, salt, created_at)
                 VALUES (1, 'alice', 'a@example.com', 'x', 'x', 1);
             INSERT INTO messages (message_id, sender_id, receiver_id, content, timestamp)
                 VALUES (7, 1, 1, 'hi', {now});
             INSERT INTO client_ids VALUES (1, 'c7', 7, {now});"
        ))
        .unwrap();
    }
    let (mut backend, _) = open_at(&path);
    let kept: Option<String> = backend
        .conn
        .query_row(
            "SELECT client_message_id FROM messages WHERE message_id = 7",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(kept.as_deref(), Some("c7"));
    let replies = backend.execute(vec![with_client_id(8, 1, "c7", now)]);
    assert_eq!(duplicates(&replies), [Some(7)]);
}

/// Confirms `through` for `user_id`'s device; returns the senders, sorted.
fn confirm(backend: &mut SqliteBackend, user_id: i64, through: i64) -> Vec<(i64, i64)> {
    let replies = backend.execute(vec![Command::Confirm {
        user_id,
        username: "bob".into(),
        session_hash: "device".into(),
        through,
    }]);
    match replies.as_slice() {
        [Reply::Confirmed { senders, .. }] => {
            let mut senders = senders.clone();
            senders.sort_unstable();
            senders
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A confirmation names each sender's highest newly confirmed message,
/// whether it is in the indexes or the unindexed tail, across stores, index
/// passes and a batch that fails and is retried alone.
#[test]
fn confirmations_name_senders_from_the_indexes_and_the_kept_tail() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    let c = create_user(&mut backend, "carol");
    backend
        .conn
        .execute(
            "INSERT INTO sessions (session_hash, user_id, created_at, last_used_at)
             VALUES ('device', ?1, 1, 1)",
            [b],
        )
        .unwrap();
    store(&mut backend, 1, a, b, false);
    assert_eq!(confirm(&mut backend, b, 1), vec![(a, 1)]);
    store(&mut backend, 2, c, b, false);
    store(&mut backend, 3, a, b, false);
    assert_eq!(confirm(&mut backend, b, 2), vec![(c, 2)]);
    // Slices 0 to 2 (bob's among them), not carol's.
    for _ in 0..3 {
        assert!(backend.index_pass());
    }
    store(&mut backend, 4, c, b, false);
    assert_eq!(confirm(&mut backend, b, 4), vec![(a, 3), (c, 4)]);
    // Message 5 is stored in a batch that fails (an unknown sender breaks a
    // foreign key), then alone.
    let message = |ticket, from| Command::StoreMessage {
        to: CONN,
        ticket,
        client_message_id: None,
        message: NewMessage {
            message_id: 0,
            sender_id: from,
            receiver_id: Some(b),
            group_id: None,
            content: "x".into(),
            is_encrypted: false,
            time: 1,
            delivered: false,
        },
    };
    let replies = backend.execute(vec![message(1, c), message(2, a + 100)]);
    assert!(
        matches!(
            &replies[..],
            [
                Reply::MessageStored { message_id: 5, .. },
                Reply::Failed { .. }
            ]
        ),
        "{replies:?}"
    );
    store(&mut backend, 6, a, b, false);
    assert_eq!(confirm(&mut backend, b, 6), vec![(a, 6), (c, 5)]);
    // The tail is read by receiver: carol's message is not bob's.
    store(&mut backend, 7, a, c, false);
    store(&mut backend, 8, c, b, false);
    assert_eq!(confirm(&mut backend, b, 8), vec![(c, 8)]);
    // Every slice indexed: the rows left the tail, the indexes answer.
    store(&mut backend, 9, a, b, false);
    while backend.index_pass() {}
    store(&mut backend, 10, c, b, false);
    assert_eq!(confirm(&mut backend, b, 10), vec![(a, 9), (c, 10)]);
}

/// A version-5 database (per-user indexes partial on `indexed`, the
/// offline queue flipped row by row) is migrated: its messages land in the
/// index tables at the start, and History reads them.
#[test]
fn a_version_5_database_is_migrated_and_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    {
        let conn = Connection::open(&path).unwrap();
        for (_, migration) in &schema::MIGRATIONS[..5] {
            conn.execute_batch(migration).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 5;
             INSERT INTO users (user_id, username, email, password_hash, salt, created_at)
             VALUES (1, 'alice', 'a@example.com', 'h', 's', 1),
                    (2, 'bob', 'b@example.com', 'h', 's', 1);
             INSERT INTO messages (message_id, sender_id, receiver_id, content, timestamp,
                                   delivered, indexed)
             VALUES (1, 1, 2, 'one', 1, 1, 1), (2, 2, 1, 'two', 1, 1, 0),
                    (3, 1, 2, 'three', 1, 0, 0);",
        )
        .unwrap();
    }
    let (mut backend, _) = open_at(&path);
    assert_eq!(
        count(
            &backend,
            "SELECT COUNT(*) FROM received WHERE receiver_id = ?1",
            2
        ),
        2
    );
    assert_eq!(
        count(
            &backend,
            "SELECT COUNT(*) FROM sent WHERE sender_id = ?1",
            2
        ),
        1
    );
    let tx = backend.conn.transaction().unwrap();
    let (page, more) = peer_history(&tx, &mut backend.indexes, (1, 2), None, 10).unwrap();
    assert_eq!((ids(&page), more), (vec![1, 2, 3], false));
}

/// A resend this server remembers takes no id and writes nothing: it is
/// answered with the first id even when nothing could be written (a full
/// disk), and the next new message takes the next id.
#[test]
fn a_remembered_resend_takes_no_id() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    let send = |client_id: &str| Command::StoreMessage {
        to: CONN,
        ticket: 1,
        client_message_id: Some(client_id.into()),
        message: NewMessage {
            message_id: 0,
            sender_id: a,
            receiver_id: Some(b),
            group_id: None,
            content: "hello".into(),
            is_encrypted: false,
            time: 100,
            delivered: false,
        },
    };
    let stored = |replies: Vec<Reply>| match replies.as_slice() {
        [Reply::MessageStored {
            message_id,
            duplicate_of,
            ..
        }] => duplicate_of.unwrap_or(*message_id),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(stored(backend.execute(vec![send("c1")])), 1);
    // Nothing can be written now: the resend is still answered.
    backend
        .conn
        .pragma_update(None, "query_only", true)
        .unwrap();
    assert_eq!(stored(backend.execute(vec![send("c1")])), 1);
    backend
        .conn
        .pragma_update(None, "query_only", false)
        .unwrap();
    assert_eq!(stored(backend.execute(vec![send("c2")])), 2);
}

/// A batch of `count` 1:1 messages between `users`, round robin.
fn burst(users: &[i64], count: usize) -> Vec<Command> {
    (0..count)
        .map(|i| Command::StoreMessage {
            to: CONN,
            ticket: i as u64,
            client_message_id: None,
            message: NewMessage {
                message_id: 0,
                sender_id: users[i % users.len()],
                receiver_id: Some(users[(i + 1) % users.len()]),
                group_id: None,
                content: "x".into(),
                is_encrypted: false,
                time: 100,
                delivered: true,
            },
        })
        .collect()
}

/// Sixteen users, for bursts of messages among them.
fn sixteen_users(backend: &mut SqliteBackend) -> Vec<i64> {
    (0..16)
        .map(|i| create_user(backend, &format!("u{i}")))
        .collect()
}

/// Idle moments until no upkeep is due, each making progress (at most
/// `most` of them).
fn idle_until_caught_up(backend: &mut SqliteBackend, most: usize) {
    let mut idle_moments = 0;
    while backend.upkeep_due() {
        backend.idle();
        idle_moments += 1;
        assert!(idle_moments < most, "idle passes make progress");
    }
}

/// A sustained burst cannot outrun the index passes: the unindexed tail
/// stays under its bound after every batch, and once the burst is over
/// the idle moments catch up without waiting for the idle tick.
#[test]
fn the_unindexed_tail_stays_bounded_and_catches_up_when_idle() {
    let (_dir, mut backend) = open();
    let users = sixteen_users(&mut backend);
    let batch = 2_048;
    let batches = INDEX_TAIL_BOUND as usize / batch + 4;
    for _ in 0..batches {
        let replies = backend.execute(burst(&users, batch));
        assert_eq!(replies.len(), batch);
        backend.after_replies();
        assert!(
            backend.unindexed() < INDEX_TAIL_BOUND,
            "unindexed {} after a batch",
            backend.unindexed()
        );
        assert!(backend.indexes.tail_rows() <= INDEX_TAIL_BOUND as usize);
    }
    std::thread::sleep(stored_times::INDEX_AGE);
    assert!(backend.upkeep_due(), "behind after the burst");
    idle_until_caught_up(&mut backend, 10_000);
    assert!(backend.unindexed() < INDEX_TAIL_MAX);
    while backend.index_pass() {}
    assert_eq!(backend.indexes.tail_rows(), 0);
    let stored = (batch * batches) as i64;
    for table in ["received", "sent"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE ?1 > 0");
        assert_eq!(
            count(&backend, &sql, 1),
            stored,
            "every message once in {table}"
        );
    }
}

/// Passes while running leave rows younger than `INDEX_AGE` alone (their
/// receivers' devices confirm them meanwhile, so they stay out of the
/// undelivered index); once the rows are old enough, the passes come.
#[test]
fn running_passes_wait_until_the_rows_are_old_enough() {
    let (_dir, mut backend) = open();
    let users = sixteen_users(&mut backend);
    let batch = 2 * INDEX_TAIL_MAX as usize;
    let indexed =
        |backend: &SqliteBackend| count(backend, "SELECT COUNT(*) FROM received WHERE ?1 > 0", 1);
    let stored = Instant::now();
    backend.execute(burst(&users, batch));
    backend.after_replies();
    backend.idle();
    let young = !backend.upkeep_due() && indexed(&backend) == 0;
    assert!(
        young || stored.elapsed() >= stored_times::INDEX_AGE,
        "rows {:?} old were passed",
        stored.elapsed()
    );
    std::thread::sleep(stored_times::INDEX_AGE);
    assert!(backend.upkeep_due(), "old enough, and past INDEX_TAIL_MAX");
    // One slice per batch; the first slices may hold none of the 16 users.
    let mut batches = 0;
    while indexed(&backend) == 0 && batches < indexes::INDEX_SLICES {
        backend.after_replies();
        batches += 1;
    }
    assert!(indexed(&backend) > 0, "passes ran once the rows aged");
    idle_until_caught_up(&mut backend, 1_000);
    assert!(backend.unindexed() < INDEX_TAIL_MAX);
}

/// Idle moments leave a small old tail alone while young rows keep
/// arriving (passes then wait for a whole span), and index it once every
/// row is old enough.
#[test]
fn idle_passes_wait_while_messages_keep_arriving() {
    let (_dir, mut backend) = open();
    let users = sixteen_users(&mut backend);
    let indexed =
        |backend: &SqliteBackend| count(backend, "SELECT COUNT(*) FROM received WHERE ?1 > 0", 1);
    backend.execute(burst(&users, 64));
    std::thread::sleep(INDEX_DELAY.max(stored_times::INDEX_AGE));
    let young_stored = Instant::now();
    backend.execute(burst(&users, 1));
    for _ in 0..indexes::INDEX_SLICES {
        backend.idle();
    }
    let still_young = young_stored.elapsed() < stored_times::INDEX_AGE;
    assert!(
        !still_young || indexed(&backend) == 0,
        "an idle pass ran while a row {:?} old was arriving",
        young_stored.elapsed()
    );
    std::thread::sleep(stored_times::INDEX_AGE);
    backend.idle();
    idle_until_caught_up(&mut backend, 100);
    assert_eq!(backend.unindexed(), 0, "every row old enough: all indexed");
    assert_eq!(indexed(&backend), 65);
}

/// `messages.delivered` of message `id` (0 queued, 1 taken, 2 pending).
fn delivered_column(backend: &SqliteBackend, id: i64) -> i64 {
    count(
        backend,
        "SELECT delivered FROM messages WHERE message_id = ?1",
        id,
    )
}

/// Ids in `user_id`'s offline queue, as a new login of theirs is pushed it.
fn queue_of(backend: &mut SqliteBackend, user_id: i64, login: &str) -> Vec<i64> {
    let replies = backend.execute(vec![Command::OpenSession {
        to: CONN,
        user_id,
        session_hash: login.into(),
        peer: "127.0.0.1:5000".parse().unwrap(),
        include_groups: true,
        now: 200,
    }]);
    match replies.as_slice() {
        [Reply::SessionOpened { queued, .. }] => ids(queued),
        other => panic!("unexpected {other:?}"),
    }
}

/// Schema 7: a message nobody has taken is pending, outside the undelivered
/// index, and still in the queue (read from the tail); the index pass moves
/// it into the index only if it is still untaken then. A confirmed one
/// never enters it, and a requeue puts it back.
#[test]
fn only_messages_untaken_at_the_pass_enter_the_undelivered_index() {
    let (_dir, mut backend) = open();
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    let c = create_user(&mut backend, "carol");
    store(&mut backend, 1, a, b, false);
    store(&mut backend, 2, a, c, false);
    store(&mut backend, 3, a, c, true);
    confirm(&mut backend, c, 2);
    let in_index = |backend: &SqliteBackend| {
        count(
            backend,
            "SELECT COUNT(*) FROM messages INDEXED BY messages_undelivered
             WHERE receiver_id >= ?1 AND delivered = 0",
            0,
        )
    };
    assert_eq!(in_index(&backend), 0, "pending, not indexed");
    assert_eq!(
        queue_of(&mut backend, b, "b1"),
        vec![1],
        "read from the tail"
    );
    assert_eq!(queue_of(&mut backend, c, "c1"), Vec::<i64>::new());
    while backend.index_pass() {}
    assert_eq!(backend.unindexed(), 0);
    assert_eq!(in_index(&backend), 1, "only bob's untaken message");
    assert_eq!(
        queue_of(&mut backend, b, "b2"),
        vec![1],
        "read from the index"
    );
    assert_eq!(queue_of(&mut backend, c, "c2"), Vec::<i64>::new());
    backend.execute(vec![Command::Requeue {
        user_id: c,
        from_message_id: 2,
    }]);
    assert_eq!(
        queue_of(&mut backend, c, "c3"),
        vec![2, 3],
        "back in the queue"
    );
}

/// The migration to version 7: rows a receipts device confirmed (at or
/// below `taken_through`) and group rows leave the undelivered index;
/// untaken ones stay queued.
#[test]
fn a_version_6_database_keeps_its_queue_and_sheds_the_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    {
        let conn = Connection::open(&path).unwrap();
        for (_, migration) in &schema::MIGRATIONS[..6] {
            conn.execute_batch(migration).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 6;
             INSERT INTO users (user_id, username, email, password_hash, salt, created_at,
                                taken_through)
             VALUES (1, 'alice', 'a@example.com', 'h', 's', 1, 0),
                    (2, 'bob', 'b@example.com', 'h', 's', 1, 2);
             INSERT INTO groups (group_id, name, creator_id, created_at)
             VALUES (1, 'g', 1, 1);
             INSERT INTO messages (message_id, sender_id, receiver_id, group_id, content,
                                   timestamp, delivered)
             VALUES (1, 1, 2, NULL, 'taken by the mark', 1, 0),
                    (2, 1, 2, NULL, 'taken by the mark', 1, 0),
                    (3, 1, 2, NULL, 'queued', 1, 0),
                    (4, 2, 1, NULL, 'taken by a connection', 1, 1),
                    (5, 1, NULL, 1, 'group', 1, 0);",
        )
        .unwrap();
    }
    let (mut backend, _) = open_at(&path);
    let states: Vec<i64> = (1..=5).map(|id| delivered_column(&backend, id)).collect();
    assert_eq!(states, vec![2, 2, 0, 1, 2]);
    assert_eq!(queue_of(&mut backend, 2, "b"), vec![3]);
}

/// A start after a crash queues what no pass reached, as a pass would:
/// pending and untaken rows enter the undelivered index, taken ones not.
#[test]
fn a_start_queues_the_pending_messages_no_pass_reached() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (mut backend, _) = open_at(&path);
    let a = create_user(&mut backend, "alice");
    let b = create_user(&mut backend, "bob");
    let c = create_user(&mut backend, "carol");
    store(&mut backend, 1, a, b, false);
    store(&mut backend, 2, a, c, false);
    confirm(&mut backend, c, 2);
    drop(backend); // no finish(), no pass: as if killed
    let (mut backend, _) = open_at(&path);
    assert_eq!(
        (delivered_column(&backend, 1), delivered_column(&backend, 2)),
        (0, 2)
    );
    assert_eq!(queue_of(&mut backend, b, "b"), vec![1]);
    assert_eq!(queue_of(&mut backend, c, "c"), Vec::<i64>::new());
}
