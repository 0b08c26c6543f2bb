//! The PostgreSQL backend: one connection (the synchronous `postgres`
//! client) driven by the storage thread, for `--database postgres://…`.
//!
//! The same contract as SQLite's ([`super::sqlite`]): a batch runs in one
//! transaction, committed with `synchronous_commit = on` (an Ack means the
//! commit is in PostgreSQL's write-ahead log on disk); if any command in it
//! fails, the transaction is rolled back and each command is retried in a
//! transaction of its own, so one failure costs only its own command, and
//! whatever still fails is answered with [`Reply::Failed`] and never acked.
//! A connection that PostgreSQL closed (a restart) is opened again before
//! the next batch; the batch that met the closing fails as above.
//!
//! This file is the backend itself: connecting, batches and their
//! transactions, the prepared-statement cache, the page reader, and
//! `apply`, which hands each [`Command`] to its one function. The commands
//! live in one file per family, like SQLite's: `accounts.rs`, `messages.rs`,
//! `delivery.rs`, `contacts.rs`, `groups.rs`, `keys.rs`, `server_state.rs`,
//! `limits.rs` (cluster mode's shared lockout and registration limit) and
//! `cluster.rs` (cluster mode's heartbeats);
//! [`schema`] holds the tables and the migrations, run under an advisory
//! lock. The pure logic both backends share (page budgets, queue takes, the
//! client-id index) is in `storage/pages.rs` and `storage/client_ids.rs`.

mod accounts;
mod cluster;
mod contacts;
mod delivery;
mod groups;
pub(crate) mod json_tables;
mod keys;
mod limits;
mod messages;
pub mod schema;
mod server_state;
#[cfg(test)]
pub(crate) mod test_schema;

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement, Transaction};

use super::client_ids::ClientIds;
use super::ids::{self, BatchIds};
use super::pages::{PageBudget, PageFill, PageFrom, QueueTake};
use super::{Backend, Command, DatabaseError, OpenError, PreviousRun, Reply, StoredMessage};
use crate::config::{
    CLIENT_ID_RETENTION_SECS, POSTGRES_CLAIM_WAIT, POSTGRES_CONNECT_TIMEOUT, POSTGRES_FETCH_ROWS,
    POSTGRES_OUTCOME_WAIT, SESSION_IDLE_SECS,
};
use crate::shared_limits::SHARED_LIMIT_PRUNE_INTERVAL;

/// Why a command failed; the batch's transaction is rolled back either way.
#[derive(Debug)]
pub enum Error {
    /// PostgreSQL refused or the connection failed: the command (or the
    /// batch) is retried alone, then answered `Failed`.
    Database(postgres::Error),
    /// A row the command works on is gone (a group deleted by the same
    /// batch): answered `Failed` like a refusal.
    Missing(&'static str),
    /// At start: the database's schema is of this newer version, written by
    /// a newer server; run that one.
    NewerSchema(i32),
    /// At start: another server holds the database (one server per
    /// database outside cluster mode); stop it first, or run every server
    /// with `--nats`.
    InUse,
}

impl From<postgres::Error> for Error {
    fn from(error: postgres::Error) -> Self {
        Error::Database(error)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Database(error) => write!(f, "{}", explain(error)),
            Error::Missing(what) => write!(f, "no such {what}"),
            Error::NewerSchema(found) => write!(
                f,
                "database schema version {found} is newer than this server ({})",
                schema::SCHEMA_VERSION
            ),
            Error::InUse => write!(
                f,
                "another chat-server is using this database (one server per database \
                 unless every one runs in cluster mode, --nats)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database(error) => Some(error),
            Error::Missing(_) | Error::NewerSchema(_) | Error::InUse => None,
        }
    }
}

/// How a transaction failed.
enum TransactionFailed<T> {
    /// Before its COMMIT: nothing of it is in the database.
    RolledBack(Error),
    /// Its COMMIT did not come back as a success: it may be in the
    /// database all the same, and would have returned `T`.
    Uncertain(Error, T),
}

impl<T> TransactionFailed<T> {
    fn into_error(self) -> Error {
        match self {
            TransactionFailed::RolledBack(error) | TransactionFailed::Uncertain(error, _) => error,
        }
    }
}

/// The parameters of one statement.
type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// The connection, what it needs to reconnect, its prepared statements, and
/// the recent client ids.
pub struct PostgresBackend {
    client: Client,
    config: postgres::Config,
    /// Where the database is, without the password (for the log).
    location: String,
    statements: Statements,
    /// The recent client ids, for idempotent sends.
    client_ids: ClientIds,
    /// Cluster mode: other servers write to this database too (no server
    /// lock; a resend's client id is also looked for in the database).
    cluster: bool,
    /// When the shared limits' rows were last pruned (cluster mode).
    limits_pruned_at: Option<std::time::Instant>,
}

/// Statements prepared on this connection, by their SQL (each command's
/// SQL is fixed, so this holds a few dozen).
#[derive(Default)]
struct Statements(HashMap<String, Statement>);

impl Statements {
    /// The statement for `sql`, prepared once per connection.
    fn get(&mut self, tx: &mut Transaction, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql)?;
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// One batch's transaction, with the prepared statements and the recent
/// client ids (what the batch adds is taken back if it fails): what every
/// command function works with.
pub(super) struct Batch<'a, 'c> {
    tx: &'a mut Transaction<'c>,
    statements: &'a mut Statements,
    /// The recent client ids.
    client_ids: &'a mut ClientIds,
    /// Cluster mode: a client id this server does not remember may have
    /// been stored by another one.
    cluster: bool,
    /// The message ids this transaction handed out (`storage/ids.rs`).
    ids: BatchIds,
}

impl Batch<'_, '_> {
    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: Params) -> Result<u64, postgres::Error> {
        let statement = self.statements.get(self.tx, sql)?;
        self.tx.execute(&statement, params)
    }

