//! The SQLite backend: the one write connection to `<data-dir>/chat.db`.
//!
//! A batch runs in one transaction. If any command in it fails (disk full,
//! read-only file), the transaction is rolled back and each command is retried
//! in a transaction of its own, so one failure costs only its own command;
//! whatever still fails is answered with [`Reply::Failed`] and never acked.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::checkpoint::Checkpointer;
use super::schema;
use super::{
    Backend, Command, ContactRow, Conversation, GroupRow, GroupsTaken, NewMessage, Reply, Snapshot,
    StoredMessage,
};
use crate::config::{
    MESSAGE_ID_BLOCK, QUEUE_PAGE_BYTES, READ_PAGE_BYTES, STORAGE_BATCH_MAX, STORAGE_QUEUE_MAX,
};
use crate::json_files::Mirror;

/// Offline-queue messages taken per storage round trip at login. The whole
/// queue is pushed, chunk by chunk, so one reply (and one write into the
/// connection's buffer) stays bounded; the round trips give the socket time
/// to drain between chunks.
pub const OFFLINE_CHUNK: u32 = 500;

/// Unindexed messages that trigger an index pass right after a batch.
const INDEX_TAIL_MAX: i64 = 8_192;
/// Rows one index pass moves into the indexes: a pass is one transaction on
/// the storage thread, so a batch arriving meanwhile waits for it; this
/// keeps that wait around a millisecond.
const INDEX_PASS_ROWS: i64 = 1_024;
/// How long a small unindexed tail may wait for an idle moment's pass.
const INDEX_DELAY: Duration = Duration::from_secs(1);

/// Why the database could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// SQLite refused (unreadable file, newer schema, disk error): fix the
    /// data directory and start again.
    Database(rusqlite::Error),
    /// The checkpoint thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Database(error) => write!(f, "{error}"),
            OpenError::Thread(error) => write!(f, "cannot start the checkpoint thread: {error}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<rusqlite::Error> for OpenError {
    fn from(error: rusqlite::Error) -> Self {
        OpenError::Database(error)
    }
}

/// The database, its prepared-statement cache, and the deferred-index
/// watermark (see `schema.rs`).
pub struct SqliteBackend {
    conn: Connection,
    /// Every message with an id up to this is in the per-user indexes; every
    /// stored message above it is not (ids are inserted in increasing order).
    indexed_through: i64,
    /// The highest message id stored.
    highest_stored: i64,
    /// When the last index pass ran.
    last_index_pass: Instant,
    /// Copies the WAL back into the database without stalling commits.
    _checkpointer: Checkpointer,
    /// Keeps `users.json`/`contacts.json` current (`--json-mirror`).
    mirror: Option<Mirror>,
}

impl SqliteBackend {
    /// Opens (creating with mode 0600 if needed) the database, migrates it,
    /// marks every user offline (nobody is connected to a starting server) and
    /// reads what the loop needs.
    pub fn open(path: &Path, synchronous_full: bool) -> Result<(Self, Snapshot), OpenError> {
        create_private_file(path);
        let mut conn = Connection::open(path)?;
        schema::prepare(&mut conn, synchronous_full)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute("UPDATE users SET is_online = FALSE WHERE is_online", [])?;
        conn.execute("UPDATE messages SET indexed = 1 WHERE indexed = 0", [])?;
        let mut snapshot = read_snapshot(&conn)?;
        let highest_stored = highest_stored_id(&conn)?;
        snapshot.ids_reserved_through = snapshot.next_message_id + MESSAGE_ID_BLOCK - 1;
        let tx = conn.transaction()?;
        reserve_ids(&tx, snapshot.ids_reserved_through)?;
        tx.execute(
            "INSERT OR REPLACE INTO server_state (key, value) VALUES ('running', 1)",
            [],
        )?;
        tx.commit()?;
        let checkpointer = Checkpointer::start(path).map_err(OpenError::Thread)?;
        let backend = SqliteBackend {
            conn,
            indexed_through: highest_stored,
            highest_stored,
            last_index_pass: Instant::now(),
            _checkpointer: checkpointer,
            mirror: None,
        };
        Ok((backend, snapshot))
    }

    /// Keeps the original system's JSON files in `dir` current: written
    /// when idle, at most once per second, after accounts or contacts change.
    pub fn with_json_mirror(mut self, dir: PathBuf) -> Self {
        self.mirror = Some(Mirror::new(dir));
        self
    }

    fn execute_in_transaction(&mut self, batch: &[Command]) -> rusqlite::Result<Vec<Reply>> {
        let tx = self.conn.transaction()?;
        let mut replies = Vec::with_capacity(batch.len());
        let mut tail = UnindexedTail::default();
        for command in batch {
            if let Some(reply) = apply(&tx, command, self.indexed_through, &mut tail)? {
                replies.push(reply);
            }
        }
        tx.commit()?;
        let stored = batch.iter().filter_map(|command| match command {
            Command::StoreMessage { message, .. } => Some(message.message_id),
            _ => None,
        });
        self.highest_stored = stored.fold(self.highest_stored, i64::max);
        Ok(replies)
    }

    /// Moves every stored message into the per-user indexes, in one
    /// transaction. Queries stay correct whether or not this has run.
    fn index_tail(&mut self) {
        let from = self.indexed_through;
        // A small pass, unless the tail has outgrown its bound: then enough
        // to bring it back under.
        let rows =
            INDEX_PASS_ROWS.max(self.highest_stored - from - INDEX_TAIL_MAX + INDEX_PASS_ROWS);
        let to = self.highest_stored.min(from + rows);
        self.last_index_pass = Instant::now();
        if to <= from {
            return;
        }
        let indexed = self.conn.transaction().and_then(|tx| {
            tx.prepare_cached(
                "UPDATE messages SET indexed = 1 WHERE message_id > ?1 AND message_id <= ?2",
            )?
            .execute(params![from, to])?;
            tx.commit()
        });
        match indexed {
            Ok(()) => self.indexed_through = to,
            Err(error) => log::error!("storage: index pass failed (will retry): {error}"),
        }
    }
}

