//! The SQLite backend: the one write connection to `<data-dir>/chat.db`.
//!
//! A batch runs in one transaction. If any command in it fails (disk full,
//! read-only file), the transaction is rolled back and each command is retried
//! in a transaction of its own, so one failure costs only its own command;
//! whatever still fails is answered with [`Reply::Failed`] and never acked.
//!
//! This file is the backend itself: opening the database, batches and their
//! transactions, when the index passes run, the `--json-mirror` hook, and
//! `apply`, which hands each [`Command`] to its one function. The commands
//! live in one file per family, like the dispatcher's requests:
//! - `accounts.rs`: users, credentials, sessions (open, resume, end,
//!   expire) and a connection's departure;
//! - `messages.rs`: storing a message, History and Sync pages, and the page
//!   reader every read of messages shares;
//! - `delivery.rs`: the offline queue and catch-up pages, what takes a
//!   message and what puts it back, confirmations, group cursors;
//! - `contacts.rs`, `groups.rs`, `keys.rs`;
//! - `server_state.rs`: the running mark and the reserved ids;
//! - `indexes.rs`: the per-user indexes of 1:1 messages, written in passes
//!   by slice of users, and the unindexed tail kept in memory;
//! - `stored_times.rs`: when recent ids were stored, so passes leave rows
//!   younger than a confirm period alone;
//! - [`schema`]: the tables and indexes, and why they are shaped so.

mod accounts;
mod contacts;
mod delivery;
mod groups;
mod indexes;
mod keys;
mod messages;
pub mod schema;
mod server_state;
mod stored_times;
#[cfg(test)]
mod tests;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction};

use super::checkpoint::Checkpointer;
use super::client_ids::ClientIds;
use super::ids::{self, BatchIds};
use super::json_files::Mirror;
use super::pages::QueueTake;
use super::{Backend, Command, DatabaseError, OpenError, PreviousRun, Reply};
use crate::config::{CLIENT_ID_RETENTION_SECS, SESSION_IDLE_SECS};
use crate::metrics::Histograms;
use indexes::Indexes;
use prometheus_client::metrics::histogram::Histogram;
use stored_times::StoredTimes;

/// Unindexed messages old enough to pass ([`stored_times::INDEX_AGE`]) past
/// which an index pass runs right after each batch (or past one pass's
/// span, when that is larger: `Indexes::pass_span`, so each pass covers a
/// whole span).
const INDEX_TAIL_MAX: i64 = 8_192;
/// The unindexed tail's bound: past it, passes run after each batch until
/// the tail is back under it, however long that holds the next batch, and
/// cover rows however young. The tail's rows are 24 bytes, held three
/// times (in id order, by receiver and by sender), so this bounds them to
/// 18 MiB plus the vectors' and maps' slack. It must stay above the
/// largest pass span ([`indexes::INDEX_PASS_ROWS_MAX`], 131,072) plus what
/// arrives in `INDEX_AGE`, or passes at 5,000 users would all run at the
/// bound, over rows however young. Without it a sustained closed loop outran the
/// one pass per batch: after 730,000 messages the indexes were 590,000
/// behind, and every pass then paid for the whole tail. It must stay above
/// what arrives in `INDEX_AGE` at full speed: at 65,536 rows and a 1 s age
/// the 100 × 16 closed loop (~130,000 msg/s) lived at the bound, and its
/// storage thread sat idle 10–15 % of the time (101,292 and 118,464 msg/s
/// against 129,142 and 126,813 without the age, same run).
const INDEX_TAIL_BOUND: i64 = 262_144;
/// How long a small unindexed tail, once old enough to pass, may wait for
/// idle moments' passes after messages stopped arriving (every row stored
/// is old enough).
const INDEX_DELAY: Duration = Duration::from_secs(1);
/// How long it may wait while messages keep arriving. Until then, passes
/// wait for a whole span of old enough rows (`passes_due`): a round of idle
/// passes every second covered whatever a second brought, ~1,000 rows per
/// slice at 5,000 users and ~40,000 msg/s, so each receiver got ~6 rows per
/// index page a pass rewrote whatever the span allowed.
const INDEX_DELAY_BUSY: Duration = Duration::from_secs(30);

