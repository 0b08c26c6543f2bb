//! The original system's JSON compatibility files, `users.json` and
//! `contacts.json`: export, import, and the mirror the storage thread keeps.
//!
//! The Python server kept these two files beside its SQLite database. Here
//! SQLite is the only truth and the files are a copy of its `users` and
//! `contacts` tables: written by `chat-server export-json DIR`, read by
//! `chat-server import-json DIR`, and kept current in the data directory by
//! the storage thread when the server runs with `--json-mirror`. The schemas
//! are in README.md ("JSON compatibility files").
//!
//! Every file is written by the rename protocol: the bytes go to a fresh
//! `.NAME.tmp` in the same directory (mode 0600), are fsynced, the temp file
//! is renamed over `NAME`, and the directory is fsynced. A reader sees the old
//! complete file or the new complete file, never part of one; a crash leaves
//! at most a stale temp file, which no reader opens and the next write
//! replaces. `users.json` is renamed before `contacts.json`, and users are
//! never deleted, so `contacts.json` never names a user `users.json` lacks.
//!
//! An import checks everything before its first write and writes in one
//! transaction, so a refused file changes nothing.
//!
//! Like [`super::sqlite`], this module runs SQL, but only on a connection it
//! is handed: the subcommands' own (the server is not running) or the storage
//! thread's (the mirror). It never opens a second writer beside a server.
//!
//! With `--database postgres://…` the subcommands work on PostgreSQL
//! ([`JsonDatabase`]; its SQL is in `storage/postgres/json_tables.rs`): the
//! same files, the same checks, the same one transaction, and users and
//! contacts in the same order (by id), so a round trip SQLite → files →
//! PostgreSQL → files gives the same files.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::sqlite::schema;
use crate::password;

/// The accounts file.
pub const USERS_FILE: &str = "users.json";
/// The contact-list file.
pub const CONTACTS_FILE: &str = "contacts.json";
/// The `version` both files carry; an import refuses any other.
pub const FORMAT_VERSION: u32 = 1;

/// Largest file an import reads: 256 MiB. A user record is about 300 bytes,
/// so this is some 800,000 accounts — far past what one server holds — while
/// a file that is not ours cannot make the import allocate without bound.
pub const FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Shortest time between two mirror writes. Each write reads both tables and
/// fsyncs two files; once a second keeps a registration storm from turning
/// into a write storm, and the files lag the database by about that much.
pub const MIRROR_DEBOUNCE: Duration = Duration::from_secs(1);

/// `users.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    version: u32,
    users: Vec<UserRecord>,
}

/// One account. `user_id` is not kept: an import assigns new ids, and
/// contacts refer to users by name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserRecord {
    pub(crate) username: String,
    pub(crate) email: String,
    /// The PHC string (`$pbkdf2-sha256$i=N$salt$hash`): iterations, salt, hash.
    pub(crate) password_hash: String,
    /// The salt alone, as the original schema kept it; must match the PHC's.
    pub(crate) salt: String,
    #[serde(default)]
    pub(crate) public_key: Option<String>,
    /// Unix seconds.
    pub(crate) created_at: i64,
    /// Unix seconds of the last login or logout, if any.
    #[serde(default)]
    pub(crate) last_activity: Option<i64>,
}

/// `contacts.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactsFile {
    version: u32,
    contacts: Vec<ContactRecord>,
}

/// `owner` has `contact` in their list (one direction; a mutual pair is two).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContactRecord {
    pub(crate) owner: String,
    pub(crate) contact: String,
    /// Unix seconds.
    pub(crate) created_at: i64,
}

/// Why an export, import or mirror write did not happen.
#[derive(Debug)]
pub enum JsonFileError {
    /// `<data-dir>/chat.db` does not exist, so there is nothing to export:
    /// check `--data-dir`.
    NoDatabase(PathBuf),
    /// A file or directory could not be read or written (missing, no
    /// permission, disk full). An import changed nothing; an export or mirror
    /// write left the previous file whole. Fix the path and run again (the
    /// mirror retries by itself).
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A file is not JSON of the documented schema or breaks one of its rules
    /// (version, username, email, hash, duplicate, unknown user). The import
    /// was refused and changed nothing: fix the entry the reason names and
    /// run again.
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry (`users[3] ("bob"): ...`).
        reason: String,
    },
    /// SQLite failed (busy, disk error, a newer schema). An import was rolled
    /// back whole. Make sure no server runs on the data directory, or fix the
    /// database, and run again.
    Database(rusqlite::Error),
    /// PostgreSQL (`--database`) refused, could not be reached, or holds a
    /// newer schema. An import was rolled back whole. Check the URL and
    /// that PostgreSQL runs, and run again.
    Postgres(String),
}

