//! How storage starts: [`open`] chooses the backend (the one place one is
//! chosen: SQLite in the data directory, which it creates, or PostgreSQL),
//! takes over from the previous run ([`begin_run`], the crash-recovery
//! policy) and starts the storage thread.
//!
//! The crash-recovery policy, whichever the backend: message ids are handed
//! out by storage from a counter that commits with the messages
//! (`ids_reserved_through`, see `storage/ids.rs`), so a start needs no
//! repair after a crash: the counter is past anything any run handed out.
//! A database from before the counter has no mark: then the start moves it
//! past the highest stored id, and after a crash past every id that could
//! have been in flight (when the loop assigned ids before the commit). The
//! start sets the running mark. The backend only reads and writes the marks
//! ([`Backend::previous_run`], [`Backend::begin_run`]); the decisions are
//! here, so a second backend inherits them.

use std::fmt;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::postgres::PostgresBackend;
use super::sqlite::SqliteBackend;
use super::{Backend, DatabaseError, GroupRow, Snapshot, StorageHandle};
use crate::completion::CompletionSender;
use crate::config::{Config, Database, STORAGE_BATCH_MAX, STORAGE_QUEUE_MAX};
use crate::metrics::Histograms;

/// Why storage could not be opened. The server does not start; each
/// variant says what to fix.
#[derive(Debug)]
pub enum OpenError {
    /// The data directory could not be created (mode 0700): check the
    /// parent's permissions and free space.
    DataDir {
        /// The `--data-dir`.
        path: PathBuf,
        /// What the system said.
        error: io::Error,
    },
    /// The database refused (unreadable file, newer schema, disk error,
    /// PostgreSQL unreachable): fix the data directory or the database and
    /// start again.
    Database {
        /// Where the database is (its file, or its URL without password).
        location: String,
        /// The backend's own error.
        error: DatabaseError,
    },
    /// A storage thread (the writer or the checkpointer) could not be
    /// started: the process is out of threads or memory.
    Thread(io::Error),
}