impl Backend for SqliteBackend {
    fn idle(&mut self) {
        if let Some(mirror) = &mut self.mirror {
            mirror.idle(&self.conn);
        }
        if self.highest_stored > self.indexed_through
            && self.last_index_pass.elapsed() >= INDEX_DELAY
        {
            self.index_tail();
        }
    }

    fn finish(&mut self) {
        self.index_tail();
        if let Some(mirror) = &mut self.mirror {
            mirror.flush(&self.conn);
        }
        let marked = self.conn.execute(
            "UPDATE server_state SET value = 0 WHERE key = 'running'",
            [],
        );
        if let Err(error) = marked {
            log::error!("storage: cannot record the clean shutdown: {error}");
        }
    }

    fn execute(&mut self, batch: Vec<Command>) -> Vec<Reply> {
        if let Some(mirror) = &mut self.mirror {
            if batch.iter().any(changes_mirrored_files) {
                mirror.mark_dirty();
            }
        }
        let mut replies = self.execute_batch(&batch);
        super::hand_back_stored(batch, &mut replies);
        replies
    }

    fn after_replies(&mut self) {
        // Past the tail bound, index now — but only after the replies went
        // out, so no Ack or delivery waits for the pass.
        if self.highest_stored - self.indexed_through >= INDEX_TAIL_MAX {
            self.index_tail();
        }
    }
}

impl SqliteBackend {
    fn execute_batch(&mut self, batch: &[Command]) -> Vec<Reply> {
        match self.execute_in_transaction(batch) {
            Ok(replies) => replies,
            Err(error) => {
                log::error!(
                    "storage: batch of {} failed ({error}); retrying one by one",
                    batch.len()
                );
                batch
                    .iter()
                    .flat_map(|command| self.execute_alone(command))
                    .collect()
            }
        }
    }
}

impl SqliteBackend {
    fn execute_alone(&mut self, command: &Command) -> Option<Reply> {
        match self.execute_in_transaction(std::slice::from_ref(command)) {
            Ok(mut replies) => replies.pop(),
            Err(error) => {
                log::error!("storage: command failed: {error}");
                if let Command::ReserveIds { .. } = command {
                    return Some(Reply::IdsReserved { through: None });
                }
                let message_id = match command {
                    Command::StoreMessage { message, .. } => Some(message.message_id),
                    _ => None,
                };
                command.requester().map(|(to, tag)| Reply::Failed {
                    requester: (to.clone(), tag),
                    message_id,
                    reason: error.to_string(),
                })
            }
        }
    }
}

/// Whether a command changes what `users.json`/`contacts.json` hold.
fn changes_mirrored_files(command: &Command) -> bool {
    matches!(
        command,
        Command::CreateUser { .. }
            | Command::AddContact { .. }
            | Command::RemoveContact { .. }
            | Command::SetKey { .. }
            | Command::OpenSession { .. }
            | Command::ResumeSession { .. }
            | Command::ConnectionLost { last: true, .. }
    )
}

/// Creates the database file with mode 0600 before SQLite opens it, so the
/// hashes and messages are never readable by other local users.
fn create_private_file(path: &Path) {
    let _ = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path);
}

fn read_snapshot(conn: &Connection) -> rusqlite::Result<Snapshot> {
    let mut statement = conn.prepare("SELECT username, user_id FROM users")?;
    let users = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, i64)>>>()?;
    let recovered_from_crash = server_state(conn, "running")? == Some(1);
    let next_message_id = first_unreserved_id(conn, recovered_from_crash)?;
    let group_ids: Vec<i64> = conn
        .prepare("SELECT group_id FROM groups ORDER BY group_id")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let groups = group_ids
        .into_iter()
        .filter_map(|id| group_row(conn, id).transpose())
        .collect::<rusqlite::Result<Vec<GroupRow>>>()?;
    Ok(Snapshot {
        users,
        next_message_id,
        ids_reserved_through: next_message_id - 1,
        groups,
        recovered_from_crash,
    })
}

/// One value of `server_state`, if set.
fn server_state(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT value FROM server_state WHERE key = ?1",
        [key],
        |row| row.get(0),
    )
    .optional()
}

/// The highest message id stored (0 for none).
fn highest_stored_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(message_id), 0) FROM messages",
        [],
        |row| row.get(0),
    )
}

/// The first id no earlier run can have handed out: past the last reserved
/// block. A database from before reservations has none; then past the
/// highest stored id, and past every id that could have been in flight if
/// that run crashed.
fn first_unreserved_id(conn: &Connection, recovered_from_crash: bool) -> rusqlite::Result<i64> {
    let highest_stored = highest_stored_id(conn)?;
    let reserved = match server_state(conn, IDS_RESERVED_KEY)? {
        Some(reserved) => reserved,
        None if recovered_from_crash => {
            highest_stored + (STORAGE_QUEUE_MAX + STORAGE_BATCH_MAX) as i64
        }
        None => highest_stored,
    };
    Ok(reserved.max(highest_stored) + 1)
}

/// The `server_state` key of the highest reserved message id.
const IDS_RESERVED_KEY: &str = "ids_reserved_through";

/// Records that ids up to `through` may be handed out (never lowers it).
fn reserve_ids(tx: &Transaction, through: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO server_state (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
    )?
    .execute(params![IDS_RESERVED_KEY, through])?;
    Ok(())
}