impl fmt::Display for JsonFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonFileError::NoDatabase(path) => write!(f, "no database at {}", path.display()),
            JsonFileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            JsonFileError::Malformed { path, reason } => write!(
                f,
                "{}: refused, nothing was imported: {reason}",
                path.display()
            ),
            JsonFileError::Database(error) => write!(f, "database: {error}"),
            JsonFileError::Postgres(problem) => write!(f, "database: {problem}"),
        }
    }
}

impl std::error::Error for JsonFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JsonFileError::Io { source, .. } => Some(source),
            JsonFileError::Database(error) => Some(error),
            JsonFileError::NoDatabase(_)
            | JsonFileError::Malformed { .. }
            | JsonFileError::Postgres(_) => None,
        }
    }
}

impl From<rusqlite::Error> for JsonFileError {
    fn from(error: rusqlite::Error) -> Self {
        JsonFileError::Database(error)
    }
}

/// Wraps an I/O error with the path it happened on.
fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JsonFileError + '_ {
    move |source| JsonFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> JsonFileError {
    JsonFileError::Malformed {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What an export wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct ExportReport {
    /// Accounts in `users.json`.
    pub users: usize,
    /// Entries in `contacts.json`.
    pub contacts: usize,
    /// The directory holding both files.
    pub dir: PathBuf,
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exported {} users and {} contacts to {} ({USERS_FILE}, {CONTACTS_FILE})",
            self.users,
            self.contacts,
            self.dir.display()
        )
    }
}

/// What an import did.
#[derive(Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// Accounts created.
    pub users_imported: usize,
    /// Accounts whose username was already taken; left as they were.
    pub users_skipped: usize,
    /// Contact entries added.
    pub contacts_imported: usize,
    /// Contact entries the database already had.
    pub contacts_skipped: usize,
    /// The directory read.
    pub dir: PathBuf,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imported {} users ({} skipped: already present), \
             {} contacts ({} skipped: already present) from {}",
            self.users_imported,
            self.users_skipped,
            self.contacts_imported,
            self.contacts_skipped,
            self.dir.display()
        )
    }
}

/// Opens `<data_dir>/chat.db` for the `export-json` and `import-json`
/// subcommands. With `create`, a missing directory (mode 0700) and database
/// (mode 0600) are created, as the server would; without it a missing
/// database is [`JsonFileError::NoDatabase`].
pub fn open_database(data_dir: &Path, create: bool) -> Result<Connection, JsonFileError> {
    let path = data_dir.join("chat.db");
    if create {
        create_private_dir(data_dir)?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
    } else if !path.is_file() {
        return Err(JsonFileError::NoDatabase(path));
    }
    let mut conn = Connection::open(&path)?;
    schema::prepare(&mut conn, false)?;
    Ok(conn)
}

/// Whether the database says a server is running on it — or crashed without
/// a clean shutdown, which looks the same. The subcommands warn about it.
pub fn marked_running(conn: &Connection) -> Result<bool, JsonFileError> {
    let running = conn
        .query_row(
            "SELECT value FROM server_state WHERE key = 'running'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .optional()?;
    Ok(running == Some(1))
}

/// Writes `users.json` and `contacts.json` into `dir` (created if missing),
/// each atomically, from one consistent read of the database.
pub fn export(conn: &Connection, dir: &Path) -> Result<ExportReport, JsonFileError> {
    let (users, contacts) = read_tables(conn)?;
    write_files(users, contacts, dir)
}

/// Writes both files from the tables' rows (users first).
fn write_files(
    users: Vec<UserRecord>,
    contacts: Vec<ContactRecord>,
    dir: &Path,
) -> Result<ExportReport, JsonFileError> {
    create_private_dir(dir)?;
    let report = ExportReport {
        users: users.len(),
        contacts: contacts.len(),
        dir: dir.to_path_buf(),
    };
    let users = UsersFile {
        version: FORMAT_VERSION,
        users,
    };
    write_atomically(&dir.join(USERS_FILE), &to_json(&users))?;
    // Second, so that it never names a user the users file lacks.
    let contacts = ContactsFile {
        version: FORMAT_VERSION,
        contacts,
    };
    write_atomically(&dir.join(CONTACTS_FILE), &to_json(&contacts))?;
    Ok(report)
}

/// [`export`] for the storage thread's mirror of the data directory. It
/// starts a read transaction, so call it between batches, not inside one.
pub fn write_mirror(conn: &Connection, dir: &Path) -> Result<(), JsonFileError> {
    export(conn, dir).map(drop)
}

/// Loads `users.json` and `contacts.json` from `dir` into the database. A
/// user whose username exists is skipped and left as it is; contacts are
/// matched by username, so they join imported and existing users alike.
/// Everything is checked before the first write, and all is written in one
/// transaction: on any error nothing has changed.
pub fn import(conn: &mut Connection, dir: &Path) -> Result<ImportReport, JsonFileError> {
    import_loaded(conn, &load(dir)?)
}

/// Both files of a directory, read and checked as far as they can be
/// without a database.
#[derive(Debug)]
pub struct Loaded {
    dir: PathBuf,
    users: UsersFile,
    contacts: ContactsFile,
}

/// The first half of [`import`]: reads and checks both files, touching no
/// database — so a caller can refuse a bad directory before it creates one.
pub fn load(dir: &Path) -> Result<Loaded, JsonFileError> {
    let users_path = dir.join(USERS_FILE);
    let contacts_path = dir.join(CONTACTS_FILE);
    let users: UsersFile = read_json(&users_path)?;
    let contacts: ContactsFile = read_json(&contacts_path)?;
    check_version(&users_path, users.version)?;
    check_version(&contacts_path, contacts.version)?;
    check_users(&users_path, &users.users)?;
    check_contacts(&contacts_path, &contacts.contacts)?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        users,
        contacts,
    })
}