impl OpenError {
    /// The database at `location` refused with `error`.
    pub fn database(location: impl fmt::Display, error: impl Into<DatabaseError>) -> Self {
        OpenError::Database {
            location: location.to_string(),
            error: error.into(),
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::DataDir { path, error } => {
                write!(
                    f,
                    "cannot create the data directory {}: {error}",
                    path.display()
                )
            }
            OpenError::Database { location, error } => {
                write!(f, "cannot open the database {location}: {error}")
            }
            OpenError::Thread(error) => write!(f, "cannot start a storage thread: {error}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// What a backend finds at open, left by the previous run.
#[derive(Debug, Default)]
pub struct PreviousRun {
    /// Every account, `(username, user_id)`.
    pub users: Vec<(String, i64)>,
    /// Every group with its members.
    pub groups: Vec<GroupRow>,
    /// The highest message id stored (0 for none).
    pub highest_stored_id: i64,
    /// The id counter: every id any run handed out is at or below it
    /// (`None`: a database from before the counter).
    pub ids_reserved_through: Option<i64>,
    /// The running mark was still set: the previous run did not shut down
    /// cleanly.
    pub was_running: bool,
}

/// Opens the storage `config` names and starts its thread, whose replies go
/// to `done`: the loop's handle, and the snapshot the loop starts from.
pub fn open(
    config: &Config,
    done: CompletionSender,
    histograms: Histograms,
) -> Result<(StorageHandle, Snapshot), OpenError> {
    let mut opened = open_backend(config)?;
    let snapshot = begin_run(opened.backend.as_mut())
        .map_err(|error| OpenError::database(&opened.location, error))?;
    log::info!(
        "database {} ({} accounts, next message id {}; {})",
        opened.location,
        snapshot.users.len(),
        snapshot.next_message_id,
        opened.durability
    );
    let queue = (STORAGE_QUEUE_MAX, STORAGE_BATCH_MAX);
    let handle =
        StorageHandle::start(opened.backend, queue, done, histograms).map_err(OpenError::Thread)?;
    Ok((handle, snapshot))
}

/// Reads what the previous run left, moves the id counter past every id it
/// can have handed out and sets the running mark (durably, before the loop
/// starts), and returns what the loop starts from.
pub fn begin_run(backend: &mut dyn Backend) -> Result<Snapshot, DatabaseError> {
    let previous = backend.previous_run()?;
    if previous.was_running {
        // Nothing to repair: the counter is past every id handed out. (In
        // a cluster the mark is set while any server runs.)
        log::warn!("the previous run did not shut down cleanly (or another server runs)");
    }
    let next_message_id = first_unreserved_id(&previous);
    backend.begin_run(next_message_id - 1)?;
    Ok(Snapshot {
        users: previous.users,
        next_message_id,
        groups: previous.groups,
        recovered_from_crash: previous.was_running,
    })
}

/// The first id no earlier run can have handed out: past the counter. A
/// database from before the counter has none; then past the
/// highest stored id, and past every id that could have been in flight (a
/// full storage queue and a batch) if that run crashed.
pub fn first_unreserved_id(previous: &PreviousRun) -> i64 {
    let highest_stored = previous.highest_stored_id;
    let reserved = match previous.ids_reserved_through {
        Some(reserved) => reserved,
        None if previous.was_running => {
            highest_stored + (STORAGE_QUEUE_MAX + STORAGE_BATCH_MAX) as i64
        }
        None => highest_stored,
    };
    reserved.max(highest_stored) + 1
}

/// A backend as opened, with what the start-up log says of it.
struct Opened {
    backend: Box<dyn Backend>,
    /// Where its data is.
    location: String,
    /// What an Ack survives.
    durability: &'static str,
}

/// Opens the backend `config` names: the one place a backend is chosen.
/// SQLite in the data directory unless `--database` names PostgreSQL.
fn open_backend(config: &Config) -> Result<Opened, OpenError> {
    match &config.database {
        Database::Sqlite => open_sqlite(config),
        Database::Postgres(url) => open_postgres(url, config.cluster.is_some()),
    }
}

/// PostgreSQL at `url` (shared with the other servers of a cluster when
/// `cluster`); an Ack waits for the commit's write-ahead log to reach the
/// database server's disk.
fn open_postgres(url: &str, cluster: bool) -> Result<Opened, OpenError> {
    let backend = PostgresBackend::open(url, cluster)?;
    Ok(Opened {
        location: backend.location().to_owned(),
        backend: Box::new(backend),
        durability: "PostgreSQL, synchronous_commit=on: acks survive a crash of either process",
    })
}

/// SQLite's `chat.db` in the data directory, which is created (0700) if
/// missing.
fn open_sqlite(config: &Config) -> Result<Opened, OpenError> {
    create_private_dir(&config.data_dir).map_err(|error| OpenError::DataDir {
        path: config.data_dir.clone(),
        error,
    })?;
    let path = config.database_path();
    let mut backend = SqliteBackend::open(&path, config.synchronous_full)?;
    if config.json_mirror {
        backend = backend.with_json_mirror(config.data_dir.clone());
        log::info!(
            "mirroring users.json and contacts.json in {}",
            config.data_dir.display()
        );
    }
    let durability = if config.synchronous_full {
        "synchronous=FULL: acks survive power loss"
    } else {
        "synchronous=NORMAL: acks survive a process crash"
    };
    Ok(Opened {
        backend: Box::new(backend),
        location: path.display().to_string(),
        durability,
    })
}

/// Creates the data directory (and missing parents) readable by the owner
/// only (0700), like the files in it; an existing directory keeps its mode.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn previous(reserved: Option<i64>, highest_stored_id: i64, was_running: bool) -> PreviousRun {
        PreviousRun {
            ids_reserved_through: reserved,
            highest_stored_id,
            was_running,
            ..PreviousRun::default()
        }
    }

    /// With a reserved mark, a start begins just past it, crash or not: the
    /// crashed run handed out nothing beyond it.
    #[test]
    fn a_start_begins_past_the_last_reserved_block() {
        assert_eq!(first_unreserved_id(&previous(Some(2048), 10, false)), 2049);
        assert_eq!(first_unreserved_id(&previous(Some(2048), 10, true)), 2049);
        assert_eq!(first_unreserved_id(&previous(Some(0), 0, false)), 1);
    }

    /// Stored ids past the mark (which no run writes) still win: no id is
    /// handed out twice.
    #[test]
    fn a_start_never_begins_at_or_below_a_stored_id() {
        assert_eq!(first_unreserved_id(&previous(Some(5), 10, false)), 11);
    }

    /// A database from before reservations: past the highest stored id, and
    /// after a crash past every id that could have been in flight.
    #[test]
    fn a_database_without_reservations_skips_what_may_have_been_in_flight() {
        assert_eq!(first_unreserved_id(&previous(None, 10, false)), 11);
        let in_flight = (STORAGE_QUEUE_MAX + STORAGE_BATCH_MAX) as i64;
        assert_eq!(
            first_unreserved_id(&previous(None, 10, true)),
            10 + in_flight + 1
        );
    }

    fn config(data_dir: &Path, json_mirror: bool) -> Config {
        use clap::Parser;
        let mut args = vec!["chat-server", "--data-dir", data_dir.to_str().unwrap()];
        if json_mirror {
            args.push("--json-mirror");
        }
        Config::from_cli(&crate::config::Cli::parse_from(args)).unwrap()
    }

    fn open_storage(config: &Config) -> Result<(StorageHandle, Snapshot), OpenError> {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let (done, _replies) = crate::completion::channel(std::sync::Arc::new(waker));
        open(config, done, Histograms::default())
    }

    /// `open` creates the data directory and database, and a clean finish
    /// lets the next open begin where it was with no crash reported.
    #[test]
    fn open_creates_the_storage_and_reopens_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir.path().join("data"), true);
        let (mut storage, first) = open_storage(&config).unwrap();
        assert!(config.database_path().is_file());
        assert_eq!(first.next_message_id, 1);
        storage.finish();
        assert!(
            config.data_dir.join("users.json").is_file(),
            "the JSON mirror is flushed at the finish"
        );
        let (_storage, second) = open_storage(&config).unwrap();
        assert!(!second.recovered_from_crash);
        assert_eq!(second.next_message_id, 1);
    }