/// Executes one command inside the batch's transaction; `indexed_through` is
/// the deferred-index watermark.
fn apply(
    tx: &Transaction,
    command: &Command,
    indexed_through: i64,
    tail: &mut UnindexedTail,
) -> rusqlite::Result<Option<Reply>> {
    if let Command::StoreMessage { .. } = command {
        tail.forget();
    }
    let reply = match command {
        Command::CreateUser {
            to,
            username,
            email,
            hash,
            now,
        } => {
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO users (username, email, password_hash, salt, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![username, email, hash.phc, hash.salt, now])?;
            Reply::UserCreated {
                to: to.clone(),
                username: username.clone(),
                user_id: (inserted == 1).then(|| tx.last_insert_rowid()),
            }
        }
        Command::FetchCredentials { to, username } => {
            let found = tx
                .prepare_cached("SELECT user_id, password_hash FROM users WHERE username = ?1")?
                .query_row([username], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Reply::Credentials {
                to: to.clone(),
                found,
            }
        }
        Command::OpenSession {
            to,
            user_id,
            session_hash,
            peer,
            queue_before,
            include_groups,
            now,
        } => {
            tx.prepare_cached(
                "INSERT INTO sessions (session_hash, user_id, created_at, last_used_at, ip_address)
                 VALUES (?1, ?2, ?3, ?3, ?4)",
            )?
            .execute(params![session_hash, user_id, now, peer.ip().to_string()])?;
            let queue = QueueTake {
                user_id: *user_id,
                queue_before: *queue_before,
                after: 0,
                since: None,
                include_groups: *include_groups,
                indexed_through,
            };
            let session = Confirmation::StartNew(session_hash);
            session_opened(tx, to.clone(), queue, *peer, *now, session)?
        }
        Command::ResumeSession {
            to,
            user_id,
            session_hash,
            receipts,
            peer,
            queue_before,
            include_groups,
            now,
        } => {
            let idle_before = now - crate::config::SESSION_IDLE_SECS;
            let touched = tx
                .prepare_cached(
                    "UPDATE sessions SET last_used_at = ?3
                     WHERE session_hash = ?1 AND user_id = ?2 AND last_used_at > ?4",
                )?
                .execute(params![session_hash, user_id, now, idle_before])?;
            if touched == 1 {
                let confirmed = confirmed_through(tx, session_hash)?;
                let queue = QueueTake {
                    user_id: *user_id,
                    queue_before: *queue_before,
                    after: 0,
                    since: receipts.then_some(confirmed),
                    include_groups: *include_groups,
                    indexed_through,
                };
                let session = Confirmation::Existing(confirmed);
                session_opened(tx, to.clone(), queue, *peer, *now, session)?
            } else {
                Reply::SessionInvalid { to: to.clone() }
            }
        }
        Command::TakeQueue {
            to,
            user_id,
            queue_before,
            after,
            since,
            include_groups,
        } => {
            let queue = QueueTake {
                user_id: *user_id,
                queue_before: *queue_before,
                after: *after,
                since: *since,
                include_groups: *include_groups,
                indexed_through,
            };
            let (queued, more_queued) = take_queue(tx, queue)?;
            Reply::QueueChunk {
                to: to.clone(),
                queued,
                more_queued,
            }
        }
        Command::EndSession { to, session_hash } => {
            tx.prepare_cached("DELETE FROM sessions WHERE session_hash = ?1")?
                .execute([session_hash])?;
            Reply::SessionEnded { to: to.clone() }
        }
        Command::ConnectionLost {
            user_id,
            username,
            session_hash,
            last,
            groups_taken,
            now,
        } => {
            tx.prepare_cached("UPDATE sessions SET last_used_at = ?2 WHERE session_hash = ?1")?
                .execute(params![session_hash, now])?;
            if let Some(taken) = groups_taken {
                advance_group_cursors(tx, *user_id, *taken)?;
            }
            if !*last {
                return Ok(None);
            }
            tx.prepare_cached(
                "UPDATE users SET is_online = FALSE, last_activity = ?2 WHERE user_id = ?1",
            )?
            .execute(params![user_id, now])?;
            Reply::WentOffline {
                user_id: *user_id,
                username: username.clone(),
                mutual_contacts: mutual_contacts(tx, *user_id)?,
            }
        }
        Command::StoreMessage {
            to,
            client_message_id,
            message,
        } => {
            let duplicate_of = match client_message_id {
                Some(client_id) => remember_client_id(tx, message, client_id)?,
                None => None,
            };
            if duplicate_of.is_none() {
                insert_message(tx, message)?;
            }
            Reply::MessageStored {
                to: to.clone(),
                message_id: message.message_id,
                client_message_id: client_message_id.clone(),
                duplicate_of,
                stored: None,
            }
        }
        Command::MarkDelivered {
            user_id,
            message_ids,
        } => {
            let mut statement = tx.prepare_cached(
                "UPDATE messages SET delivered = TRUE WHERE message_id = ?1 AND receiver_id = ?2",
            )?;
            for id in message_ids {
                statement.execute(params![id, user_id])?;
            }
            return Ok(None);
        }
        Command::CreateGroup {
            to,
            name,
            member_ids,
            through,
            now,
        } => {
            let creator = member_ids.first().copied().unwrap_or_default();
            tx.prepare_cached(
                "INSERT INTO groups (name, creator_id, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, creator, now])?;
            let group_id = tx.last_insert_rowid();
            add_members(tx, group_id, member_ids, *through, *now)?;
            group_changed(tx, to.clone(), group_id)?
        }
        Command::AddGroupMembers {
            to,
            group_id,
            member_ids,
            through,
            now,
        } => {
            add_members(tx, *group_id, member_ids, *through, *now)?;
            group_changed(tx, to.clone(), *group_id)?
        }
        Command::LeaveGroup {
            to,
            user_id,
            group_id,
        } => {
            tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
                .execute(params![group_id, user_id])?;
            let remaining = group_row(tx, *group_id)?.filter(|group| !group.members.is_empty());
            if remaining.is_none() {
                // The last member left: the group and its messages go.
                tx.prepare_cached("DELETE FROM messages WHERE group_id = ?1")?
                    .execute([group_id])?;
                tx.prepare_cached("DELETE FROM groups WHERE group_id = ?1")?
                    .execute([group_id])?;
            }
            Reply::GroupLeft {
                to: to.clone(),
                user_id: *user_id,
                group_id: *group_id,
                remaining,
            }
        }
        Command::Requeue {
            user_id,
            from_message_id,
        } => {
            tx.prepare_cached(
                "UPDATE messages SET delivered = FALSE
                 WHERE message_id >= ?2 AND receiver_id = ?1 AND delivered",
            )?
            .execute(params![user_id, from_message_id])?;
            return Ok(None);
        }
        Command::History {
            to,
            user_id,
            with,
            chat_id,
            before,
            limit,
        } => {
            let (messages, has_more) = match with {
                Conversation::Peer(peer_id) => {
                    let pair = (*user_id, *peer_id);
                    history(tx, pair, *before, *limit, indexed_through)?
                }
                Conversation::Group(group_id) => group_history(tx, *group_id, *before, *limit)?,
            };
            Reply::History {
                to: to.clone(),
                chat_id: chat_id.clone(),
                messages,
                has_more,
            }
        }
        Command::Sync {
            to,
            user_id,
            since,
            limit,
        } => {
            let (messages, has_more) = sync(tx, *user_id, *since, *limit, indexed_through)?;
            Reply::Synced {
                to: to.clone(),
                messages,
                has_more,
            }
        }
        Command::AddContact {
            to,
            owner_id,
            owner_name,
            contact_id,
            now,
        } => {
            let added = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO contacts (owner_id, contact_id, created_at)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![owner_id, contact_id, now])?
                == 1;
            let mutual = tx
                .prepare_cached(
                    "SELECT EXISTS(SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2)",
                )?
                .query_row(params![contact_id, owner_id], |row| row.get(0))?;
            Reply::ContactAdded {
                to: to.clone(),
                contacts: contacts(tx, *owner_id)?,
                added,
                mutual,
                contact_id: *contact_id,
                owner_name: owner_name.clone(),
            }
        }
        Command::RemoveContact {
            to,
            owner_id,
            contact_id,
        } => {
            tx.prepare_cached("DELETE FROM contacts WHERE owner_id = ?1 AND contact_id = ?2")?
                .execute(params![owner_id, contact_id])?;
            Reply::Directory {
                to: to.clone(),
                contacts: contacts(tx, *owner_id)?,
            }
        }
        Command::Directory { to, owner_id } => Reply::Directory {
            to: to.clone(),
            contacts: contacts(tx, *owner_id)?,
        },
        Command::SetKey {
            to,
            user_id,
            username,
            public_key,
        } => {
            tx.prepare_cached("UPDATE users SET public_key = ?2 WHERE user_id = ?1")?
                .execute(params![user_id, public_key])?;
            Reply::Key {
                to: to.clone(),
                username: username.clone(),
                public_key: Some(public_key.clone()),
            }
        }
        Command::GetKey {
            to,
            user_id,
            username,
        } => {
            let public_key = tx
                .prepare_cached("SELECT public_key FROM users WHERE user_id = ?1")?
                .query_row([user_id], |row| row.get(0))
                .optional()?
                .flatten();
            Reply::Key {
                to: to.clone(),
                username: username.clone(),
                public_key,
            }
        }
        Command::Confirm {
            user_id,
            username,
            session_hash,
            through,
        } => {
            let previous = confirmed_through(tx, session_hash)?;
            set_confirmed(tx, session_hash, *through)?;
            let rows = tail.rows(tx, indexed_through)?;
            let senders = confirm(tx, *user_id, (previous, *through), indexed_through, rows)?;
            Reply::Confirmed {
                user_id: *user_id,
                username: username.clone(),
                senders,
            }
        }
        Command::ReserveIds { through } => {
            reserve_ids(tx, *through)?;
            Reply::IdsReserved {
                through: Some(*through),
            }
        }
        Command::PurgeSessions { idle_before } => {
            let purged = tx
                .prepare_cached("DELETE FROM sessions WHERE last_used_at <= ?1")?
                .execute([idle_before])?;
            let now = idle_before + crate::config::SESSION_IDLE_SECS;
            tx.prepare_cached("DELETE FROM client_ids WHERE created_at <= ?1")?
                .execute([now - crate::config::CLIENT_ID_RETENTION_SECS])?;
            if purged > 0 {
                log::info!("expired {purged} sessions unused for 7 days");
            }
            return Ok(None);
        }
    };
    Ok(Some(reply))
}

/// Records that the sender used `client_id` for this message; if they used
/// it before (within the retention window), returns that message's id.
fn remember_client_id(
    tx: &Transaction,
    message: &NewMessage,
    client_id: &str,
) -> rusqlite::Result<Option<i64>> {
    // One statement for a new id (the common case); a conflict writes
    // nothing, so a resend is answered even when the disk is full.
    let inserted = tx
        .prepare_cached(
            "INSERT INTO client_ids (sender_id, client_message_id, message_id, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            message.sender_id,
            client_id,
            message.message_id,
            message.time
        ])?;
    if inserted == 1 {
        return Ok(None);
    }
    tx.prepare_cached(
        "SELECT message_id FROM client_ids WHERE sender_id = ?1 AND client_message_id = ?2",
    )?
    .query_row(params![message.sender_id, client_id], |row| row.get(0))
    .optional()
}

