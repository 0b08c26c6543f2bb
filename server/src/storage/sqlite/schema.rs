//! The SQLite schema, versioned with `PRAGMA user_version`.
//!
//! Tables follow the original system (users, contacts, messages, sessions,
//! groups) with what delivery tracking needs added. Times are Unix seconds as
//! integers (the protocol's unit) rather than the original's text timestamps.
//!
//! Every index on `messages` costs the single writer on every message, and
//! the per-user ones cost most: with 100 active users an insert lands on one
//! of 100 leaf pages per index, so each commit rewrites ~200 index pages
//! however few rows it holds (measured: 20 µs per message at 1,000 rows per
//! commit, 60 µs at 100). So the two per-user indexes of 1:1 messages (by
//! sender and by receiver, for History and Sync) are tables of their own,
//! `sent` and `received`, written behind the messages in passes (version 6;
//! before it, partial indexes on an `indexed` flag): a message is inserted
//! touching only the table's right edge, and each index page is later
//! written once per many rows. Queries read the indexed part through them
//! and the short unindexed tail by `message_id` range (`indexes.rs`). The third
//! index, of the undelivered (the offline queue), is partial on
//! `delivered = 0`, and it too is written behind (version 7): a 1:1 message
//! nobody has taken is stored as `delivered = 2`, *pending*, outside the
//! index; the index pass that covers its receiver moves it into the index
//! (`delivered = 0`) only if it is still untaken then, past the receiver's
//! `taken_through`. Messages a receipts device confirmed within the pass's
//! lag (the common case) never enter it, and the queue reads the pending
//! ones of the unindexed tail by id range. `delivered`: 0 queued, 1 taken by
//! a connection without receipts, 2 pending (taken only if at or below
//! `taken_through`).

use rusqlite::Connection;

/// The version this code writes; older databases are migrated step by step.
pub const SCHEMA_VERSION: i64 = 7;

const VERSION_1: &str = "
CREATE TABLE users (
    user_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT UNIQUE NOT NULL,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,          -- PHC string: $pbkdf2-sha256$i=N$salt$hash
    salt          TEXT NOT NULL,          -- the salt alone, as the original kept it
    public_key    TEXT,
    created_at    INTEGER NOT NULL,
    is_online     BOOLEAN NOT NULL DEFAULT FALSE,
    last_activity INTEGER,
    ip_address    TEXT,
    port          INTEGER
);

CREATE TABLE contacts (
    owner_id   INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    contact_id INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (owner_id, contact_id)
) WITHOUT ROWID;
CREATE INDEX contacts_by_contact ON contacts(contact_id, owner_id);

CREATE TABLE groups (
    group_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    creator_id INTEGER NOT NULL REFERENCES users(user_id),
    created_at INTEGER NOT NULL
);

CREATE TABLE messages (
    message_id   INTEGER PRIMARY KEY,     -- assigned by the event loop, increasing
    sender_id    INTEGER NOT NULL REFERENCES users(user_id),
    receiver_id  INTEGER REFERENCES users(user_id),
    group_id     INTEGER REFERENCES groups(group_id),
    message_type TEXT NOT NULL DEFAULT 'text',
    content      TEXT NOT NULL,
    is_encrypted BOOLEAN NOT NULL DEFAULT FALSE,
    timestamp    INTEGER NOT NULL,
    delivered    BOOLEAN NOT NULL DEFAULT FALSE, -- pushed to a live connection (version 7: 0, 1 or 2)
    indexed      BOOLEAN NOT NULL DEFAULT FALSE  -- in the per-user indexes yet
);
CREATE INDEX messages_by_sender   ON messages(sender_id, message_id)   WHERE indexed = 1;
CREATE INDEX messages_by_receiver ON messages(receiver_id, message_id) WHERE indexed = 1;
CREATE INDEX messages_undelivered ON messages(receiver_id, message_id) WHERE delivered = 0;

CREATE TABLE sessions (
    session_hash TEXT PRIMARY KEY,        -- SHA-256 of the session id; the id is never stored
    user_id      INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    ip_address   TEXT
) WITHOUT ROWID;
CREATE INDEX sessions_by_last_used ON sessions(last_used_at);