/// The second half of [`import`]: the checks against the database, then the
/// writes, in one transaction.
pub fn import_loaded(
    conn: &mut Connection,
    loaded: &Loaded,
) -> Result<ImportReport, JsonFileError> {
    let (users, contacts) = (&loaded.users.users, &loaded.contacts.contacts);
    // IMMEDIATE takes the write lock first, so nothing can change between the
    // checks against the database and the writes.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let contacts_path = loaded.dir.join(CONTACTS_FILE);
    {
        let mut exists =
            tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM users WHERE username = ?1)")?;
        check_contacts_name_users(&contacts_path, contacts, users, |name| {
            Ok(exists.query_row([name], |row| row.get(0))?)
        })?;
    }
    let (users_imported, users_skipped) = insert_users(&tx, users)?;
    let (contacts_imported, contacts_skipped) = insert_contacts(&tx, contacts)?;
    tx.commit()?;
    Ok(loaded.report(
        (users_imported, users_skipped),
        (contacts_imported, contacts_skipped),
    ))
}

impl Loaded {
    /// The users and the contacts read.
    pub(crate) fn records(&self) -> (&[UserRecord], &[ContactRecord]) {
        (&self.users.users, &self.contacts.contacts)
    }

    /// Where `contacts.json` was read.
    pub(crate) fn contacts_path(&self) -> PathBuf {
        self.dir.join(CONTACTS_FILE)
    }

    /// The report of an import of these files: `(imported, skipped)` users
    /// and contacts.
    pub(crate) fn report(&self, users: (usize, usize), contacts: (usize, usize)) -> ImportReport {
        ImportReport {
            users_imported: users.0,
            users_skipped: users.1,
            contacts_imported: contacts.0,
            contacts_skipped: contacts.1,
            dir: self.dir.clone(),
        }
    }
}

/// The database the `export-json` and `import-json` subcommands work on:
/// `<data-dir>/chat.db`, or PostgreSQL with `--database`.
pub enum JsonDatabase {
    /// The SQLite database of a data directory.
    Sqlite(Connection),
    /// A PostgreSQL database (`storage/postgres/json_tables.rs`).
    Postgres(Box<postgres::Client>),
}

impl JsonDatabase {
    /// Opens the database: PostgreSQL when `database` names one (its schema
    /// made or migrated as a server's start would), otherwise
    /// `<data_dir>/chat.db` as [`open_database`] does.
    pub fn open(
        database: Option<&str>,
        data_dir: &Path,
        create: bool,
    ) -> Result<JsonDatabase, JsonFileError> {
        match database {
            Some(url) => Ok(JsonDatabase::Postgres(Box::new(
                super::postgres::json_tables::open(url)?,
            ))),
            None => Ok(JsonDatabase::Sqlite(open_database(data_dir, create)?)),
        }
    }

    /// See [`marked_running`].
    pub fn marked_running(&mut self) -> Result<bool, JsonFileError> {
        match self {
            JsonDatabase::Sqlite(conn) => marked_running(conn),
            JsonDatabase::Postgres(client) => super::postgres::json_tables::marked_running(client),
        }
    }

