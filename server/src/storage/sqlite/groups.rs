//! Groups (the dispatcher's `groups.rs`): creating one, adding members, a
//! member leaving (the last one takes the group and its messages along), and
//! reading a group with its members. A group's messages are stored, paged
//! and queued with the others (`messages.rs`, `delivery.rs`).

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::completion::Requester;
use crate::storage::{GroupRow, Reply};

/// `CreateGroup`: the group, with its members' cursors at `through` (the
/// first member is its creator).
pub(super) fn create_group(
    tx: &Transaction,
    to: &Requester,
    name: &str,
    member_ids: &[i64],
    through: i64,
    now: i64,
) -> rusqlite::Result<Reply> {
    let creator = member_ids.first().copied().unwrap_or_default();
    tx.prepare_cached("INSERT INTO groups (name, creator_id, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![name, creator, now])?;
    let group_id = tx.last_insert_rowid();
    add_group_members(tx, to, group_id, member_ids, through, now)
}

/// `AddGroupMembers`: new members (existing ones are left alone), their
/// cursors at `through`; the reply is the group as it is now.
pub(super) fn add_group_members(
    tx: &Transaction,
    to: &Requester,
    group_id: i64,
    member_ids: &[i64],
    through: i64,
    now: i64,
) -> rusqlite::Result<Reply> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO group_members
             (group_id, user_id, joined_at, delivered_through, joined_through)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    for user_id in member_ids {
        insert.execute(params![group_id, user_id, now, through])?;
    }
    let group = group_row(tx, group_id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Reply::GroupChanged {
        to: to.clone(),
        group,
    })
}

/// `LeaveGroup`: the member leaves; when it was the last, the group and its
/// messages are deleted.
pub(super) fn leave_group(
    tx: &Transaction,
    to: &Requester,
    user_id: i64,
    group_id: i64,
) -> rusqlite::Result<Reply> {
    tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
        .execute(params![group_id, user_id])?;
    let remaining = group_row(tx, group_id)?.filter(|group| !group.members.is_empty());
    if remaining.is_none() {
        tx.prepare_cached("DELETE FROM messages WHERE group_id = ?1")?
            .execute([group_id])?;
        tx.prepare_cached("DELETE FROM groups WHERE group_id = ?1")?
            .execute([group_id])?;
    }
    Ok(Reply::GroupLeft {
        to: to.clone(),
        user_id,
        group_id,
        remaining,
    })
}

/// Every group with its members, for the loop's copy.
pub(super) fn all_groups(conn: &Connection) -> rusqlite::Result<Vec<GroupRow>> {
    let group_ids: Vec<i64> = conn
        .prepare("SELECT group_id FROM groups ORDER BY group_id")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    group_ids
        .into_iter()
        .filter_map(|id| group_row(conn, id).transpose())
        .collect()
}

/// A group with its members (by username), if it exists.
pub(super) fn group_row(conn: &Connection, group_id: i64) -> rusqlite::Result<Option<GroupRow>> {
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
