//! The delivery bookkeeping (SQLite's `delivery.rs`, the same behaviour;
//! ARCHITECTURE.md, "Delivery"): the offline queue and the catch-up pages
//! read like it, what takes a message (written out, confirmed) and what
//! puts it back, the group cursors, and the sessions' confirmations.
//! Every per-user index is written with its row here, so there is no
//! unindexed tail to read apart.

use super::{Batch, Error};
use crate::completion::Requester;
use crate::storage::pages::{merge_pages, PageFrom, QueueTake, OFFLINE_CHUNK, QUEUE_PAGE};
use crate::storage::{GroupsTaken, Reply, StoredMessage};

/// `TakeQueue`: the next chunk of a logging-in (or catching-up) user's queue.
pub(super) fn take_queue(
    batch: &mut Batch,
    to: &Requester,
    queue: QueueTake,
) -> Result<Reply, Error> {
    let (queued, more_queued) = read_queue(batch, queue)?;
    Ok(Reply::QueueChunk {
        to: to.clone(),
        queued,
        more_queued,
    })
}

/// `MarkDelivered`: these 1:1 messages were written out to a connection of
/// their recipient, so they leave the offline queue (one statement for the
/// chunk).
pub(super) fn mark_delivered(
    batch: &mut Batch,
    user_id: i64,
    message_ids: &[i64],
) -> Result<(), Error> {
    batch.execute(
        "UPDATE messages SET delivered = TRUE
         WHERE message_id = ANY($1::BIGINT[]) AND receiver_id = $2",
        &[&message_ids, &user_id],
    )?;
    Ok(())
}

/// `Requeue`: the recipient's 1:1 messages from `from_message_id` on go back
/// into the offline queue (their connection was dropped unread).
pub(super) fn requeue(batch: &mut Batch, user_id: i64, from_message_id: i64) -> Result<(), Error> {
    batch.execute(
        "UPDATE messages SET delivered = FALSE
         WHERE message_id >= $2 AND receiver_id = $1 AND delivered",
        &[&user_id, &from_message_id],
    )?;
    Ok(())
}

/// `Confirm`: a receipts device of `user_id` holds everything up to
/// `through`. Recorded on its session; what it newly covers is taken; the
/// reply names whose 1:1 messages it confirmed.
pub(super) fn confirm(
    batch: &mut Batch,
    user_id: i64,
    username: &str,
    session_hash: &str,
    through: i64,
) -> Result<Reply, Error> {
    let previous = confirmed_through(batch, session_hash)?;
    set_confirmed(batch, session_hash, through)?;
    let senders = take_confirmed(batch, user_id, (previous, through))?;
    Ok(Reply::Confirmed {
        user_id,
        username: username.to_owned(),
        senders,
    })
}

/// A session's confirmation (0 for an unknown session).
pub(super) fn confirmed_through(batch: &mut Batch, session_hash: &str) -> Result<i64, Error> {
    let row = batch.query_opt(
        "SELECT confirmed_through FROM sessions WHERE session_hash = $1",
        &[&session_hash],
    )?;
    Ok(row.map(|row| row.try_get(0)).transpose()?.unwrap_or(0))
}

/// Raises a session's confirmation to `through` (never lowers it).
pub(super) fn set_confirmed(
    batch: &mut Batch,
    session_hash: &str,
    through: i64,
) -> Result<(), Error> {
    batch.execute(
        "UPDATE sessions SET confirmed_through = GREATEST(confirmed_through, $2)
         WHERE session_hash = $1",
        &[&session_hash, &through],
    )?;
    Ok(())
}

/// A device of `user_id` now holds everything up to `range.1` (it held
/// everything up to `range.0` before): the 1:1 messages no device had taken
/// are taken now, the group cursors move up to `range.1`, and the senders of
/// the 1:1 messages in the range are returned, each with its highest id, for
/// the Delivered receipts (whether or not another device had taken them).
fn take_confirmed(
    batch: &mut Batch,
    user_id: i64,
    (previous, through): (i64, i64),
) -> Result<Vec<(i64, i64)>, Error> {
    let senders = batch
        .query(
            "SELECT sender_id, MAX(message_id) FROM messages
             WHERE receiver_id = $1 AND message_id > $2 AND message_id <= $3
             GROUP BY sender_id",
            &[&user_id, &previous, &through],
        )?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(i64, i64)>, Error>>()?;
    batch.execute(
        "UPDATE messages SET delivered = TRUE
         WHERE receiver_id = $1 AND NOT delivered AND message_id <= $2",
        &[&user_id, &through],
    )?;
    batch.execute(
        "UPDATE group_members SET delivered_through = GREATEST(delivered_through, $2)
         WHERE user_id = $1",
        &[&user_id, &through],
    )?;
    Ok(senders)
}