    /// See [`export`].
    pub fn export(&mut self, dir: &Path) -> Result<ExportReport, JsonFileError> {
        match self {
            JsonDatabase::Sqlite(conn) => export(conn, dir),
            JsonDatabase::Postgres(client) => {
                let (users, contacts) = super::postgres::json_tables::read_tables(client)?;
                write_files(users, contacts, dir)
            }
        }
    }

    /// See [`import_loaded`].
    pub fn import_loaded(&mut self, loaded: &Loaded) -> Result<ImportReport, JsonFileError> {
        match self {
            JsonDatabase::Sqlite(conn) => import_loaded(conn, loaded),
            JsonDatabase::Postgres(client) => super::postgres::json_tables::import(client, loaded),
        }
    }
}

/// Keeps `users.json` and `contacts.json` in a directory current, for the
/// storage thread: [`Mirror::mark_dirty`] after a batch that changed users
/// or contacts, [`Mirror::idle`] from the idle hook, [`Mirror::flush`] at a
/// clean shutdown. Failures are logged (once per run of failures) and
/// retried; they never stop the server.
#[derive(Debug)]
pub struct Mirror {
    dir: PathBuf,
    /// Something changed since the last successful write.
    dirty: bool,
    last_attempt: Option<Instant>,
    failing: bool,
}

impl Mirror {
    /// A mirror into `dir` (the data directory). It starts dirty, so the
    /// first idle moment writes the files as the database is at start.
    pub fn new(dir: PathBuf) -> Mirror {
        Mirror {
            dir,
            dirty: true,
            last_attempt: None,
            failing: false,
        }
    }

    /// Records that users or contacts changed (a registration, a contact
    /// added or removed, a key published, a login or logout).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Writes the files if something changed and the last attempt is at
    /// least [`MIRROR_DEBOUNCE`] ago.
    pub fn idle(&mut self, conn: &Connection) {
        let due = self
            .last_attempt
            .is_none_or(|at| at.elapsed() >= MIRROR_DEBOUNCE);
        if self.dirty && due {
            self.write(conn);
        }
    }

    /// Writes the files now if anything changed since the last write.
    pub fn flush(&mut self, conn: &Connection) {
        if self.dirty {
            self.write(conn);
        }
    }

    fn write(&mut self, conn: &Connection) {
        self.last_attempt = Some(Instant::now());
        match write_mirror(conn, &self.dir) {
            Ok(()) => {
                if self.failing {
                    log::info!("json mirror: writing again");
                }
                self.dirty = false;
                self.failing = false;
            }
            Err(error) => {
                if !self.failing {
                    log::error!("json mirror: {error} (retrying every second)");
                }
                self.failing = true;
            }
        }
    }
}

/// Both tables, in id order, from one read transaction.
fn read_tables(conn: &Connection) -> rusqlite::Result<(Vec<UserRecord>, Vec<ContactRecord>)> {
    let tx = conn.unchecked_transaction()?;
    let users = tx
        .prepare_cached(
            "SELECT username, email, password_hash, salt, public_key, created_at, last_activity
             FROM users ORDER BY user_id",
        )?
        .query_map([], |row| {
            Ok(UserRecord {
                username: row.get(0)?,
                email: row.get(1)?,
                password_hash: row.get(2)?,
                salt: row.get(3)?,
                public_key: row.get(4)?,
                created_at: row.get(5)?,
                last_activity: row.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let contacts = tx
        .prepare_cached(
            "SELECT owner.username, contact.username, contacts.created_at
             FROM contacts
             JOIN users AS owner ON owner.user_id = contacts.owner_id
             JOIN users AS contact ON contact.user_id = contacts.contact_id
             ORDER BY contacts.owner_id, contacts.contact_id",
        )?
        .query_map([], |row| {
            Ok(ContactRecord {
                owner: row.get(0)?,
                contact: row.get(1)?,
                created_at: row.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok((users, contacts))
}

/// Pretty JSON with a final newline, as a person would want to read it.
fn to_json(value: &impl Serialize) -> Vec<u8> {
    // ok: structs of strings and numbers cannot fail to serialize.
    let mut bytes = serde_json::to_vec_pretty(value).expect("plain structs always serialize"); // ok: see above
    bytes.push(b'\n');
    bytes
}

fn create_private_dir(dir: &Path) -> Result<(), JsonFileError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))
}

/// The rename protocol (see the module docs): `path` ends up holding exactly
/// `bytes`, or keeps what it held.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), JsonFileError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        let error = io::Error::new(io::ErrorKind::InvalidInput, "not a file path");
        return Err(io_error(path)(error));
    };
    let temp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // A leftover from a crash is removed, not reused: `create_new` (O_EXCL)
    // then makes a fresh file with our mode and never follows a symlink.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(&temp)(error)),
    }
    let written = write_and_sync(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error(path)(error));
    }
    // The rename is an entry in the directory: sync that too, so it survives
    // a power loss and not only a crash of the process.
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))
}

