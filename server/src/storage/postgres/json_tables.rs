//! `export-json` and `import-json` with `--database postgres://…`: the SQL
//! side of [`crate::storage::json_files`] on PostgreSQL. The files, their
//! checks and the reports are that module's; here are the reads and writes
//! of `users` and `contacts`, each in one transaction, in the same order as
//! SQLite's (by id), so the files come out alike from either database.

use postgres::{Client, IsolationLevel};

use super::{connect, explain, location, redacted, schema};
use crate::storage::json_files::{
    check_contacts_name_users, ContactRecord, ImportReport, JsonFileError, Loaded, UserRecord,
};

/// Connects to the database `url` names and brings its schema to this
/// server's version (made on an empty database, as a server's start would).
pub(crate) fn open(url: &str) -> Result<Client, JsonFileError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|error| JsonFileError::Postgres(format!("{}: {error}", redacted(url))))?;
    config.connect_timeout(crate::config::POSTGRES_CONNECT_TIMEOUT);
    let at = location(&config);
    let mut client = connect(&config)
        .map_err(|error| JsonFileError::Postgres(format!("{at}: {}", explain(&error))))?;
    schema::prepare(&mut client)
        .map_err(|error| JsonFileError::Postgres(format!("{at}: {error}")))?;
    Ok(client)
}

/// Whether the running mark is set: a server runs on the database (in a
/// cluster: at least one), or the last one stopped without a clean
/// shutdown.
pub(crate) fn marked_running(client: &mut Client) -> Result<bool, JsonFileError> {
    let row = client
        .query_opt("SELECT value FROM server_state WHERE key = 'running'", &[])
        .map_err(failed)?;
    let running = row
        .map(|row| row.try_get::<_, i64>(0))
        .transpose()
        .map_err(failed)?;
    Ok(running == Some(1))
}

/// Both tables, in id order, from one snapshot.
pub(crate) fn read_tables(
    client: &mut Client,
) -> Result<(Vec<UserRecord>, Vec<ContactRecord>), JsonFileError> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(failed)?;
    let users = tx
        .query(
            "SELECT username, email, password_hash, salt, public_key, created_at, last_activity
             FROM users ORDER BY user_id",
            &[],
        )
        .map_err(failed)?
        .iter()
        .map(|row| {
            Ok(UserRecord {
                username: row.try_get(0)?,
                email: row.try_get(1)?,
                password_hash: row.try_get(2)?,
                salt: row.try_get(3)?,
                public_key: row.try_get(4)?,
                created_at: row.try_get(5)?,
                last_activity: row.try_get(6)?,
            })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()
        .map_err(failed)?;
    let contacts = tx
        .query(
            "SELECT owner.username, contact.username, contacts.created_at
             FROM contacts
             JOIN users AS owner ON owner.user_id = contacts.owner_id
             JOIN users AS contact ON contact.user_id = contacts.contact_id
             ORDER BY contacts.owner_id, contacts.contact_id",
            &[],
        )
        .map_err(failed)?
        .iter()
        .map(|row| {
            Ok(ContactRecord {
                owner: row.try_get(0)?,
                contact: row.try_get(1)?,
                created_at: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()
        .map_err(failed)?;
    tx.commit().map_err(failed)?;
    Ok((users, contacts))
}

/// The database half of an import: the contacts' names checked, then the
/// users whose names are free and the contacts not there yet, in one
/// transaction. (No table lock: users are never deleted, so a name found
/// by the check is still there at the insert, and a name taken meanwhile
/// by a registration is skipped like any existing one.)
pub(crate) fn import(client: &mut Client, loaded: &Loaded) -> Result<ImportReport, JsonFileError> {
    let (users, contacts) = loaded.records();
    let mut tx = client.transaction().map_err(failed)?;
    let exists = tx
        .prepare("SELECT EXISTS(SELECT 1 FROM users WHERE username = $1)")
        .map_err(failed)?;
    check_contacts_name_users(&loaded.contacts_path(), contacts, users, |name| {
        tx.query_one(&exists, &[&name])
            .and_then(|row| row.try_get(0))
            .map_err(failed)
    })?;
    let insert_user = tx
        .prepare(
            "INSERT INTO users
                 (username, email, password_hash, salt, public_key, created_at, last_activity)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (username) DO NOTHING",
        )
        .map_err(failed)?;
    let mut users_imported = 0;
    for user in users {
        let params: [&(dyn postgres::types::ToSql + Sync); 7] = [
            &user.username,
            &user.email,
            &user.password_hash,
            &user.salt,
            &user.public_key,
            &user.created_at,
            &user.last_activity,
        ];
        users_imported += tx.execute(&insert_user, &params).map_err(failed)? as usize;
    }
    let insert_contact = tx
        .prepare(
            "INSERT INTO contacts (owner_id, contact_id, created_at)
             SELECT owner.user_id, contact.user_id, $3
             FROM users AS owner, users AS contact
             WHERE owner.username = $1 AND contact.username = $2
             ON CONFLICT DO NOTHING",
        )
        .map_err(failed)?;
    let mut contacts_imported = 0;
    for entry in contacts {
        let params: [&(dyn postgres::types::ToSql + Sync); 3] =
            [&entry.owner, &entry.contact, &entry.created_at];
        contacts_imported += tx.execute(&insert_contact, &params).map_err(failed)? as usize;
    }
    tx.commit().map_err(failed)?;
    Ok(loaded.report(
        (users_imported, users.len() - users_imported),
        (contacts_imported, contacts.len() - contacts_imported),
    ))
}

fn failed(error: postgres::Error) -> JsonFileError {
    JsonFileError::Postgres(explain(&error))
}