fn insert_message(tx: &Transaction, message: &NewMessage) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO messages
             (message_id, sender_id, receiver_id, group_id, content, is_encrypted, timestamp,
              delivered)
         VALUES (?1, ?2, ?3, ?8, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        message.message_id,
        message.sender_id,
        message.receiver_id,
        message.content,
        message.is_encrypted,
        message.time,
        message.delivered,
        message.group_id,
    ])?;
    Ok(())
}

/// Whose offline queue to take, and how much of it.
#[derive(Clone, Copy)]
struct QueueTake {
    user_id: i64,
    queue_before: i64,
    /// Only ids above this one (the previous chunk's last).
    after: i64,
    /// A receipts session's confirmation: take everything addressed to the
    /// user past it instead of the offline queue.
    since: Option<i64>,
    include_groups: bool,
    /// The deferred-index watermark (see `schema.rs`).
    indexed_through: i64,
}

/// Marks the user online, records the peer, and takes the first chunk of
/// the offline queue.
fn session_opened(
    tx: &Transaction,
    to: crate::completion::Requester,
    queue: QueueTake,
    peer: std::net::SocketAddr,
    now: i64,
    session: Confirmation,
) -> rusqlite::Result<Reply> {
    tx.prepare_cached(
        "UPDATE users SET is_online = TRUE, last_activity = ?2, ip_address = ?3, port = ?4
         WHERE user_id = ?1",
    )?
    .execute(params![
        queue.user_id,
        now,
        peer.ip().to_string(),
        peer.port()
    ])?;
    let (queued, more_queued) = take_queue(tx, queue)?;
    let confirmed_through = match session {
        Confirmation::Existing(confirmed) => confirmed,
        Confirmation::StartNew(session_hash) => {
            // Just below the first message pushed to it: its queue, else the
            // next live one.
            let first = queued.first().map_or(queue.queue_before, |m| m.message_id);
            set_confirmed(tx, session_hash, first - 1)?;
            first - 1
        }
    };
    Ok(Reply::SessionOpened {
        to,
        queued,
        more_queued,
        mutual_contacts: mutual_contacts(tx, queue.user_id)?,
        confirmed_through,
    })
}