fn write_and_sync(temp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads and parses one file, refusing one past [`FILE_BYTES_MAX`].
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, JsonFileError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut bytes = Vec::new();
    file.take(FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() as u64 > FILE_BYTES_MAX {
        return Err(malformed(
            path,
            format!("larger than {FILE_BYTES_MAX} bytes"),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|error| malformed(path, error.to_string()))
}

fn check_version(path: &Path, version: u32) -> Result<(), JsonFileError> {
    if version == FORMAT_VERSION {
        return Ok(());
    }
    Err(malformed(
        path,
        format!("version {version} is not supported (this server reads version {FORMAT_VERSION})"),
    ))
}

/// Every account must be one the server could have created, and log in.
fn check_users(path: &Path, users: &[UserRecord]) -> Result<(), JsonFileError> {
    let mut seen = HashSet::new();
    for (index, user) in users.iter().enumerate() {
        let problem = user_problem(user).or_else(|| {
            (!seen.insert(user.username.as_str())).then_some("the username appears twice")
        });
        if let Some(problem) = problem {
            return Err(malformed(
                path,
                format!("users[{index}] ({:?}): {problem}", user.username),
            ));
        }
    }
    Ok(())
}

fn user_problem(user: &UserRecord) -> Option<&'static str> {
    if !protocol::validate::is_valid_username(&user.username) {
        return Some("the username is not 3-32 characters of A-Z a-z 0-9 _ . -");
    }
    if !protocol::validate::is_valid_email(&user.email) {
        return Some("the email is not an address");
    }
    if user.password_hash.len() > password::PHC_BYTES_MAX {
        return Some("password_hash is longer than 256 bytes");
    }
    match password::phc_salt(&user.password_hash) {
        None => return Some("password_hash is not a pbkdf2-sha256 PHC string"),
        Some(salt) if salt != user.salt => {
            return Some("salt differs from the salt inside password_hash")
        }
        Some(_) => {}
    }
    let key_bytes = user.public_key.as_ref().map_or(0, String::len);
    if key_bytes > protocol::validate::PUBLIC_KEY_BYTES_MAX {
        return Some("public_key is longer than 4096 bytes");
    }
    None
}

/// The checks that need no database: names, self-contacts, duplicates.
fn check_contacts(path: &Path, contacts: &[ContactRecord]) -> Result<(), JsonFileError> {
    let mut seen = HashSet::new();
    for (index, entry) in contacts.iter().enumerate() {
        let problem = if !protocol::validate::is_valid_username(&entry.owner)
            || !protocol::validate::is_valid_username(&entry.contact)
        {
            Some("a username is not 3-32 characters of A-Z a-z 0-9 _ . -")
        } else if entry.owner == entry.contact {
            Some("a user cannot be their own contact")
        } else if !seen.insert((entry.owner.as_str(), entry.contact.as_str())) {
            Some("the entry appears twice")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(malformed(
                path,
                format!(
                    "contacts[{index}] ({:?} -> {:?}): {problem}",
                    entry.owner, entry.contact
                ),
            ));
        }
    }
    Ok(())
}

/// Every name in the contacts must be a user of the file or of the database
/// (`exists` asks the database, inside the import's transaction).
pub(crate) fn check_contacts_name_users(
    path: &Path,
    contacts: &[ContactRecord],
    users: &[UserRecord],
    mut exists: impl FnMut(&str) -> Result<bool, JsonFileError>,
) -> Result<(), JsonFileError> {
    let in_file: HashSet<&str> = users.iter().map(|user| user.username.as_str()).collect();
    for (index, entry) in contacts.iter().enumerate() {
        for (role, name) in [("owner", &entry.owner), ("contact", &entry.contact)] {
            if in_file.contains(name.as_str()) || exists(name)? {
                continue;
            }
            return Err(malformed(
                path,
                format!(
                    "contacts[{index}]: {role} {name:?} is in neither {USERS_FILE} nor the database"
                ),
            ));
        }
    }
    Ok(())
}

/// Inserts the users whose names are free; returns (inserted, skipped).
fn insert_users(tx: &Transaction, users: &[UserRecord]) -> rusqlite::Result<(usize, usize)> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO users
             (username, email, password_hash, salt, public_key, created_at, last_activity)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut inserted = 0;
    for user in users {
        inserted += insert.execute(params![
            user.username,
            user.email,
            user.password_hash,
            user.salt,
            user.public_key,
            user.created_at,
            user.last_activity
        ])?;
    }
    Ok((inserted, users.len() - inserted))
}

/// Inserts the contact entries the database lacks; returns (inserted, skipped).
fn insert_contacts(
    tx: &Transaction,
    contacts: &[ContactRecord],
) -> rusqlite::Result<(usize, usize)> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO contacts (owner_id, contact_id, created_at)
         SELECT owner.user_id, contact.user_id, ?3
         FROM users AS owner, users AS contact
         WHERE owner.username = ?1 AND contact.username = ?2",
    )?;
    let mut inserted = 0;
    for entry in contacts {
        inserted += insert.execute(params![entry.owner, entry.contact, entry.created_at])?;
    }
    Ok((inserted, contacts.len() - inserted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "correct-horse-42";

    /// A fresh data directory with a prepared `chat.db`.
    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_database(dir.path(), true).unwrap();
        (dir, conn)
    }

    fn add_user(conn: &Connection, name: &str, secret: &str) {
        let hash = password::hash_password(secret, 10);
        conn.execute(
            "INSERT INTO users (username, email, password_hash, salt, created_at)
             VALUES (?1, ?2, ?3, ?4, 1700000000)",
            params![name, format!("{name}@example.com"), hash.phc, hash.salt],
        )
        .unwrap();
    }

    fn add_contact(conn: &Connection, owner: &str, contact: &str) {
        conn.execute(
            "INSERT INTO contacts (owner_id, contact_id, created_at)
             SELECT o.user_id, c.user_id, 1700000001 FROM users o, users c
             WHERE o.username = ?1 AND c.username = ?2",
            params![owner, contact],
        )
        .unwrap();
    }

    /// (username, hash) of every user and (owner, contact) of every contact.
    type Contents = (Vec<(String, String)>, Vec<(String, String)>);

    /// Every row of both tables, by name, to compare databases.
    fn contents(conn: &Connection) -> Contents {
        let (users, contacts) = read_tables(conn).unwrap();
        (
            users
                .into_iter()
                .map(|u| (u.username, u.password_hash))
                .collect(),
            contacts.into_iter().map(|c| (c.owner, c.contact)).collect(),
        )
    }

    fn stored_hash(conn: &Connection, name: &str) -> String {
        conn.query_row(
            "SELECT password_hash FROM users WHERE username = ?1",
            [name],
            |row| row.get(0),
        )
        .unwrap()
    }

    /// A database with alice, bob, carol; alice <-> bob mutual, carol -> alice.
    fn populated() -> (tempfile::TempDir, Connection) {
        let (dir, conn) = database();
        for name in ["alice", "bob", "carol"] {
            add_user(&conn, name, SECRET);
        }
        add_contact(&conn, "alice", "bob");
        add_contact(&conn, "bob", "alice");
        add_contact(&conn, "carol", "alice");
        (dir, conn)
    }

    /// An export imported into a fresh database gives the same users and
    /// contacts, and the old password verifies against the imported hash.
    #[test]
    fn an_export_round_trips_and_the_old_password_still_works() {
        let (_source_dir, source) = populated();
        let out = tempfile::tempdir().unwrap();
        let exported = export(&source, out.path()).unwrap();
        assert_eq!((exported.users, exported.contacts), (3, 3));

        let (_target_dir, mut target) = database();
        let report = import(&mut target, out.path()).unwrap();
        assert_eq!(
            (report.users_imported, report.users_skipped),
            (3, 0),
            "{report}"
        );
        assert_eq!((report.contacts_imported, report.contacts_skipped), (3, 0));
        assert_eq!(contents(&target), contents(&source));
        assert!(password::verify_password(
            SECRET,
            &stored_hash(&target, "alice")
        ));
        assert!(!password::verify_password(
            "wrong-password",
            &stored_hash(&target, "alice")
        ));
    }

    /// Existing users are matched by name and left as they are; a second
    /// import of the same files adds nothing.
    #[test]
    fn importing_skips_users_already_present_and_keeps_them() {
        let (_source_dir, source) = populated();
        let out = tempfile::tempdir().unwrap();
        export(&source, out.path()).unwrap();

        let (_target_dir, mut target) = database();
        add_user(&target, "bob", "bobs-other-password");
        let bob_before = stored_hash(&target, "bob");
        let report = import(&mut target, out.path()).unwrap();
        assert_eq!((report.users_imported, report.users_skipped), (2, 1));
        assert_eq!(stored_hash(&target, "bob"), bob_before, "bob is untouched");
        assert_eq!(report.contacts_imported, 3);
        assert_eq!(
            report.to_string(),
            format!(
                "imported 2 users (1 skipped: already present), \
                 3 contacts (0 skipped: already present) from {}",
                out.path().display()
            )
        );

        let again = import(&mut target, out.path()).unwrap();
        assert_eq!(
            (again.users_imported, again.users_skipped),
            (0, 3),
            "{again}"
        );
        assert_eq!((again.contacts_imported, again.contacts_skipped), (0, 3));
    }

    /// Both files are mode 0600 and no temp file is left after a write.
    #[test]
    fn files_are_private_and_no_temp_file_is_left() {
        let (_source_dir, source) = populated();
        let out = tempfile::tempdir().unwrap();
        export(&source, out.path()).unwrap();
        let mut names: Vec<String> = fs::read_dir(out.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [CONTACTS_FILE, USERS_FILE]);
        for name in names {
            let mode = fs::metadata(out.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// What a crash mid-write leaves behind — a truncated temp file — is never
    /// read, and the next write replaces it: the real files are always whole.
    #[test]
    fn a_truncated_temp_file_left_by_a_crash_is_ignored_and_replaced() {
        let (_source_dir, source) = populated();
        let out = tempfile::tempdir().unwrap();
        export(&source, out.path()).unwrap();
        let whole = fs::read(out.path().join(USERS_FILE)).unwrap();
        // The state a crash between write and rename leaves: the new bytes
        // half-written to the temp file, the real file as it was.
        let temp = out.path().join(format!(".{USERS_FILE}.tmp"));
        fs::write(&temp, &whole[..whole.len() / 2]).unwrap();
        fs::write(out.path().join(format!(".{CONTACTS_FILE}.tmp")), b"{\"vers").unwrap();

        let (_target_dir, mut target) = database();
        let report = import(&mut target, out.path()).unwrap();
        assert_eq!(report.users_imported, 3, "the real files were read");

        add_user(&source, "dave", SECRET);
        export(&source, out.path()).unwrap();
        assert!(!temp.exists(), "the leftover was replaced and renamed away");
        let rewritten: serde_json::Value =
            serde_json::from_slice(&fs::read(out.path().join(USERS_FILE)).unwrap()).unwrap();
        assert_eq!(rewritten["users"].as_array().unwrap().len(), 4);
    }

    /// A failed write (here: the temp name is taken by a directory, which
    /// cannot be removed as a file) leaves the previous file whole.
    #[test]
    fn a_failed_write_leaves_the_previous_file_whole() {
        let (_source_dir, source) = populated();
        let out = tempfile::tempdir().unwrap();
        export(&source, out.path()).unwrap();
        let before = fs::read(out.path().join(USERS_FILE)).unwrap();
        fs::create_dir(out.path().join(format!(".{USERS_FILE}.tmp"))).unwrap();
        add_user(&source, "dave", SECRET);
        let error = export(&source, out.path()).unwrap_err();
        assert!(matches!(error, JsonFileError::Io { .. }), "{error}");
        assert_eq!(fs::read(out.path().join(USERS_FILE)).unwrap(), before);
    }

    /// Each way a file can be wrong is refused with a reason, and the
    /// database — which already has a user — is exactly as before.
    #[test]
    fn malformed_files_are_refused_and_change_nothing() {
        let (_source_dir, source) = populated();
        let good = tempfile::tempdir().unwrap();
        export(&source, good.path()).unwrap();
        let users = fs::read_to_string(good.path().join(USERS_FILE)).unwrap();
        let contacts = fs::read_to_string(good.path().join(CONTACTS_FILE)).unwrap();
        let alice_salt = stored_salt(&source, "alice");

        let cases: Vec<(&str, String, String)> = vec![
            (
                "truncated users",
                users[..users.len() / 2].into(),
                contacts.clone(),
            ),
            ("contacts not JSON", users.clone(), "not json".into()),
            (
                "wrong version",
                users.replace("\"version\": 1", "\"version\": 2"),
                contacts.clone(),
            ),
            (
                "unknown field",
                users.replace("\"email\"", "\"emial\""),
                contacts.clone(),
            ),
            (
                "invalid username",
                users.replace("\"carol\"", "\"c a\""),
                contacts.clone(),
            ),
            (
                "duplicate user",
                users.replace("\"carol\"", "\"bob\""),
                contacts.clone(),
            ),
            (
                "invalid email",
                users.replace("alice@example.com", "alice"),
                contacts.clone(),
            ),
            (
                "bad hash",
                users.replace("$pbkdf2-sha256$", "$md5$"),
                contacts.clone(),
            ),
            (
                "salt mismatch",
                users.replacen(
                    &format!("\"salt\": \"{alice_salt}\""),
                    "\"salt\": \"AAAA\"",
                    1,
                ),
                contacts.clone(),
            ),
            (
                "unknown contact",
                users.clone(),
                contacts.replace("\"carol\"", "\"zed\""),
            ),
            (
                "self contact",
                users.clone(),
                contacts.replacen("\"bob\"", "\"alice\"", 1),
            ),
            (
                "duplicate contact",
                users.clone(),
                contacts.replace("\"owner\": \"carol\"", "\"owner\": \"bob\""),
            ),
        ];
        for (case, users_text, contacts_text) in cases {
            assert!(
                users_text != users || contacts_text != contacts,
                "{case}: no change made"
            );
            let (_target_dir, mut target) = database();
            add_user(&target, "zoe", SECRET);
            let before = contents(&target);
            let bad = tempfile::tempdir().unwrap();
            fs::write(bad.path().join(USERS_FILE), users_text).unwrap();
            fs::write(bad.path().join(CONTACTS_FILE), contacts_text).unwrap();
            match import(&mut target, bad.path()) {
                Err(JsonFileError::Malformed { reason, .. }) => {
                    assert!(!reason.is_empty(), "{case}")
                }
                other => panic!("{case}: expected Malformed, got {other:?}"),
            }
            assert_eq!(contents(&target), before, "{case}: the database changed");
        }
    }

    fn stored_salt(conn: &Connection, name: &str) -> String {
        conn.query_row(
            "SELECT salt FROM users WHERE username = ?1",
            [name],
            |row| row.get(0),
        )
        .unwrap()
    }

    /// A missing file is an I/O error naming it, and nothing is imported.
    #[test]
    fn a_missing_file_is_refused() {
        let (_source_dir, source) = populated();
        let out = tempfile::tempdir().unwrap();
        export(&source, out.path()).unwrap();
        fs::remove_file(out.path().join(CONTACTS_FILE)).unwrap();
        let (_target_dir, mut target) = database();
        match import(&mut target, out.path()) {
            Err(JsonFileError::Io { path, .. }) => assert!(path.ends_with(CONTACTS_FILE)),
            other => panic!("expected Io, got {other:?}"),
        }
        assert_eq!(contents(&target), (vec![], vec![]));
    }

    /// Contacts may name users the database has but the file does not.
    #[test]
    fn contacts_may_name_users_already_in_the_database() {
        let (_source_dir, source) = populated();
        let out = tempfile::tempdir().unwrap();
        export(&source, out.path()).unwrap();
        let users = fs::read_to_string(out.path().join(USERS_FILE)).unwrap();
        let mut parsed: UsersFile = serde_json::from_str(&users).unwrap();
        parsed.users.retain(|user| user.username != "bob");
        fs::write(out.path().join(USERS_FILE), to_json(&parsed)).unwrap();

        let (_target_dir, mut target) = database();
        add_user(&target, "bob", SECRET);
        let report = import(&mut target, out.path()).unwrap();
        assert_eq!((report.users_imported, report.contacts_imported), (2, 3));
    }

    /// The mirror writes at its first idle moment, then waits out the
    /// debounce after a change, and a flush writes what is pending at once.
    #[test]
    fn the_mirror_writes_when_dirty_and_debounces() {
        let (dir, conn) = populated();
        let mut mirror = Mirror::new(dir.path().to_path_buf());
        mirror.idle(&conn);
        let users_of = || -> usize {
            let text = fs::read(dir.path().join(USERS_FILE)).unwrap();
            let file: UsersFile = serde_json::from_slice(&text).unwrap();
            file.users.len()
        };
        assert_eq!(users_of(), 3);

        add_user(&conn, "dave", SECRET);
        mirror.mark_dirty();
        mirror.idle(&conn);
        assert_eq!(users_of(), 3, "within the debounce nothing is written");
        mirror.flush(&conn);
        assert_eq!(users_of(), 4);
    }

    /// The mirror keeps trying after a failure and recovers.
    #[test]
    fn the_mirror_retries_after_a_failure() {
        let (dir, conn) = populated();
        let blocked = dir.path().join(format!(".{USERS_FILE}.tmp"));
        fs::create_dir(&blocked).unwrap();
        let mut mirror = Mirror::new(dir.path().to_path_buf());
        mirror.flush(&conn);
        assert!(!dir.path().join(USERS_FILE).exists());
        fs::remove_dir(&blocked).unwrap();
        mirror.flush(&conn);
        assert!(dir.path().join(USERS_FILE).exists());
    }
}