    /// Runs a query whose rows are bounded by its SQL or its data (a user's
    /// contacts, a group's members).
    fn query(&mut self, sql: &str, params: Params) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statements.get(self.tx, sql)?;
        self.tx.query(&statement, params)
    }

    /// Runs a query of at most one row.
    fn query_opt(&mut self, sql: &str, params: Params) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statements.get(self.tx, sql)?;
        self.tx.query_opt(&statement, params)
    }

    /// Runs a query of exactly one row.
    fn query_one(&mut self, sql: &str, params: Params) -> Result<Row, postgres::Error> {
        let statement = self.statements.get(self.tx, sql)?;
        self.tx.query_one(&statement, params)
    }

    /// Reads rows [`POSTGRES_FETCH_ROWS`] at a time through a portal, handing
    /// each to `keep_reading` until it says stop: what is not needed is
    /// never sent by the server.
    fn read_rows(
        &mut self,
        sql: &str,
        params: Params,
        mut keep_reading: impl FnMut(&Row) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let statement = self.statements.get(self.tx, sql)?;
        let portal = self.tx.bind(&statement, params)?;
        loop {
            let rows = self.tx.query_portal(&portal, POSTGRES_FETCH_ROWS)?;
            let last = rows.len() < POSTGRES_FETCH_ROWS as usize;
            for row in &rows {
                if !keep_reading(row)? {
                    return Ok(());
                }
            }
            if last {
                return Ok(());
            }
        }
    }

    /// Reads a page of the messages whose ids `ids_query` selects, from the
    /// `from` end, stopping at `budget`. Returns the page oldest first and
    /// whether selected messages were left out.
    fn read_page(
        &mut self,
        ids_query: &str,
        params: Params,
        from: PageFrom,
        budget: PageBudget,
    ) -> Result<(Vec<StoredMessage>, bool), Error> {
        let order = from.sql_order();
        let sql = format!(
            "SELECT m.message_id, s.username, r.username, m.content, m.is_encrypted,
                    m.timestamp, m.group_id
             FROM messages m
             JOIN users s ON s.user_id = m.sender_id
             LEFT JOIN users r ON r.user_id = m.receiver_id
             WHERE m.message_id IN ({ids_query})
             ORDER BY m.message_id {order}"
        );
        let mut fill = PageFill::new(budget);
        self.read_rows(&sql, params, |row| Ok(fill.offer(stored_message(row)?)))?;
        Ok(fill.finish(from))
    }
}

/// A message row as [`Batch::read_page`] selects it.
fn stored_message(row: &Row) -> Result<StoredMessage, postgres::Error> {
    Ok(StoredMessage {
        message_id: row.try_get(0)?,
        sender: row.try_get(1)?,
        receiver: row.try_get(2)?,
        content: row.try_get(3)?,
        is_encrypted: row.try_get(4)?,
        time: row.try_get(5)?,
        group_id: row.try_get(6)?,
    })
}