/// Where an opened session's confirmation stands.
enum Confirmation<'a> {
    /// A resumed session's, as stored.
    Existing(i64),
    /// A new session (this hash): set just below the first message pushed.
    StartNew(&'a str),
}

/// A session's confirmation (0 for an unknown session).
fn confirmed_through(tx: &Transaction, session_hash: &str) -> rusqlite::Result<i64> {
    let confirmed = tx
        .prepare_cached("SELECT confirmed_through FROM sessions WHERE session_hash = ?1")?
        .query_row([session_hash], |row| row.get(0))
        .optional()?;
    Ok(confirmed.unwrap_or(0))
}

/// Raises a session's confirmation to `through` (never lowers it).
fn set_confirmed(tx: &Transaction, session_hash: &str, through: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE sessions SET confirmed_through = MAX(confirmed_through, ?2)
         WHERE session_hash = ?1",
    )?
    .execute(params![session_hash, through])?;
    Ok(())
}

/// The 1:1 messages past the deferred-index watermark, `(receiver, sender,
/// id)`, read once per batch for all its confirmations (the tick sends them
/// together) rather than scanned again for each.
#[derive(Default)]
struct UnindexedTail {
    rows: Option<Vec<(i64, i64, i64)>>,
}

impl UnindexedTail {
    fn rows(
        &mut self,
        tx: &Transaction,
        indexed_through: i64,
    ) -> rusqlite::Result<&[(i64, i64, i64)]> {
        if self.rows.is_none() {
            let rows = tx
                .prepare_cached(
                    "SELECT receiver_id, sender_id, message_id FROM messages
                     WHERE message_id > ?1 AND receiver_id IS NOT NULL",
                )?
                .query_map([indexed_through], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            self.rows = Some(rows);
        }
        Ok(self.rows.as_deref().unwrap_or_default())
    }

    /// A message was stored: read the tail again when next asked.
    fn forget(&mut self) {
        self.rows = None;
    }
}

/// A device of `user_id` now holds everything up to `range.1` (it held
/// everything up to `range.0` before): the 1:1 messages no device had taken
/// are taken now, the group cursors move up to `range.1`, and the senders of
/// the 1:1 messages in the range are returned, each with its highest id, for
/// the Delivered receipts (whether or not another device had taken them):
/// from the per-receiver index, and from `tail` past the index watermark.
fn confirm(
    tx: &Transaction,
    user_id: i64,
    (previous, through): (i64, i64),
    indexed_through: i64,
    tail: &[(i64, i64, i64)],
) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut senders: std::collections::HashMap<i64, i64> = tx
        .prepare_cached(
            "SELECT sender_id, MAX(message_id) FROM messages
             WHERE indexed = 1 AND receiver_id = ?1 AND message_id > ?2 AND message_id <= ?3
             GROUP BY sender_id",
        )?
        .query_map(params![user_id, previous, through], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let lower = previous.max(indexed_through);
    for &(receiver, sender, id) in tail {
        if receiver == user_id && id > lower && id <= through {
            let highest = senders.entry(sender).or_insert(id);
            *highest = (*highest).max(id);
        }
    }
    tx.prepare_cached(
        "UPDATE messages SET delivered = TRUE
         WHERE receiver_id = ?1 AND delivered = 0 AND message_id <= ?2",
    )?
    .execute(params![user_id, through])?;
    tx.prepare_cached(
        "UPDATE group_members SET delivered_through = MAX(delivered_through, ?2)
         WHERE user_id = ?1",
    )?
    .execute(params![user_id, through])?;
    Ok(senders.into_iter().collect())
}

/// Takes the next chunk of the user's offline queue below `queue_before`:
/// 1:1 messages not delivered (now marked delivered) and, with
/// `include_groups`, messages of the user's groups past the member's cursor
/// (the cursor moves past what is taken), oldest first. A chunk holds at most
/// [`OFFLINE_CHUNK`] messages and about [`QUEUE_PAGE_BYTES`] of content.
fn take_queue(tx: &Transaction, queue: QueueTake) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    if let Some(confirmed) = queue.since {
        return take_addressed(tx, queue, confirmed);
    }
    let QueueTake {
        user_id,
        queue_before,
        after,
        include_groups,
        ..
    } = queue;
    // Two plain index-ordered queries merged here, rather than one UNION with
    // ORDER BY: SQLite would build and sort an ephemeral table for that on
    // every login (it halved the session-resume rate). Taking marks nothing:
    // a message counts as taken once written out (`MarkDelivered`, group
    // cursors at departure), so two devices logging in at once each get the
    // whole queue, and a connection that dies mid-queue loses nothing.
    let fetch = OFFLINE_CHUNK + 1;
    let direct = read_page(
        tx,
        "SELECT message_id FROM messages
         WHERE receiver_id = ?1 AND delivered = 0 AND message_id > ?2 AND message_id < ?3
         ORDER BY message_id LIMIT ?4",
        params![user_id, after, queue_before, fetch],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )?;
    if !include_groups || !is_in_any_group(tx, user_id)? {
        return Ok(direct);
    }
    let group = read_page(
        tx,
        "SELECT m.message_id FROM group_members g
         JOIN messages m ON m.group_id = g.group_id
            AND m.message_id > MAX(g.delivered_through, ?2)
         WHERE g.user_id = ?1 AND m.message_id < ?3 AND m.sender_id != ?1
         ORDER BY m.message_id LIMIT ?4",
        params![user_id, after, queue_before, fetch],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )?;
    Ok(merge_pages(direct, group, QUEUE_PAGE))
}