    /// A data directory that cannot be created is refused with its path.
    #[test]
    fn an_uncreatable_data_directory_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let error = open_storage(&config(&file.join("data"), false))
            .err()
            .unwrap();
        assert!(matches!(error, OpenError::DataDir { .. }), "{error:?}");
        assert!(error.to_string().contains("a-file/data"), "{error}");
    }

    /// `--database` takes a PostgreSQL URL, and not with `--json-mirror`
    /// (whose files are SQLite's); without it the database is SQLite.
    #[test]
    fn the_database_flag_chooses_postgres_and_is_checked() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let mut all = vec!["chat-server"];
            all.extend_from_slice(args);
            Config::from_cli(&crate::config::Cli::parse_from(all))
        };
        assert_eq!(parse(&[]).unwrap().database, Database::Sqlite);
        let url = "postgres://chat@127.0.0.1/chat";
        assert_eq!(
            parse(&["--database", url]).unwrap().database,
            Database::Postgres(url.into())
        );
        assert!(parse(&["--database", "/var/lib/chat.db"]).is_err());
        assert!(parse(&["--database", url, "--json-mirror"]).is_err());
    }

    /// A file that is not a database is refused, naming the file.
    #[test]
    fn a_database_that_is_not_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), false);
        std::fs::write(config.database_path(), vec![b'x'; 4096]).unwrap();
        let error = open_storage(&config).err().unwrap();
        assert!(matches!(error, OpenError::Database { .. }), "{error:?}");
        assert!(error.to_string().contains("chat.db"), "{error}");
    }
}