/// The database, its prepared-statement cache, and the per-user indexes'
/// watermarks (see `indexes.rs`).
pub struct SqliteBackend {
    conn: Connection,
    /// The highest message id stored.
    highest_stored: i64,
    /// When recent ids were stored: passes leave the youngest rows alone.
    stored_times: StoredTimes,
    /// When the last round of idle passes began (one pass per slice, each
    /// in an idle moment of its own).
    idle_round_began: Instant,
    /// Passes left in that round.
    idle_round_left: usize,
    /// The last index pass failed: idle moments wait for the idle tick
    /// again instead of retrying back to back.
    pass_failed: bool,
    /// Each slice of users' index watermark, and the unindexed tail.
    indexes: Indexes,
    /// The recent client ids, for idempotent sends.
    client_ids: ClientIds,
    /// Copies the WAL back into the database without stalling commits.
    checkpointer: Checkpointer,
    /// Each index pass's time (`/metrics`), once the storage thread starts.
    pass_seconds: Option<Histogram>,
    /// Keeps `users.json`/`contacts.json` current (`--json-mirror`).
    mirror: Option<Mirror>,
}

/// One batch's transaction, and what its commands need to read messages
/// right: the per-user indexes' watermarks and the unindexed tail.
struct Batch<'a> {
    /// The batch's transaction.
    tx: &'a Transaction<'a>,
    /// Which messages are in the per-user indexes, and the 1:1 ones past.
    indexes: &'a mut Indexes,
    /// The recent client ids (what the batch adds is taken back if it fails).
    client_ids: &'a mut ClientIds,
    /// The message ids this transaction handed out (`storage/ids.rs`).
    ids: BatchIds,
}

impl SqliteBackend {
    /// Opens (creating with mode 0600 if needed) the database at `path`,
    /// migrates it, marks every user offline (nobody is connected to a
    /// starting server) and starts the checkpointer. What the previous run
    /// left is read next, by [`super::startup::begin_run`].
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self, OpenError> {
        create_private_file(path);
        let (mut conn, highest_stored) = prepare_connection(path, synchronous_full)
            .map_err(|error| OpenError::database(path.display(), error))?;
        let indexes = Indexes::open(&mut conn, highest_stored)
            .map_err(|error| OpenError::database(path.display(), error))?;
        let client_ids = messages::load_client_ids(&conn, unix_now())
            .map_err(|error| OpenError::database(path.display(), error))?;
        let checkpointer = Checkpointer::start(path).map_err(OpenError::Thread)?;
        Ok(SqliteBackend {
            client_ids,
            conn,
            highest_stored,
            stored_times: StoredTimes::default(),
            idle_round_began: Instant::now(),
            idle_round_left: 0,
            pass_failed: false,
            indexes,
            checkpointer,
            pass_seconds: None,
            mirror: None,
        })
    }

    /// Keeps the original system's JSON files in `dir` current: written
    /// when idle, at most once per second, after accounts or contacts change.
    pub fn with_json_mirror(mut self, dir: PathBuf) -> Self {
        self.mirror = Some(Mirror::new(dir));
        self
    }

    fn execute_batch(&mut self, batch: &mut [Command]) -> Vec<Reply> {
        match self.execute_in_transaction(batch) {
            Ok(replies) => replies,
            Err(error) => {
                log::error!(
                    "storage: batch of {} failed ({error}); retrying one by one",
                    batch.len()
                );
                batch
                    .iter_mut()
                    .flat_map(|command| self.execute_alone(command))
                    .collect()
            }
        }
    }

    fn execute_alone(&mut self, command: &mut Command) -> Option<Reply> {
        match self.execute_in_transaction(std::slice::from_mut(command)) {
            Ok(mut replies) => replies.pop(),
            Err(error) => {
                log::error!("storage: command failed: {error}");
                let ticket = command.ticket();
                command.requester().map(|(to, tag)| Reply::Failed {
                    to: to.clone(),
                    ref_tag: tag,
                    ticket,
                    reason: error.to_string(),
                })
            }
        }
    }

    fn execute_in_transaction(&mut self, commands: &mut [Command]) -> rusqlite::Result<Vec<Reply>> {
        let replies = self.apply_all(commands);
        match replies {
            Ok(_) => self.client_ids.commit(),
            Err(_) => {
                self.client_ids.roll_back();
                self.indexes.forget();
            }
        }
        let replies = replies?;
        let stored = commands.iter().filter_map(|command| match command {
            Command::StoreMessage { message, .. } => Some(message.message_id),
            _ => None,
        });
        self.highest_stored = stored.fold(self.highest_stored, i64::max);
        Ok(replies)
    }