impl PostgresBackend {
    /// Connects to the database `url` names, takes the server lock (not in
    /// a `cluster`, where several servers share it), migrates it (under the
    /// advisory lock, so processes starting together are safe), marks every
    /// user offline (nobody is connected to a starting server; in a cluster
    /// others may be) and reads the recent client ids back. What the
    /// previous run left is read next, by [`super::startup::begin_run`].
    pub fn open(url: &str, cluster: bool) -> Result<Self, OpenError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|error| OpenError::database(redacted(url), error))?;
        config.connect_timeout(POSTGRES_CONNECT_TIMEOUT);
        let location = location(&config);
        let mut client = connect(&config).map_err(|error| {
            let hint = if error.as_db_error().is_some() {
                "PostgreSQL refused"
            } else {
                "is PostgreSQL running there?"
            };
            OpenError::database(
                &location,
                format!("cannot connect ({hint}): {}", explain(&error)),
            )
        })?;
        if !cluster {
            claim_within(&mut client, POSTGRES_CLAIM_WAIT)
                .map_err(|error| OpenError::database(&location, error))?;
        }
        schema::prepare(&mut client).map_err(|error| OpenError::database(&location, error))?;
        let mut backend = PostgresBackend {
            client,
            config,
            location,
            statements: Statements::default(),
            client_ids: ClientIds::new(0),
            cluster,
            limits_pruned_at: None,
        };
        let client_ids = backend
            .in_transaction(|batch| {
                if !cluster {
                    batch.execute("UPDATE users SET is_online = FALSE WHERE is_online", &[])?;
                }
                messages::load_client_ids(batch, unix_now())
            })
            .map_err(|error| OpenError::database(&backend.location, error))?;
        backend.client_ids = client_ids;
        Ok(backend)
    }

    /// Where the database is: `postgres://USER@HOST:PORT/DB`, no password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs `work` in one transaction of its own and commits it.
    fn in_transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Batch) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.in_transaction_telling(work)
            .map_err(TransactionFailed::into_error)
    }

    /// Like [`Self::in_transaction`], but tells a transaction that surely
    /// rolled back from one whose COMMIT failed (and may have committed).
    fn in_transaction_telling<T>(
        &mut self,
        work: impl FnOnce(&mut Batch) -> Result<T, Error>,
    ) -> Result<T, TransactionFailed<T>> {
        let rolled_back = TransactionFailed::RolledBack;
        let mut tx = self
            .client
            .transaction()
            .map_err(|error| rolled_back(error.into()))?;
        let mut batch = Batch {
            tx: &mut tx,
            statements: &mut self.statements,
            client_ids: &mut self.client_ids,
            cluster: self.cluster,
            ids: BatchIds::default(),
        };
        let done = work(&mut batch).map_err(rolled_back)?;
        server_state::save_ids(&mut batch).map_err(rolled_back)?;
        // Any failed COMMIT may have committed: the connection may have
        // died before the answer, or the backend been terminated after
        // writing its commit record (the checker's outage showed both).
        match tx.commit() {
            Ok(()) => Ok(done),
            Err(error) => Err(TransactionFailed::Uncertain(error.into(), done)),
        }
    }

    /// After a COMMIT that failed: whether the batch that stored
    /// `commands` is in the database, once PostgreSQL answers again
    /// (within [`POSTGRES_OUTCOME_WAIT`]). `None`: no answer, or nothing in
    /// the batch to tell by (no message was stored).
    fn committed_after_all(&mut self, commands: &[Command]) -> Option<bool> {
        let (message_id, sender_id, content) =
            commands.iter().find_map(|command| match command {
                Command::StoreMessage { message, .. } if message.message_id != 0 => Some((
                    message.message_id,
                    message.sender_id,
                    message.content.clone(),
                )),
                _ => None,
            })?;
        let deadline = std::time::Instant::now() + POSTGRES_OUTCOME_WAIT;
        loop {
            self.reconnect_if_closed();
            let found = self.client.query_opt(
                "SELECT sender_id, content FROM messages WHERE message_id = $1",
                &[&message_id],
            );
            match found {
                Ok(row) => {
                    return Some(row.is_some_and(|row| {
                        row.get::<_, i64>(0) == sender_id && row.get::<_, String>(1) == content
                    }))
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(error) => {
                    log::error!(
                        "storage: cannot learn whether a batch committed: {}",
                        explain(&error)
                    );
                    return None;
                }
            }
        }
    }

    /// Opens the connection again if PostgreSQL closed it (a restart, an
    /// administrator): the statements prepared on the old one are gone.
    fn reconnect_if_closed(&mut self) {
        if !self.client.is_closed() {
            return;
        }
        match connect(&self.config) {
            Ok(mut client) => {
                if !self.cluster && !matches!(schema::claim(&mut client), Ok(true)) {
                    // Another server took the database meanwhile: writing
                    // beside it would break both; this batch fails instead.
                    log::error!(
                        "storage: {} is in use by another chat-server; not reconnecting",
                        self.location
                    );
                    return;
                }
                log::warn!("storage: reconnected to {}", self.location);
                self.client = client;
                self.statements = Statements::default();
            }
            Err(error) => log::error!(
                "storage: cannot reconnect to {}: {}",
                self.location,
                explain(&error)
            ),
        }
    }

    fn execute_batch(&mut self, batch: &mut [Command]) -> Vec<Reply> {
        match self.execute_in_transaction(batch) {
            Ok(replies) => replies,
            Err(error) => {
                log::error!(
                    "storage: batch of {} failed ({error}); retrying one by one",
                    batch.len()
                );
                self.reconnect_if_closed();
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
                if let Command::Heartbeat { .. } = command {
                    // The loop learns that the database is unreachable.
                    return Some(Reply::Beat {
                        result: Err(error.to_string()),
                    });
                }
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

    /// Applies the commands in one transaction and commits it; the client
    /// ids the commands remembered stay only if it committed.
    /// A COMMIT that failed is looked into: if the batch is in the
    /// database after all, its replies stand (its senders must not be told
    /// it failed while its recipients read it).
    fn execute_in_transaction(&mut self, commands: &mut [Command]) -> Result<Vec<Reply>, Error> {
        let replies = self.in_transaction_telling(|batch| {
            let mut replies = Vec::with_capacity(commands.len());
            for command in commands.iter_mut() {
                if ids::needs_id(command, batch.client_ids) {
                    ids::assign(command, server_state::next_message_id(batch)?);
                }
                if let Some(reply) = apply(batch, command)? {
                    replies.push(reply);
                }
            }
            Ok(replies)
        });
        let replies = match replies {
            Ok(replies) => Ok(replies),
            Err(TransactionFailed::Uncertain(error, replies)) => {
                match self.committed_after_all(commands) {
                    Some(true) => {
                        log::warn!("storage: a COMMIT failed ({error}) but is in the database");
                        Ok(replies)
                    }
                    _ => Err(error),
                }
            }
            Err(TransactionFailed::RolledBack(error)) => Err(error),
        };
        match replies {
            Ok(_) => self.client_ids.commit(),
            Err(_) => self.client_ids.roll_back(),
        }
        replies
    }
}

impl Backend for PostgresBackend {
    fn previous_run(&mut self) -> Result<PreviousRun, DatabaseError> {
        // Held until `begin_run` has reserved this run's ids: a process
        // starting at the same moment reads them, not what this one read.
        schema::lock(&mut self.client).map_err(Error::from)?;
        Ok(self.in_transaction(server_state::previous_run)?)
    }

    fn begin_run(&mut self, ids_reserved_through: i64) -> Result<(), DatabaseError> {
        let begun =
            self.in_transaction(|batch| server_state::begin_run(batch, ids_reserved_through));
        let unlocked = schema::unlock(&mut self.client).map_err(Error::from);
        begun?;
        Ok(unlocked?)
    }

    fn execute(&mut self, mut batch: Vec<Command>) -> Vec<Reply> {
        self.reconnect_if_closed();
        let mut replies = self.execute_batch(&mut batch);
        super::hand_back_stored(batch, &mut replies);
        replies
    }

    /// Cluster mode: the shared limits' expired rows go, every
    /// [`SHARED_LIMIT_PRUNE_INTERVAL`] (from the first idle moment on).
    fn idle(&mut self) {
        let due = self
            .limits_pruned_at
            .is_none_or(|at| at.elapsed() >= SHARED_LIMIT_PRUNE_INTERVAL);
        if !self.cluster || !due {
            return;
        }
        self.limits_pruned_at = Some(std::time::Instant::now());
        self.reconnect_if_closed();
        if let Err(error) = self.in_transaction(limits::prune) {
            log::warn!("storage: cannot prune the shared login limits: {error}");
        }
    }

    fn finish(&mut self) {
        self.reconnect_if_closed();
        if let Err(error) = self.in_transaction(server_state::mark_stopped) {
            log::error!("storage: cannot record the clean shutdown: {error}");
        }
    }
}

/// Executes one command inside the batch's transaction: the one place a
/// [`Command`] meets the function that carries it out, grouped by file.
fn apply(batch: &mut Batch, command: &Command) -> Result<Option<Reply>, Error> {
    match command {
        // accounts.rs
        Command::CreateUser {
            to,
            username,
            email,
            hash,
            now,
            shared,
        } => {
            accounts::create_user(batch, to, username, email, hash, *now, shared.as_ref()).map(Some)
        }
        Command::FetchCredentials {
            to,
            username,
            shared,
        } => accounts::fetch_credentials(batch, to, username, shared.as_ref()).map(Some),
        Command::LookUp {
            to,
            ticket,
            usernames,
            group_id,
        } => accounts::look_up(batch, (to, *ticket), usernames, *group_id).map(Some),
        Command::EndSharedLogin {
            username,
            shared,
            verdict,
        } => limits::end_login(batch, username, shared, *verdict).map(|()| None),
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
        Command::Sessions { to, user_id } => accounts::sessions(batch, to, *user_id).map(Some),
        Command::EndSession { to, session_hash } => {
            accounts::end_session(batch, to, session_hash).map(Some)
        }
        Command::ConnectionLost {
            user_id,
            username,
            session_hash,
            last,
            groups_taken,
            now,
        } => accounts::connection_lost(
            batch,
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
            accounts::purge_sessions(batch, *idle_before).map(|()| None)
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
        } => delivery::mark_delivered(batch, *user_id, message_ids).map(|()| None),
        Command::Requeue {
            user_id,
            from_message_id,
        } => delivery::requeue(batch, *user_id, *from_message_id).map(|()| None),
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
        } => contacts::add_contact(batch, to, *owner_id, owner_name, *contact_id, *now).map(Some),
        Command::RemoveContact {
            to,
            owner_id,
            contact_id,
        } => contacts::remove_contact(batch, to, *owner_id, *contact_id).map(Some),
        Command::Directory { to, owner_id } => contacts::directory(batch, to, *owner_id).map(Some),
        // groups.rs
        Command::CreateGroup {
            to,
            name,
            member_ids,
            now,
        } => {
            let through = server_state::id_boundary(batch)? - 1;
            groups::create_group(batch, to, name, member_ids, through, *now).map(Some)
        }
        Command::AddGroupMembers {
            to,
            group_id,
            member_ids,
            now,
        } => {
            let through = server_state::id_boundary(batch)? - 1;
            groups::add_group_members(batch, to, *group_id, member_ids, through, *now).map(Some)
        }
        Command::LeaveGroup {
            to,
            user_id,
            group_id,
        } => groups::leave_group(batch, to, *user_id, *group_id).map(Some),
        // keys.rs
        Command::SetKey {
            to,
            user_id,
            username,
            public_key,
        } => keys::set_key(batch, to, *user_id, username, public_key).map(Some),
        Command::GetKey {
            to,
            user_id,
            username,
        } => keys::get_key(batch, to, *user_id, username).map(Some),
        // cluster.rs
        Command::Heartbeat {
            node_id,
            stamp,
            online,
            expire_after_ms,
            known,
        } => {
            cluster::heartbeat(batch, node_id, (*stamp, online), *expire_after_ms, known).map(Some)
        }
        Command::PresenceOf { changes } => cluster::presence_of(batch, changes).map(Some),
    }
}

/// A new connection, with the session settings every one needs: commits
/// wait for the write-ahead log on disk (the Ack's promise), whatever the
/// server's default.
/// Takes the server lock, waiting up to `wait` for a server that is going
/// away (after a `kill -9` PostgreSQL frees its lock when it sees the
/// connection close, which may take a moment).
fn claim_within(client: &mut Client, wait: std::time::Duration) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if schema::claim(client)? {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::InUse);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn connect(config: &postgres::Config) -> Result<Client, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute("SET synchronous_commit = on")?;
    Ok(client)
}

/// The client's error with what caused it (its own text is only "db
/// error" or "error connecting to server").
fn explain(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// `postgres://USER@HOST:PORT/DB` of a parsed URL: never the password.
fn location(config: &postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// A URL that did not parse, shown without anything between `://` and `@`
/// (where a password would be).
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The wall clock in Unix seconds (message times are in it).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The location the log and errors name has no password in it.
    #[test]
    fn the_location_never_shows_the_password() {
        let config: postgres::Config = "postgres://chat:s3cret@db.example:6543/chatdb"
            .parse()
            .unwrap();
        assert_eq!(location(&config), "postgres://chat@db.example:6543/chatdb");
        assert_eq!(
            redacted("postgres://chat:s3cret@db/x?bad"),
            "postgres://…@db/x?bad"
        );
    }
}