/// The oldest part of two pages read from the same point (each oldest
/// first, each saying whether it left messages out) that is a page itself:
/// nothing past where either one stopped, and within `budget`.
fn merge_pages(
    (mut merged, first_more): (Vec<StoredMessage>, bool),
    (second, second_more): (Vec<StoredMessage>, bool),
    budget: PageBudget,
) -> (Vec<StoredMessage>, bool) {
    let stopped_at = |page: &[StoredMessage], more: bool| {
        more.then(|| page.last().map_or(i64::MIN, |m| m.message_id))
    };
    let bound = [
        stopped_at(&merged, first_more),
        stopped_at(&second, second_more),
    ]
    .into_iter()
    .flatten()
    .min();
    merged.extend(second);
    merged.sort_by_key(|message| message.message_id);
    if let Some(bound) = bound {
        merged.retain(|message| message.message_id <= bound);
    }
    let fits = budget.fitting(merged.iter());
    let more = bound.is_some() || merged.len() > fits;
    merged.truncate(fits);
    (merged, more)
}

/// A receipts session's queue: every message addressed to the user past
/// `confirmed` (1:1 to them, and their groups' messages from others), below
/// the login boundary, whether or not another device took it.
fn take_addressed(
    tx: &Transaction,
    queue: QueueTake,
    confirmed: i64,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    read_page(
        tx,
        "SELECT message_id FROM (
             SELECT message_id FROM messages
             WHERE indexed = 1 AND receiver_id = ?1 AND message_id > ?2 AND message_id < ?5
             ORDER BY message_id LIMIT ?3)
         UNION
         SELECT message_id FROM (
             SELECT message_id FROM messages
             WHERE message_id > MAX(?2, ?4) AND message_id < ?5 AND receiver_id = ?1
             ORDER BY message_id LIMIT ?3)
         UNION
         SELECT message_id FROM (
             SELECT m.message_id FROM group_members g
             JOIN messages m ON m.group_id = g.group_id
                AND m.message_id > MAX(?2, g.joined_through)
             WHERE g.user_id = ?1 AND m.message_id < ?5 AND m.sender_id != ?1
             ORDER BY m.message_id LIMIT ?3)
         ORDER BY message_id LIMIT ?3",
        params![
            queue.user_id,
            queue.after.max(confirmed),
            OFFLINE_CHUNK + 1,
            queue.indexed_through,
            queue.queue_before
        ],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )
}

/// Moves the user's group cursors to `taken.through` where they already
/// cover everything before `taken.from` (never backwards).
fn advance_group_cursors(
    tx: &Transaction,
    user_id: i64,
    taken: GroupsTaken,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE group_members SET delivered_through = ?3
         WHERE user_id = ?1 AND delivered_through >= ?2 - 1 AND delivered_through < ?3",
    )?
    .execute(params![user_id, taken.from, taken.through])?;
    Ok(())
}

/// Whether the user is in any group (most logins are not: skip that query).
fn is_in_any_group(tx: &Transaction, user_id: i64) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM group_members WHERE user_id = ?1)")?
        .query_row([user_id], |row| row.get(0))
}

/// Inserts members (ignoring existing ones) with their cursor at `through`.
fn add_members(
    tx: &Transaction,
    group_id: i64,
    member_ids: &[i64],
    through: i64,
    now: i64,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO group_members
             (group_id, user_id, joined_at, delivered_through, joined_through)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    for user_id in member_ids {
        insert.execute(params![group_id, user_id, now, through])?;
    }
    Ok(())
}

/// The reply for a created or grown group.
fn group_changed(
    tx: &Transaction,
    to: crate::completion::Requester,
    group_id: i64,
) -> rusqlite::Result<Reply> {
    let group = group_row(tx, group_id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Reply::GroupChanged { to, group })
}

/// A group with its members (by username), if it exists.
fn group_row(conn: &Connection, group_id: i64) -> rusqlite::Result<Option<GroupRow>> {
    let Some(name) = conn
        .prepare_cached("SELECT name FROM groups WHERE group_id = ?1")?
        .query_row([group_id], |row| row.get::<_, String>(0))
        .optional()?
    else {
        return Ok(None);
    };
    let members = conn
        .prepare_cached(
            "SELECT u.user_id, u.username FROM group_members g
             JOIN users u ON u.user_id = g.user_id
             WHERE g.group_id = ?1 ORDER BY u.username",
        )?
        .query_map([group_id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(i64, String)>>>()?;
    Ok(Some(GroupRow {
        group_id,
        name,
        members,
    }))
}

/// The newest `limit` messages of a group older than `before`, oldest first.
fn group_history(
    tx: &Transaction,
    group_id: i64,
    before: Option<i64>,
    limit: u32,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    read_page(
        tx,
        "SELECT message_id FROM messages
         WHERE group_id = ?1 AND message_id < ?2
         ORDER BY message_id DESC LIMIT ?3",
        params![group_id, before.unwrap_or(i64::MAX), limit + 1],
        PageFrom::Newest,
        PageBudget::read(limit),
    )
}

/// Which end of the selected messages a page is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PageFrom {
    /// Oldest first (Sync, the offline queue).
    Oldest,
    /// Newest first (History, which pages backwards).
    Newest,
}

/// How much one page may hold: at most `messages`, and no more content than
/// `bytes` (but always one message, so a page is never empty while messages
/// remain).
#[derive(Clone, Copy, Debug)]
struct PageBudget {
    messages: usize,
    bytes: usize,
}

/// An offline-queue or catch-up page.
const QUEUE_PAGE: PageBudget = PageBudget {
    messages: OFFLINE_CHUNK as usize,
    bytes: QUEUE_PAGE_BYTES,
};

impl PageBudget {
    /// A History or Sync page of at most `limit` messages.
    fn read(limit: u32) -> Self {
        PageBudget {
            messages: limit as usize,
            bytes: READ_PAGE_BYTES,
        }
    }

    /// How many of `messages`, taken in order, fit.
    fn fitting<'a>(&self, messages: impl Iterator<Item = &'a StoredMessage>) -> usize {
        let mut bytes = 0;
        let mut fits = 0;
        for message in messages.take(self.messages) {
            bytes += message.content.len();
            if fits > 0 && bytes > self.bytes {
                break;
            }
            fits += 1;
        }
        fits
    }
}

