//! The `server_state` table (SQLite's `server_state.rs`, the same marks):
//! the running mark and the highest message id reserved. What a start
//! reads of the previous run and writes for its own; the policy that
//! decides with it is `storage/startup.rs`'s.

use super::{accounts, groups, messages, Batch, Error};
use crate::storage::{PreviousRun, Reply};

/// The `server_state` key of the highest reserved message id.
const IDS_RESERVED_KEY: &str = "ids_reserved_through";
/// The `server_state` key of the running mark.
const RUNNING_KEY: &str = "running";

/// `ReserveIds`: message ids up to `through` may be handed out.
pub(super) fn reserve_more_ids(batch: &mut Batch, through: i64) -> Result<Reply, Error> {
    reserve_ids(batch, through)?;
    Ok(Reply::IdsReserved {
        through: Some(through),
    })
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

/// Reserves ids through `ids_reserved_through` and sets the running mark
/// (in the caller's transaction).
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

/// Records that ids up to `through` may be handed out (never lowers it).
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