-- Facts about the server process itself: `running` is 1 from start until a
-- clean shutdown, so the next start knows whether the previous one crashed.
CREATE TABLE server_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 2: group membership, with each member's delivery cursor.
const VERSION_2: &str = "
CREATE TABLE group_members (
    group_id          INTEGER NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
    user_id           INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    joined_at         INTEGER NOT NULL,
    -- Group messages up to this id were pushed to (or predate) the member;
    -- later ones are its offline queue.
    delivered_through INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_by_user ON group_members(user_id, group_id);
CREATE INDEX messages_by_group ON messages(group_id, message_id) WHERE group_id IS NOT NULL;
";

/// Version 3 (protocol 1.1): each session (= device) keeps the highest
/// message id it confirmed holding everything up to (a resumed receipts
/// session is pushed everything addressed to the user past it); client
/// message ids are remembered for idempotent sends.
const VERSION_3: &str = "
ALTER TABLE sessions ADD COLUMN confirmed_through INTEGER NOT NULL DEFAULT 0;

-- The highest message id when the member joined: a resumed receipts session
-- is never pushed the group's messages from before that.
ALTER TABLE group_members ADD COLUMN joined_through INTEGER NOT NULL DEFAULT 0;

-- Idempotent sends: each sender's client message ids of the last 24 hours,
-- so a resend is answered with the first message's id and stored once.
CREATE TABLE client_ids (
    sender_id         INTEGER NOT NULL,
    client_message_id TEXT NOT NULL,
    message_id        INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (sender_id, client_message_id)
) WITHOUT ROWID;
";

/// Version 4: the client's message id lives in the message's row (read
/// back into memory at start, `client_ids.rs`) instead of a second B-tree
/// written for every message; the ids already remembered move there.
const VERSION_4: &str = "
ALTER TABLE messages ADD COLUMN client_message_id TEXT;
CREATE INDEX client_ids_by_message ON client_ids(message_id);
UPDATE messages SET client_message_id =
    (SELECT c.client_message_id FROM client_ids c WHERE c.message_id = messages.message_id)
WHERE message_id IN (SELECT message_id FROM client_ids);
DROP TABLE client_ids;
";

/// Version 5: a user's sessions are listed (GetSessions), so they are
/// found by user rather than by a scan of every session.
const VERSION_5: &str = "
CREATE INDEX sessions_by_user ON sessions(user_id, created_at);
";

/// Version 6: what receipts devices confirmed leaves the offline queue by a
/// per-user mark, not by flipping `delivered` on every row it covers. A
/// confirmation covers the user's messages of the last half second, which
/// lie on as many table pages as there were active users: flipping them
/// rewrote every one of those pages (a batch of ten confirmations took 5–9
/// ms at 10,000 messages/s, and every Ack behind it waited). The queue a
/// device without receipts is pushed is now the 1:1 messages past
/// `taken_through` that are not `delivered`.
///
/// And the per-user indexes of 1:1 messages become tables of their own,
/// written in slices of users (`indexes.rs`): a pass used to flip `indexed`
/// on a range of rows, which rewrote every index page of every active user
/// in one transaction (up to 17 ms with the writer stalled). The start after
/// this migration fills them (`Indexes::open`).
const VERSION_6: &str = "
ALTER TABLE users ADD COLUMN taken_through INTEGER NOT NULL DEFAULT 0;

CREATE TABLE received (
    receiver_id INTEGER NOT NULL,
    message_id  INTEGER NOT NULL,
    sender_id   INTEGER NOT NULL,
    PRIMARY KEY (receiver_id, message_id)
) WITHOUT ROWID;
CREATE TABLE sent (
    sender_id   INTEGER NOT NULL,
    message_id  INTEGER NOT NULL,
    receiver_id INTEGER NOT NULL,
    PRIMARY KEY (sender_id, message_id)
) WITHOUT ROWID;
-- Each slice of users is indexed through here (`indexes.rs`).
CREATE TABLE index_slices (
    slice           INTEGER PRIMARY KEY,
    indexed_through INTEGER NOT NULL
);
DROP INDEX messages_by_sender;
DROP INDEX messages_by_receiver;
ALTER TABLE messages DROP COLUMN indexed;
";

/// Version 7: the undelivered index is written behind, like the others
/// (module docs). A 1:1 message for a receipts device used to enter it at
/// every insert and never leave (a confirmation moves `taken_through`, it
/// does not touch rows): one more B-tree insert per message, measured at
/// −15 % of closed-loop throughput with receipts. Rows already taken by the
/// mark leave it now; group messages (never read through it) too.
const VERSION_7: &str = "
UPDATE messages SET delivered = 2
WHERE delivered = 0 AND receiver_id IS NOT NULL
  AND message_id <= (SELECT taken_through FROM users WHERE user_id = receiver_id);
UPDATE messages SET delivered = 2 WHERE delivered = 0 AND receiver_id IS NULL;
";

/// Each version and the step that reaches it from the one before.
pub(super) const MIGRATIONS: [(i64, &str); 7] = [
    (1, VERSION_1),
    (2, VERSION_2),
    (3, VERSION_3),
    (4, VERSION_4),
    (5, VERSION_5),
    (6, VERSION_6),
    (7, VERSION_7),
];

/// The WAL's size, in pages, at which the writer checkpoints it itself: a
/// backstop behind the checkpointer thread (`checkpoint.rs`), and so the
/// bound of the `-wal` file on disk, ~400 MiB (each page 4,096 bytes plus a
/// 24-byte frame header).
///
/// Under sustained load the checkpointer's PASSIVE checkpoints copy the
/// log but never finish it while commits keep coming, and SQLite restarts
/// the log from its start only after a checkpoint that did: at 10,000
/// messages/s the file reached this size (412,000,032 bytes) in ~15 s,
/// restarted there, and kept its size, as SQLite does. A smaller backstop
/// (8,192 pages) was tried and gave the same 10,000 msg/s tail
/// (BENCHMARKS.md's reading); truncating the file at restart
/// (`journal_size_limit`) was not tried past a measurement: freeing 400 MiB
/// took 130 ms on the test machine, on the writer.
pub const WAL_BACKSTOP_PAGES: i64 = 100_000;

/// Sets the connection's pragmas and brings the schema to [`SCHEMA_VERSION`].
pub fn prepare(conn: &mut Connection, synchronous_full: bool) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = if synchronous_full { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", synchronous)?;
    // Read it back: the durability promise rests on it (1 = NORMAL, 2 = FULL).
    let in_force: i64 = conn.pragma_query_value(None, "synchronous", |row| row.get(0))?;
    if in_force != if synchronous_full { 2 } else { 1 } {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "PRAGMA synchronous is {in_force}, not {synchronous}"
        )));
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    // Query-planner stability: without it this SQLite marks statements whose
    // plan looked at a bound value (LIMIT ?, constant propagation through
    // joins) to be re-prepared on every new binding, which re-parsed the
    // login queries on every execution. Our queries have one good plan each.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // 64 MiB of page cache (the default is 2 MiB). Checkpoints are the
    // checkpointer thread's job (see `checkpoint.rs`); the writer's own
    // automatic checkpoint is only a backstop at ~400 MiB of WAL.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {version} is newer than this server ({SCHEMA_VERSION})"
        )));
    }
    for (target, migration) in MIGRATIONS {
        if version < target {
            let tx = conn.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", target)?;
            tx.commit()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_created_once_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        for _ in 0..2 {
            let mut conn = Connection::open(&path).unwrap();
            prepare(&mut conn, false).unwrap();
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |row| row.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
        }
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(
            prepare(&mut conn, false).is_err(),
            "a newer schema is refused"
        );
    }

    #[test]
    fn the_write_ahead_log_is_bounded_by_the_backstop() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("chat.db")).unwrap();
        prepare(&mut conn, false).unwrap();
        let pages: i64 = conn
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .unwrap();
        assert_eq!(pages, WAL_BACKSTOP_PAGES);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