/// Reads a page of the messages whose ids `ids_query` selects, from the
/// `from` end, stopping at `budget`: rows past it are never read, so a page
/// costs what it holds whatever the messages' sizes. Returns the page oldest
/// first and whether selected messages were left out.
fn read_page(
    tx: &Transaction,
    ids_query: &str,
    parameters: impl rusqlite::Params,
    from: PageFrom,
    budget: PageBudget,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    let order = match from {
        PageFrom::Oldest => "ASC",
        PageFrom::Newest => "DESC",
    };
    let sql = format!(
        "SELECT m.message_id, s.username, r.username, m.content, m.is_encrypted, m.timestamp,
                m.group_id
         FROM messages m
         JOIN users s ON s.user_id = m.sender_id
         LEFT JOIN users r ON r.user_id = m.receiver_id
         WHERE m.message_id IN ({ids_query})
         ORDER BY m.message_id {order}"
    );
    let mut statement = tx.prepare_cached(&sql)?;
    let mut rows = statement.query_map(parameters, |row| {
        Ok(StoredMessage {
            message_id: row.get(0)?,
            sender: row.get(1)?,
            receiver: row.get(2)?,
            content: row.get(3)?,
            is_encrypted: row.get(4)?,
            time: row.get(5)?,
            group_id: row.get(6)?,
        })
    })?;
    let mut page: Vec<StoredMessage> = Vec::new();
    let mut bytes = 0;
    let mut more = false;
    for row in rows.by_ref() {
        let message = row?;
        bytes += message.content.len();
        let full = page.len() >= budget.messages || (!page.is_empty() && bytes > budget.bytes);
        if full {
            more = true;
            break;
        }
        page.push(message);
    }
    if from == PageFrom::Newest {
        page.reverse();
    }
    Ok((page, more))
}

/// The newest `limit` messages between the two users older than `before`,
/// oldest first, and whether older ones exist. Three parts: each direction
/// through the sender index, and the unindexed tail by id range.
fn history(
    tx: &Transaction,
    (user_id, peer_id): (i64, i64),
    before: Option<i64>,
    limit: u32,
    indexed_through: i64,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    let fetch = limit + 1;
    read_page(
        tx,
        "SELECT message_id FROM (
             SELECT message_id FROM messages
             WHERE indexed = 1 AND sender_id = ?1 AND receiver_id = ?2 AND message_id < ?3
             ORDER BY message_id DESC LIMIT ?4)
         UNION
         SELECT message_id FROM (
             SELECT message_id FROM messages
             WHERE indexed = 1 AND sender_id = ?2 AND receiver_id = ?1 AND message_id < ?3
             ORDER BY message_id DESC LIMIT ?4)
         UNION
         SELECT message_id FROM (
             SELECT message_id FROM messages
             WHERE message_id > ?5 AND message_id < ?3
               AND ((sender_id = ?1 AND receiver_id = ?2) OR (sender_id = ?2 AND receiver_id = ?1))
             ORDER BY message_id DESC LIMIT ?4)
         ORDER BY message_id DESC LIMIT ?4",
        params![
            user_id,
            peer_id,
            before.unwrap_or(i64::MAX),
            fetch,
            indexed_through
        ],
        PageFrom::Newest,
        PageBudget::read(limit),
    )
}

/// The oldest `limit` messages the user sent or received after `since`:
/// sent and received through the indexes, plus the unindexed tail.
fn sync(
    tx: &Transaction,
    user_id: i64,
    since: i64,
    limit: u32,
    indexed_through: i64,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    let fetch = limit + 1;
    read_page(
        tx,
        "SELECT message_id FROM (
             SELECT message_id FROM messages
             WHERE indexed = 1 AND sender_id = ?1 AND message_id > ?2 AND group_id IS NULL
             ORDER BY message_id LIMIT ?3)
         UNION
         SELECT message_id FROM (
             SELECT message_id FROM messages
             WHERE indexed = 1 AND receiver_id = ?1 AND message_id > ?2
             ORDER BY message_id LIMIT ?3)
         UNION
         SELECT message_id FROM (
             SELECT message_id FROM messages
             WHERE message_id > MAX(?2, ?4) AND (sender_id = ?1 OR receiver_id = ?1)
               AND group_id IS NULL
             ORDER BY message_id LIMIT ?3)
         UNION
         SELECT message_id FROM (
             SELECT m.message_id FROM group_members g
             JOIN messages m ON m.group_id = g.group_id AND m.message_id > ?2
             WHERE g.user_id = ?1
             ORDER BY m.message_id LIMIT ?3)
         ORDER BY message_id LIMIT ?3",
        params![user_id, since, fetch, indexed_through],
        PageFrom::Oldest,
        PageBudget::read(limit),
    )
}

/// Users that `user_id` has added, with whether each added them back.
fn contacts(tx: &Transaction, owner_id: i64) -> rusqlite::Result<Vec<ContactRow>> {
    let mut statement = tx.prepare_cached(
        "SELECT u.username, u.user_id,
                EXISTS(SELECT 1 FROM contacts r
                       WHERE r.owner_id = c.contact_id AND r.contact_id = c.owner_id),
                u.last_activity
         FROM contacts c JOIN users u ON u.user_id = c.contact_id
         WHERE c.owner_id = ?1
         ORDER BY u.username",
    )?;
    let rows = statement.query_map([owner_id], |row| {
        Ok(ContactRow {
            username: row.get(0)?,
            user_id: row.get(1)?,
            mutual: row.get(2)?,
            last_activity: row.get(3)?,
        })
    })?;
    rows.collect()
}