/// Reads the next chunk of the user's offline queue below `queue_before`:
/// 1:1 messages not delivered and, with `include_groups`, messages of the
/// user's groups past the member's cursor, oldest first. A chunk holds at
/// most [`OFFLINE_CHUNK`] messages and about `QUEUE_PAGE_BYTES` of content.
pub(super) fn read_queue(
    batch: &mut Batch,
    queue: QueueTake,
) -> Result<(Vec<StoredMessage>, bool), Error> {
    if let Some(confirmed) = queue.since {
        return read_addressed(batch, queue, confirmed);
    }
    let QueueTake {
        user_id,
        queue_before,
        after,
        include_groups,
        ..
    } = queue;
    // Taking marks nothing: a message counts as taken once written out
    // (`MarkDelivered`, group cursors at departure), so two devices logging
    // in at once each get the whole queue, and a connection that dies
    // mid-queue loses nothing.
    let fetch = i64::from(OFFLINE_CHUNK) + 1;
    let direct = batch.read_page(
        "SELECT message_id FROM messages
         WHERE receiver_id = $1 AND NOT delivered AND message_id > $2 AND message_id < $3
         ORDER BY message_id LIMIT $4",
        &[&user_id, &after, &queue_before, &fetch],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )?;
    if !include_groups || !is_in_any_group(batch, user_id)? {
        return Ok(direct);
    }
    let group = batch.read_page(
        "SELECT m.message_id FROM group_members g
         JOIN messages m ON m.group_id = g.group_id
            AND m.message_id > GREATEST(g.delivered_through, $2::BIGINT)
         WHERE g.user_id = $1 AND m.message_id < $3 AND m.sender_id <> $1
         ORDER BY m.message_id LIMIT $4",
        &[&user_id, &after, &queue_before, &fetch],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )?;
    Ok(merge_pages(direct, group, QUEUE_PAGE))
}

/// A receipts session's queue: every message addressed to the user past
/// `confirmed` (1:1 to them, and their groups' messages from others), below
/// the login boundary, whether or not another device took it.
fn read_addressed(
    batch: &mut Batch,
    queue: QueueTake,
    confirmed: i64,
) -> Result<(Vec<StoredMessage>, bool), Error> {
    batch.read_page(
        "SELECT message_id FROM (
             (SELECT message_id FROM messages
              WHERE receiver_id = $1 AND message_id > $2 AND message_id < $4
              ORDER BY message_id LIMIT $3)
             UNION ALL
             (SELECT m.message_id FROM group_members g
              JOIN messages m ON m.group_id = g.group_id
                 AND m.message_id > GREATEST($2::BIGINT, g.joined_through)
              WHERE g.user_id = $1 AND m.message_id < $4 AND m.sender_id <> $1
              ORDER BY m.message_id LIMIT $3)
         ) AS ids ORDER BY message_id LIMIT $3",
        &[
            &queue.user_id,
            &queue.after.max(confirmed),
            &(i64::from(OFFLINE_CHUNK) + 1),
            &queue.queue_before,
        ],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )
}

/// Moves the user's group cursors to `taken.through` where they already
/// cover everything before `taken.from` (never backwards).
pub(super) fn advance_group_cursors(
    batch: &mut Batch,
    user_id: i64,
    taken: GroupsTaken,
) -> Result<(), Error> {
    batch.execute(
        "UPDATE group_members SET delivered_through = $3
         WHERE user_id = $1 AND delivered_through >= $2::BIGINT - 1 AND delivered_through < $3",
        &[&user_id, &taken.from, &taken.through],
    )?;
    Ok(())
}

/// Whether the user is in any group (most logins are not: skip that query).
fn is_in_any_group(batch: &mut Batch, user_id: i64) -> Result<bool, Error> {
    Ok(batch
        .query_one(
            "SELECT EXISTS(SELECT 1 FROM group_members WHERE user_id = $1)",
            &[&user_id],
        )?
        .try_get(0)?)
}
