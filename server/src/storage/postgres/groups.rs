//! Groups (SQLite's `groups.rs`, the same behaviour): creating one, adding
//! members, a member leaving (the last one takes the group and its messages
//! along), and reading groups with their members.

use super::{Batch, Error};
use crate::completion::Requester;
use crate::storage::{GroupRow, Reply};

/// `CreateGroup`: the group, with its members' cursors at `through` (the
/// first member is its creator).
pub(super) fn create_group(
    batch: &mut Batch,
    to: &Requester,
    name: &str,
    member_ids: &[i64],
    through: i64,
    now: i64,
) -> Result<Reply, Error> {
    let creator = member_ids.first().copied().unwrap_or_default();
    let group_id: i64 = batch
        .query_one(
            "INSERT INTO groups (name, creator_id, created_at) VALUES ($1, $2, $3)
             RETURNING group_id",
            &[&name, &creator, &now],
        )?
        .try_get(0)?;
    add_group_members(batch, to, group_id, member_ids, through, now)
}

/// `AddGroupMembers`: new members (existing ones are left alone), their
/// cursors at `through`; the reply is the group as it is now.
pub(super) fn add_group_members(
    batch: &mut Batch,
    to: &Requester,
    group_id: i64,
    member_ids: &[i64],
    through: i64,
    now: i64,
) -> Result<Reply, Error> {
    // One statement for every member: `member_ids` is bounded by the
    // group size limit the dispatcher enforced.
    batch.execute(
        "INSERT INTO group_members
             (group_id, user_id, joined_at, delivered_through, joined_through)
         SELECT $1, member, $3, $4, $4 FROM UNNEST($2::BIGINT[]) AS member
         ON CONFLICT DO NOTHING",
        &[&group_id, &member_ids, &now, &through],
    )?;
    let group = group_row(batch, group_id)?.ok_or(Error::Missing("group"))?;
    Ok(Reply::GroupChanged {
        to: to.clone(),
        group,
    })
}

/// `LeaveGroup`: the member leaves; when it was the last, the group and its
/// messages are deleted.
pub(super) fn leave_group(
    batch: &mut Batch,
    to: &Requester,
    user_id: i64,
    group_id: i64,
) -> Result<Reply, Error> {
    batch.execute(
        "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
        &[&group_id, &user_id],
    )?;
    let remaining = group_row(batch, group_id)?.filter(|group| !group.members.is_empty());
    if remaining.is_none() {
        batch.execute("DELETE FROM messages WHERE group_id = $1", &[&group_id])?;
        batch.execute("DELETE FROM groups WHERE group_id = $1", &[&group_id])?;
    }
    Ok(Reply::GroupLeft {
        to: to.clone(),
        user_id,
        group_id,
        remaining,
    })
}

/// Every group with its members, for the loop's copy: two queries, the
/// members read in group order and split as they come.
pub(super) fn all_groups(batch: &mut Batch) -> Result<Vec<GroupRow>, Error> {
    let mut groups: Vec<GroupRow> = batch
        .query("SELECT group_id, name FROM groups ORDER BY group_id", &[])?
        .iter()
        .map(|row| {
            Ok(GroupRow {
                group_id: row.try_get(0)?,
                name: row.try_get(1)?,
                members: Vec::new(),
            })
        })
        .collect::<Result<_, Error>>()?;
    let members = batch.query(
        "SELECT g.group_id, u.user_id, u.username FROM group_members g
         JOIN users u ON u.user_id = g.user_id
         ORDER BY g.group_id, u.username COLLATE \"C\"",
        &[],
    )?;
    let mut next = 0;
    for row in &members {
        let group_id: i64 = row.try_get(0)?;
        while groups
            .get(next)
            .is_some_and(|group| group.group_id < group_id)
        {
            next += 1;
        }
        if let Some(group) = groups.get_mut(next).filter(|g| g.group_id == group_id) {
            group.members.push((row.try_get(1)?, row.try_get(2)?));
        }
    }
    Ok(groups)
}

/// A group with its members (by username in byte order), if it exists.
pub(super) fn group_row(batch: &mut Batch, group_id: i64) -> Result<Option<GroupRow>, Error> {
    let Some(row) = batch.query_opt("SELECT name FROM groups WHERE group_id = $1", &[&group_id])?
    else {
        return Ok(None);
    };
    let name: String = row.try_get(0)?;
    let members = batch
        .query(
            "SELECT u.user_id, u.username FROM group_members g
             JOIN users u ON u.user_id = g.user_id
             WHERE g.group_id = $1 ORDER BY u.username COLLATE \"C\"",
            &[&group_id],
        )?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(i64, String)>, Error>>()?;
    Ok(Some(GroupRow {
        group_id,
        name,
        members,
    }))
}