/// Users with whom a user (`?1`) has a mutual contact relationship.
const MUTUAL_CONTACTS_SQL: &str = "SELECT c.contact_id FROM contacts c
     JOIN contacts r ON r.owner_id = c.contact_id AND r.contact_id = c.owner_id
     WHERE c.owner_id = ?1";

/// Users with whom `user_id` has a mutual contact relationship.
fn mutual_contacts(tx: &Transaction, user_id: i64) -> rusqlite::Result<Vec<i64>> {
    let mut statement = tx.prepare_cached(MUTUAL_CONTACTS_SQL)?;
    let rows = statement.query_map([user_id], |row| row.get(0))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::{ConnId, Requester};
    use crate::password::hash_password;

    const CONN: Requester = Requester::anonymous(ConnId { slot: 0, serial: 1 });

    fn open() -> (tempfile::TempDir, SqliteBackend) {
        let dir = tempfile::tempdir().unwrap();
        let (backend, snapshot) = SqliteBackend::open(&dir.path().join("chat.db"), false).unwrap();
        assert!(snapshot.users.is_empty());
        assert_eq!(snapshot.next_message_id, 1);
        assert!(!snapshot.recovered_from_crash);
        (dir, backend)
    }

    #[test]
    fn index_passes_move_the_tail_into_the_indexes() {
        let (_dir, mut backend) = open();
        let a = create_user(&mut backend, "alice");
        let b = create_user(&mut backend, "bob");
        for id in 1..=3 {
            store(&mut backend, id, a, b, true);
        }
        assert_eq!(backend.indexed_through, 0);
        backend.index_tail();
        assert_eq!(backend.indexed_through, 3);
        let unindexed: i64 = backend
            .conn
            .query_row("SELECT COUNT(*) FROM messages WHERE indexed = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(unindexed, 0);
        let plan: String = backend
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT message_id FROM messages
                 WHERE indexed = 1 AND sender_id = 1 AND message_id > 0",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("messages_by_sender"), "{plan}");
    }

    #[test]
    fn a_start_after_a_crash_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let (mut backend, _) = SqliteBackend::open(&path, false).unwrap();
        backend.finish();
        drop(backend);
        let (backend, snapshot) = SqliteBackend::open(&path, false).unwrap();
        assert!(
            !snapshot.recovered_from_crash,
            "the last run finished cleanly"
        );
        drop(backend); // no finish(): as if killed
        let (_backend, snapshot) = SqliteBackend::open(&path, false).unwrap();
        assert!(snapshot.recovered_from_crash);
    }

    fn create_user(backend: &mut SqliteBackend, name: &str) -> i64 {
        let replies = backend.execute(vec![Command::CreateUser {
            to: CONN,
            username: name.into(),
            email: format!("{name}@example.com"),
            hash: hash_password("password123", 1),
            now: 100,
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
            client_message_id: None,
            message: NewMessage {
                message_id: id,
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
            matches!(replies.as_slice(), [Reply::MessageStored { message_id, .. }] if *message_id == id)
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
            tx.execute(
                "UPDATE messages SET indexed = (message_id <= ?1)",
                [indexed_through],
            )
            .unwrap();
            let (page, more) = history(&tx, (a, b), None, 2, indexed_through).unwrap();
            assert_eq!((ids(&page), more), (vec![4, 5], true));
            let (page, more) = history(&tx, (a, b), Some(4), 10, indexed_through).unwrap();
            assert_eq!((ids(&page), more), (vec![1, 2, 3], false));
            let (page, more) = history(&tx, (b, c), None, 10, indexed_through).unwrap();
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
            tx.execute(
                "UPDATE messages SET indexed = (message_id <= ?1)",
                [indexed_through],
            )
            .unwrap();
            let (page, more) = sync(&tx, a, 0, 2, indexed_through).unwrap();
            assert_eq!((ids(&page), more), (vec![1, 2], true));
            let (page, more) = sync(&tx, a, 2, 10, indexed_through).unwrap();
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
            queue_before: 3,
            include_groups: true,
            now: 200,
        };
        let replies = backend.execute(vec![open_session("h1")]);
        let [Reply::SessionOpened { queued, .. }] = replies.as_slice() else {
            panic!("{replies:?}");
        };
        assert_eq!(
            ids(queued),
            vec![1],
            "3 is at or past queue_before: held by the loop"
        );
        let replies = backend.execute(vec![open_session("h2")]);
        let [Reply::SessionOpened { queued, .. }] = replies.as_slice() else {
            panic!("{replies:?}");
        };
        assert_eq!(ids(queued), vec![1], "not taken until written out");
        backend.execute(vec![Command::MarkDelivered {
            user_id: b,
            message_ids: vec![1],
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

    #[test]
    fn sessions_resume_only_for_their_user_and_until_ended() {
        let (_dir, mut backend) = open();
        let a = create_user(&mut backend, "alice");
        let b = create_user(&mut backend, "bob");
        let peer = "127.0.0.1:5000".parse().unwrap();
        backend.execute(vec![Command::OpenSession {
            to: CONN,
            user_id: a,
            session_hash: "h".into(),
            peer,
            queue_before: i64::MAX,
            include_groups: true,
            now: 200,
        }]);
        let resume = |user_id| Command::ResumeSession {
            to: CONN,
            user_id,
            receipts: false,
            session_hash: "h".into(),
            peer,
            queue_before: i64::MAX,
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
        assert_eq!(mutual_contacts(&tx, a).unwrap(), vec![b]);
    }

    #[test]
    fn a_failing_command_fails_alone() {
        let (_dir, mut backend) = open();
        let a = create_user(&mut backend, "alice");
        // Message 1 twice: the second violates the primary key.
        let message = |id| Command::StoreMessage {
            to: CONN,
            client_message_id: None,
            message: NewMessage {
                message_id: id,
                sender_id: a,
                receiver_id: Some(a),
                group_id: None,
                content: "x".into(),
                is_encrypted: false,
                time: 1,
                delivered: true,
            },
        };
        let replies = backend.execute(vec![message(1), message(1), message(2)]);
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
}