    /// Applies the commands in one transaction and commits it.
    fn apply_all(&mut self, commands: &mut [Command]) -> rusqlite::Result<Vec<Reply>> {
        let tx = self.conn.transaction()?;
        let mut batch = Batch {
            tx: &tx,
            indexes: &mut self.indexes,
            client_ids: &mut self.client_ids,
            ids: BatchIds::default(),
        };
        let mut replies = Vec::with_capacity(commands.len());
        for command in commands.iter_mut() {
            if ids::needs_id(command, batch.client_ids) {
                ids::assign(command, server_state::next_message_id(&mut batch)?);
            }
            if let Some(reply) = apply(&mut batch, command)? {
                replies.push(reply);
            }
        }
        server_state::save_ids(&batch)?;
        tx.commit()?;
        Ok(replies)
    }

    /// One index pass over every stored row, however young (at a stop, and
    /// in tests). Returns whether a pass was due.
    fn index_pass(&mut self) -> bool {
        self.index_pass_through(self.highest_stored)
    }

    /// One index pass while running: over the rows old enough to pass, or
    /// every row while the tail is at its bound.
    fn upkeep_pass(&mut self) -> bool {
        let through = if self.unindexed() >= INDEX_TAIL_BOUND {
            self.highest_stored
        } else {
            self.stored_times.aged_through(Instant::now())
        };
        self.index_pass_through(through)
    }

    /// One index pass: the slice of users furthest behind moves towards
    /// `through` (`indexes.rs`). Queries stay correct whether or not this
    /// has run. Returns whether a pass was due.
    fn index_pass_through(&mut self, through: i64) -> bool {
        let started = Instant::now();
        match self.indexes.pass(&mut self.conn, through) {
            Ok(due) => {
                self.pass_failed = false;
                if due {
                    self.checkpointer.committed();
                    if let Some(pass_seconds) = &self.pass_seconds {
                        pass_seconds.observe(started.elapsed().as_secs_f64());
                    }
                }
                due
            }
            Err(error) => {
                log::error!("storage: index pass failed (will retry): {error}");
                self.pass_failed = true;
                self.indexes.forget();
                false
            }
        }
    }

    /// The stored messages not yet in every slice's index.
    fn unindexed(&self) -> i64 {
        self.highest_stored - self.indexes.lowest()
    }

    /// The unindexed messages old enough for a pass to cover.
    fn aged_unindexed(&self) -> i64 {
        let aged = self.stored_times.aged_through(Instant::now());
        (aged - self.indexes.lowest()).max(0)
    }

    /// A round of idle passes over the old enough rows is due: every
    /// [`INDEX_DELAY`] once messages stopped arriving, every
    /// [`INDEX_DELAY_BUSY`] while they keep arriving.
    fn idle_round_due(&self) -> bool {
        let aged = self.stored_times.aged_through(Instant::now());
        let waited = self.idle_round_began.elapsed();
        let all_aged = aged >= self.highest_stored;
        aged > self.indexes.lowest()
            && waited >= INDEX_DELAY
            && (all_aged || waited >= INDEX_DELAY_BUSY)
    }

    /// Enough old unindexed messages that passes run after each batch.
    fn passes_due(&self) -> bool {
        self.aged_unindexed() >= INDEX_TAIL_MAX.max(self.indexes.pass_span())
    }
}

impl Backend for SqliteBackend {
    fn previous_run(&mut self) -> Result<PreviousRun, DatabaseError> {
        Ok(server_state::previous_run(&self.conn, self.highest_stored)?)
    }

    fn begin_run(&mut self, ids_reserved_through: i64) -> Result<(), DatabaseError> {
        Ok(server_state::begin_run(
            &mut self.conn,
            ids_reserved_through,
        )?)
    }

    fn execute(&mut self, mut batch: Vec<Command>) -> Vec<Reply> {
        if let Some(mirror) = &mut self.mirror {
            if batch.iter().any(changes_mirrored_files) {
                mirror.mark_dirty();
            }
        }
        let mut replies = self.execute_batch(&mut batch);
        self.stored_times
            .stored(Instant::now(), self.highest_stored);
        self.checkpointer.committed();
        super::hand_back_stored(batch, &mut replies);
        replies
    }

