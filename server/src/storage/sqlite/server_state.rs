//! The `server_state` table: the running mark (1 while a server runs on the
//! database, so the next start can tell the last stop was a crash) and the
//! highest message id reserved. What a start reads of the previous run and
//! writes for its own; the policy that decides with it is
//! `storage/startup.rs`'s.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{accounts, groups};
use crate::storage::{PreviousRun, Reply};

/// The `server_state` key of the highest reserved message id.
const IDS_RESERVED_KEY: &str = "ids_reserved_through";
/// The `server_state` key of the running mark.
const RUNNING_KEY: &str = "running";

/// `ReserveIds`: message ids up to `through` may be handed out.
pub(super) fn reserve_more_ids(tx: &Transaction, through: i64) -> rusqlite::Result<Reply> {
    reserve_ids(tx, through)?;
    Ok(Reply::IdsReserved {
        through: Some(through),
    })
}

/// What the previous run left: the accounts and groups, and its marks.
pub(super) fn previous_run(
    conn: &Connection,
    highest_stored_id: i64,
) -> rusqlite::Result<PreviousRun> {
    Ok(PreviousRun {
        users: accounts::all_users(conn)?,
        groups: groups::all_groups(conn)?,
        highest_stored_id,
        ids_reserved_through: value(conn, IDS_RESERVED_KEY)?,
        was_running: value(conn, RUNNING_KEY)? == Some(1),
    })
}

/// Reserves ids through `ids_reserved_through` and sets the running mark,
/// in one transaction.
pub(super) fn begin_run(conn: &mut Connection, ids_reserved_through: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    reserve_ids(&tx, ids_reserved_through)?;
    tx.execute(
        "INSERT OR REPLACE INTO server_state (key, value) VALUES (?1, 1)",
        [RUNNING_KEY],
    )?;
    tx.commit()
}

/// Clears the running mark: this run stopped cleanly.
pub(super) fn mark_stopped(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE server_state SET value = 0 WHERE key = ?1",
        [RUNNING_KEY],
    )?;
    Ok(())
}

/// Records that ids up to `through` may be handed out (never lowers it).
fn reserve_ids(tx: &Transaction, through: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO server_state (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
    )?
    .execute(params![IDS_RESERVED_KEY, through])?;
    Ok(())
}

/// One value of `server_state`, if set.
fn value(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT value FROM server_state WHERE key = ?1",
        [key],
        |row| row.get(0),
    )
    .optional()
}
