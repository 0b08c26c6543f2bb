//! The `server_state` table (SQLite's `server_state.rs`, the same marks):
//! the running mark and the message id counter (see `storage/ids.rs`). What
//! a start reads of the previous run and writes for its own; the policy
//! that decides with it is `storage/startup.rs`'s.

use super::{accounts, groups, messages, Batch, Error};
use crate::storage::ids::IDS_KEY as IDS_RESERVED_KEY;
use crate::storage::PreviousRun;

/// The `server_state` key of the running mark.
const RUNNING_KEY: &str = "running";

/// The next message id, handed out in the batch's transaction. The first
/// one a transaction takes reads the counter `FOR UPDATE`: the row stays
/// locked until the commit, so another server's batch waits here and
/// commit order is id order (`storage/ids.rs`).
pub(super) fn next_message_id(batch: &mut Batch) -> Result<i64, Error> {
    let highest = match batch.ids.highest() {
        Some(highest) => highest,
        None => {
            let row = batch.query_opt(
                "SELECT value FROM server_state WHERE key = $1 FOR UPDATE",
                &[&IDS_RESERVED_KEY],
            )?;
            let Some(row) = row else {
                return Err(Error::Missing("message id counter"));
            };
            row.try_get(0)?
        }
    };
    Ok(batch.ids.take_after(highest))
}

/// The first id not yet committed or handed out in this transaction: every
/// message below it is committed (or written earlier in this transaction),
/// every later one commits after this read. Reads the counter without
/// locking it: a batch of another server holding it takes ids above it.
pub(super) fn id_boundary(batch: &mut Batch) -> Result<i64, Error> {
    Ok(match batch.ids.highest() {
        Some(highest) => highest,
        None => value(batch, IDS_RESERVED_KEY)?.unwrap_or(0),
    } + 1)
}

/// Writes the counter back before the commit, if ids were handed out.
pub(super) fn save_ids(batch: &mut Batch) -> Result<(), Error> {
    if let Some(highest) = batch.ids.to_save() {
        reserve_ids(batch, highest)?;
    }
    Ok(())
}

/// What the previous run left: the accounts and groups, the highest stored
/// id, and its marks.
pub(super) fn previous_run(batch: &mut Batch) -> Result<PreviousRun, Error> {
    Ok(PreviousRun {
        users: accounts::all_users(batch)?,
        groups: groups::all_groups(batch)?,
        highest_stored_id: messages::highest_stored_id(batch)?,
        ids_reserved_through: value(batch, IDS_RESERVED_KEY)?,
        was_running: value(batch, RUNNING_KEY)? == Some(1),
    })
}

/// Moves the id counter up to `ids_reserved_through` (never down) and sets
/// the running mark (in the caller's transaction).
pub(super) fn begin_run(batch: &mut Batch, ids_reserved_through: i64) -> Result<(), Error> {
    reserve_ids(batch, ids_reserved_through)?;
    batch.execute(
        "INSERT INTO server_state (key, value) VALUES ($1, 1)
         ON CONFLICT (key) DO UPDATE SET value = 1",
        &[&RUNNING_KEY],
    )?;
    Ok(())
}

/// Clears the running mark: this run stopped cleanly.
pub(super) fn mark_stopped(batch: &mut Batch) -> Result<(), Error> {
    batch.execute(
        "UPDATE server_state SET value = 0 WHERE key = $1",
        &[&RUNNING_KEY],
    )?;
    Ok(())
}

/// Records that ids up to `through` are handed out (never lowers it).
fn reserve_ids(batch: &mut Batch, through: i64) -> Result<(), Error> {
    batch.execute(
        "INSERT INTO server_state (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = GREATEST(server_state.value, excluded.value)",
        &[&IDS_RESERVED_KEY, &through],
    )?;
    Ok(())
}

/// One value of `server_state`, if set.
fn value(batch: &mut Batch, key: &str) -> Result<Option<i64>, Error> {
    let row = batch.query_opt("SELECT value FROM server_state WHERE key = $1", &[&key])?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
}
