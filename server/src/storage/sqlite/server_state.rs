//! The `server_state` table: the running mark (1 while a server runs on the
//! database, so the next start can tell the last stop was a crash) and the
//! message id counter (see `storage/ids.rs`). What a start reads of the previous run and
//! writes for its own; the policy that decides with it is
//! `storage/startup.rs`'s.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{accounts, groups, Batch};
use crate::storage::ids::IDS_KEY as IDS_RESERVED_KEY;
use crate::storage::PreviousRun;

/// The `server_state` key of the running mark.
const RUNNING_KEY: &str = "running";

/// The next message id, handed out in the batch's transaction: the first
/// one a transaction takes reads the counter (one writer: nobody else
/// takes ids meanwhile), the rest follow it.
pub(super) fn next_message_id(batch: &mut Batch) -> rusqlite::Result<i64> {
    let highest = match batch.ids.highest() {
        Some(highest) => highest,
        None => counter(batch.tx)?,
    };
    Ok(batch.ids.take_after(highest))
}

/// The first id not yet committed or handed out in this transaction.
pub(super) fn id_boundary(batch: &Batch) -> rusqlite::Result<i64> {
    Ok(match batch.ids.highest() {
        Some(highest) => highest,
        None => counter(batch.tx)?,
    } + 1)
}

/// Writes the counter back before the commit, if ids were handed out.
pub(super) fn save_ids(batch: &Batch) -> rusqlite::Result<()> {
    match batch.ids.to_save() {
        Some(highest) => reserve_ids(batch.tx, highest),
        None => Ok(()),
    }
}

/// The counter as committed (0 before the first start wrote it).
fn counter(tx: &Transaction) -> rusqlite::Result<i64> {
    Ok(tx
        .prepare_cached("SELECT value FROM server_state WHERE key = ?1")?
        .query_row([IDS_RESERVED_KEY], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
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

/// Moves the id counter up to `ids_reserved_through` (never down) and sets
/// the running mark, in one transaction.
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

/// Records that ids up to `through` are handed out (never lowers it).
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