    fn time_upkeep_into(&mut self, histograms: &Histograms) {
        self.pass_seconds = Some(histograms.index_pass_seconds.clone());
    }

    fn idle(&mut self) {
        if let Some(mirror) = &mut self.mirror {
            mirror.idle(&self.conn);
        }
        // A round of passes at most every `INDEX_DELAY`, one slice per idle
        // moment, so a batch arriving meanwhile waits for one pass at most.
        if self.idle_round_left == 0 && self.idle_round_due() {
            self.idle_round_began = Instant::now();
            self.idle_round_left = indexes::INDEX_SLICES;
        }
        if self.idle_round_left > 0 {
            self.idle_round_left -= 1;
            self.upkeep_pass();
        } else if self.passes_due() {
            // Behind after a burst: catch up one pass per idle moment.
            self.upkeep_pass();
        }
    }

    fn upkeep_due(&self) -> bool {
        !self.pass_failed && (self.idle_round_left > 0 || self.passes_due())
    }

    fn after_replies(&mut self) {
        // Past the tail bound, index now — one slice after each batch, and
        // only after its replies went out, so no Ack or delivery waits for
        // the pass it would have been held behind.
        if self.passes_due() {
            self.upkeep_pass();
        }
        while self.unindexed() >= INDEX_TAIL_BOUND && self.index_pass() {}
    }

    #[cfg(test)]
    fn index_pass_now(&mut self) {
        self.index_pass();
    }

    fn finish(&mut self) {
        while self.index_pass() {}
        if let Some(mirror) = &mut self.mirror {
            mirror.flush(&self.conn);
        }
        if let Err(error) = server_state::mark_stopped(&self.conn) {
            log::error!("storage: cannot record the clean shutdown: {error}");
        }
    }
}

/// Executes one command inside the batch's transaction: the one place a
/// [`Command`] meets the function that carries it out, grouped by file.
fn apply(batch: &mut Batch, command: &Command) -> rusqlite::Result<Option<Reply>> {
    let tx = batch.tx;
    match command {
        // accounts.rs
        Command::CreateUser {
            to,
            username,
            email,
            hash,
            now,
            // Shared limits are cluster mode's, on PostgreSQL only: a SQLite
            // server is alone, and its loop's tables are the whole truth.
            shared: _,
        } => accounts::create_user(tx, to, username, email, hash, *now).map(Some),
        Command::FetchCredentials { to, username, .. } => {
            accounts::fetch_credentials(tx, to, username).map(Some)
        }
        Command::LookUp {
            to,
            ticket,
            usernames,
            group_id,
        } => accounts::look_up(tx, (to, *ticket), usernames, *group_id).map(Some),
        // Sent only in cluster mode (see `CreateUser` above).
        Command::EndSharedLogin { .. } => Ok(None),
        Command::OpenSession {
            to,
            user_id,
            session_hash,
            peer,
            include_groups,
            now,
        } => {
            let queue_before = server_state::id_boundary(batch)?;
            let queue = QueueTake::from_start(*user_id, queue_before, *include_groups);
            accounts::open_session(batch, to, session_hash, *peer, *now, queue).map(Some)
        }
        Command::ResumeSession {
            to,
            user_id,
            session_hash,
            receipts,
            peer,
            include_groups,
            now,
        } => {
            let queue_before = server_state::id_boundary(batch)?;
            let queue = QueueTake::from_start(*user_id, queue_before, *include_groups);
            accounts::resume_session(batch, to, session_hash, *receipts, *peer, *now, queue)
                .map(Some)
        }
        Command::Sessions { to, user_id } => accounts::sessions(tx, to, *user_id).map(Some),
        Command::EndSession { to, session_hash } => {
            accounts::end_session(tx, to, session_hash).map(Some)
        }
        Command::ConnectionLost {
            user_id,
            username,
            session_hash,
            last,
            groups_taken,
            now,
        } => accounts::connection_lost(
            tx,
            *user_id,
            username,
            session_hash,
            *last,
            *groups_taken,
            *now,
        ),
        Command::PurgeSessions { idle_before } => {
            let now = idle_before + SESSION_IDLE_SECS;
            batch
                .client_ids
                .forget_older_than(now - CLIENT_ID_RETENTION_SECS);
            accounts::purge_sessions(tx, *idle_before).map(|()| None)
        }
        // messages.rs
        Command::StoreMessage {
            to,
            ticket,
            client_message_id,
            message,
        } => messages::store_message(batch, (to, *ticket), client_message_id.as_deref(), message)
            .map(Some),
        Command::History {
            to,
            user_id,
            with,
            chat_id,
            before,
            limit,
        } => messages::history(batch, to, *user_id, *with, chat_id, *before, *limit).map(Some),
        Command::Sync {
            to,
            user_id,
            since,
            limit,
        } => messages::sync(batch, to, *user_id, *since, *limit).map(Some),
        // delivery.rs
        Command::TakeQueue {
            to,
            user_id,
            queue_before,
            after,
            since,
            include_groups,
        } => {
            let queue = QueueTake::from_start(*user_id, *queue_before, *include_groups);
            delivery::take_queue(batch, to, queue.continued(*after, *since)).map(Some)
        }
        Command::MarkDelivered {
            user_id,
            message_ids,
        } => delivery::mark_delivered(tx, *user_id, message_ids).map(|()| None),
        Command::Requeue {
            user_id,
            from_message_id,
        } => delivery::requeue(tx, *user_id, *from_message_id).map(|()| None),
        Command::Confirm {
            user_id,
            username,
            session_hash,
            through,
        } => delivery::confirm(batch, *user_id, username, session_hash, *through).map(Some),
        // contacts.rs
        Command::AddContact {
            to,
            owner_id,
            owner_name,
            contact_id,
            now,
        } => contacts::add_contact(tx, to, *owner_id, owner_name, *contact_id, *now).map(Some),
        Command::RemoveContact {
            to,
            owner_id,
            contact_id,
        } => contacts::remove_contact(tx, to, *owner_id, *contact_id).map(Some),
        Command::Directory { to, owner_id } => contacts::directory(tx, to, *owner_id).map(Some),
        // groups.rs
        Command::CreateGroup {
            to,
            name,
            member_ids,
            now,
        } => {
            let through = server_state::id_boundary(batch)? - 1;
            groups::create_group(tx, to, name, member_ids, through, *now).map(Some)
        }
        Command::AddGroupMembers {
            to,
            group_id,
            member_ids,
            now,
        } => {
            let through = server_state::id_boundary(batch)? - 1;
            groups::add_group_members(tx, to, *group_id, member_ids, through, *now).map(Some)
        }
        Command::LeaveGroup {
            to,
            user_id,
            group_id,
        } => groups::leave_group(tx, to, *user_id, *group_id).map(Some),
        // keys.rs
        Command::SetKey {
            to,
            user_id,
            username,
            public_key,
        } => keys::set_key(tx, to, *user_id, username, public_key).map(Some),
        Command::GetKey {
            to,
            user_id,
            username,
        } => keys::get_key(tx, to, *user_id, username).map(Some),
        // Cluster mode runs on PostgreSQL only (config.rs refuses --nats
        // without it), so no server sends these to SQLite; a beat is
        // answered as failed rather than as a cluster of one.
        Command::Heartbeat { .. } => Ok(Some(Reply::Beat {
            result: Err("heartbeats need cluster mode's PostgreSQL database".into()),
        })),
        Command::PresenceOf { changes } => contacts::presence_of(tx, changes).map(Some),
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

/// Opens and migrates the database, marks every user offline, and returns the connection with the highest message id stored.
fn prepare_connection(path: &Path, synchronous_full: bool) -> rusqlite::Result<(Connection, i64)> {
    let mut conn = Connection::open(path)?;
    schema::prepare(&mut conn, synchronous_full)?;
    // `rarray(?)`: a queue read passes its candidates from the in-memory
    // tail as one parameter (`delivery::tail_candidates`).
    rusqlite::vtab::array::load_module(&conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute("UPDATE users SET is_online = FALSE WHERE is_online", [])?;
    let highest_stored = messages::highest_stored_id(&conn)?;
    Ok((conn, highest_stored))
}

/// The wall clock in Unix seconds (message times are in it).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
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
