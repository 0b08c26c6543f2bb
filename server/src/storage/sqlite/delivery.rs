//! The delivery bookkeeping (the dispatcher's `delivery.rs`; ARCHITECTURE.md,
//! "Delivery"): the offline queue and the catch-up pages read like it, what
//! takes a message (written out, confirmed) and what puts it back, the group
//! cursors, and the sessions' confirmations.

use std::collections::HashMap;

use rusqlite::vtab::array::Array;
use rusqlite::{params, OptionalExtension, Transaction};

use super::indexes::TailRow;
use super::messages::{as_array, read_page};
use super::Batch;
use crate::completion::Requester;
use crate::storage::pages::{merge_pages, PageFrom, QueueTake, OFFLINE_CHUNK, QUEUE_PAGE};
use crate::storage::{GroupsTaken, Reply, StoredMessage};

/// `TakeQueue`: the next chunk of a logging-in (or catching-up) user's queue.
pub(super) fn take_queue(
    batch: &mut Batch,
    to: &Requester,
    queue: QueueTake,
) -> rusqlite::Result<Reply> {
    let (queued, more_queued) = read_queue(batch, queue)?;
    Ok(Reply::QueueChunk {
        to: to.clone(),
        queued,
        more_queued,
    })
}

/// An index pass covered these 1:1 messages of its slice's receivers
/// (sorted by receiver): those still pending and untaken — past their
/// receiver's `taken_through` — enter the undelivered index (schema.rs,
/// version 7); the rest stay pending, taken by the mark.
pub(super) fn queue_untaken(tx: &Transaction, rows: &[TailRow]) -> rusqlite::Result<()> {
    let mut enqueue = tx.prepare_cached(
        "UPDATE messages SET delivered = 0 WHERE message_id = ?1 AND delivered = 2",
    )?;
    for receiver_rows in rows.chunk_by(|a, b| a.receiver_id == b.receiver_id) {
        let taken = taken_through(tx, receiver_rows[0].receiver_id)?;
        for row in receiver_rows.iter().filter(|row| row.message_id > taken) {
            enqueue.execute([row.message_id])?;
        }
    }
    Ok(())
}

/// `MarkDelivered`: these 1:1 messages were written out to a connection of
/// their recipient, so they leave the offline queue.
pub(super) fn mark_delivered(
    tx: &Transaction,
    user_id: i64,
    message_ids: &[i64],
) -> rusqlite::Result<()> {
    let mut statement = tx.prepare_cached(
        "UPDATE messages SET delivered = TRUE WHERE message_id = ?1 AND receiver_id = ?2",
    )?;
    for id in message_ids {
        statement.execute(params![id, user_id])?;
    }
    Ok(())
}

/// `Requeue`: the recipient's 1:1 messages from `from_message_id` on go back
/// into the offline queue (their connection was dropped unread).
pub(super) fn requeue(
    tx: &Transaction,
    user_id: i64,
    from_message_id: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE messages SET delivered = FALSE
         WHERE message_id >= ?2 AND receiver_id = ?1 AND delivered",
    )?
    .execute(params![user_id, from_message_id])?;
    // What a receipts device confirmed from there on is back in the queue
    // too, as when confirming flipped `delivered` (version 6).
    tx.prepare_cached(
        "UPDATE users SET taken_through = MIN(taken_through, ?2 - 1) WHERE user_id = ?1",
    )?
    .execute(params![user_id, from_message_id])?;
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
) -> rusqlite::Result<Reply> {
    let tx = batch.tx;
    let previous = confirmed_through(tx, session_hash)?;
    set_confirmed(tx, session_hash, through)?;
    // The range up to the index watermark is read from the index, the rest
    // from the unindexed tail.
    let indexed_through = batch.indexes.through(user_id);
    let mut senders = indexed_senders(tx, user_id, (previous, through.min(indexed_through)))?;
    let after = previous.max(indexed_through);
    for row in batch.indexes.tail_to(tx, user_id, (after, through))? {
        let highest = senders.entry(row.sender_id).or_insert(row.message_id);
        *highest = (*highest).max(row.message_id);
    }
    take_confirmed(tx, user_id, through)?;
    Ok(Reply::Confirmed {
        user_id,
        username: username.to_owned(),
        senders: senders.into_iter().collect(),
    })
}

/// A session's confirmation (0 for an unknown session).
pub(super) fn confirmed_through(tx: &Transaction, session_hash: &str) -> rusqlite::Result<i64> {
    let confirmed = tx
        .prepare_cached("SELECT confirmed_through FROM sessions WHERE session_hash = ?1")?
        .query_row([session_hash], |row| row.get(0))
        .optional()?;
    Ok(confirmed.unwrap_or(0))
}

/// Raises a session's confirmation to `through` (never lowers it).
pub(super) fn set_confirmed(
    tx: &Transaction,
    session_hash: &str,
    through: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE sessions SET confirmed_through = MAX(confirmed_through, ?2)
         WHERE session_hash = ?1",
    )?
    .execute(params![session_hash, through])?;
    Ok(())
}

/// The senders of the user's indexed 1:1 messages with `after < message_id
/// <= through`, each with its highest id there, for the Delivered receipts
/// (whether or not another device had taken them). An empty range (it all
/// lies in the unindexed tail) asks nothing.
fn indexed_senders(
    tx: &Transaction,
    user_id: i64,
    (after, through): (i64, i64),
) -> rusqlite::Result<HashMap<i64, i64>> {
    if through <= after {
        return Ok(HashMap::new());
    }
    tx.prepare_cached(
        "SELECT sender_id, MAX(message_id) FROM received
         WHERE receiver_id = ?1 AND message_id > ?2 AND message_id <= ?3
         GROUP BY sender_id",
    )?
    .query_map(params![user_id, after, through], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?
    .collect()
}

/// A device of `user_id` now holds everything up to `through`: the 1:1
/// messages no device had taken are taken now (the user's `taken_through`
/// mark rises to `through`), and the group cursors move up to it.
fn take_confirmed(tx: &Transaction, user_id: i64, through: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE users SET taken_through = MAX(taken_through, ?2) WHERE user_id = ?1",
    )?
    .execute(params![user_id, through])?;
    tx.prepare_cached(
        "UPDATE group_members SET delivered_through = MAX(delivered_through, ?2)
         WHERE user_id = ?1",
    )?
    .execute(params![user_id, through])?;
    Ok(())
}

/// Reads the next chunk of the user's offline queue below `queue_before`:
/// 1:1 messages not delivered and, with `include_groups`, messages of the
/// user's groups past the member's cursor, oldest first. A chunk holds at
/// most [`OFFLINE_CHUNK`] messages and about `QUEUE_PAGE_BYTES` of content.
pub(super) fn read_queue(
    batch: &mut Batch,
    queue: QueueTake,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
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
    // Two plain index-ordered queries merged here, rather than one UNION with
    // ORDER BY: SQLite would build and sort an ephemeral table for that on
    // every login (it halved the session-resume rate). Taking marks nothing:
    // a message counts as taken once written out (`MarkDelivered`, group
    // cursors at departure), so two devices logging in at once each get the
    // whole queue, and a connection that dies mid-queue loses nothing.
    let fetch = OFFLINE_CHUNK + 1;
    let direct_after = after.max(taken_through(batch.tx, user_id)?);
    let queued = read_page(
        batch.tx,
        "SELECT message_id FROM messages
         WHERE receiver_id = ?1 AND delivered = 0 AND message_id > ?2 AND message_id < ?3
         ORDER BY message_id LIMIT ?4",
        params![user_id, direct_after, queue_before, fetch],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )?;
    // Pending rows (not yet in the index) past the user's index mark: the
    // unindexed tail's, from memory like `read_addressed` takes them.
    let candidates = tail_candidates(batch, user_id, direct_after, queue_before)?;
    let pending = read_page(
        batch.tx,
        "SELECT m.message_id FROM rarray(?2) r JOIN messages m ON m.message_id = r.value
         WHERE m.receiver_id = ?1 AND m.delivered = 2
         ORDER BY m.message_id LIMIT ?3",
        params![user_id, candidates, fetch],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )?;
    let direct = merge_pages(queued, pending, QUEUE_PAGE);
    if !include_groups || !is_in_any_group(batch.tx, user_id)? {
        return Ok(direct);
    }
    let group = read_page(
        batch.tx,
        "SELECT m.message_id FROM group_members g
         JOIN messages m ON m.group_id = g.group_id
            AND m.message_id > MAX(g.delivered_through, ?2)
         WHERE g.user_id = ?1 AND m.message_id < ?3 AND m.sender_id != ?1
         ORDER BY m.message_id LIMIT ?4",
        params![user_id, after, queue_before, fetch],
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
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    let after = queue.after.max(confirmed);
    let candidates = tail_candidates(batch, queue.user_id, after, queue.queue_before)?;
    read_page(
        batch.tx,
        "SELECT message_id FROM (
             SELECT message_id FROM received
             WHERE receiver_id = ?1 AND message_id > ?2 AND message_id < ?5
             ORDER BY message_id LIMIT ?3)
         UNION
         SELECT message_id FROM (
             SELECT value AS message_id FROM rarray(?4) ORDER BY value LIMIT ?3)
         UNION
         SELECT message_id FROM (
             SELECT m.message_id FROM group_members g
             JOIN messages m ON m.group_id = g.group_id
                AND m.message_id > MAX(?2, g.joined_through)
             WHERE g.user_id = ?1 AND m.message_id < ?5 AND m.sender_id != ?1
             ORDER BY m.message_id LIMIT ?3)
         ORDER BY message_id LIMIT ?3",
        params![
            queue.user_id,
            after,
            OFFLINE_CHUNK + 1,
            candidates,
            queue.queue_before
        ],
        PageFrom::Oldest,
        QUEUE_PAGE,
    )
}

/// The user's 1:1 messages in the unindexed tail past both `after` and
/// their index mark, below `before`, from memory (`Indexes::tail_to`): a
/// queue read's candidates there, as one `rarray` parameter. Scanning
/// `messages` by id range for them cost each login the whole tail: at
/// 5,000 users and 20,000 msg/s, resumes fell from ~12,800/s to ~1,200/s
/// (p50 12.4 ms) and every Ack meanwhile waited behind them.
fn tail_candidates(
    batch: &mut Batch,
    user_id: i64,
    after: i64,
    before: i64,
) -> rusqlite::Result<Array> {
    let from = after.max(batch.indexes.through(user_id));
    let rows = batch
        .indexes
        .tail_to(batch.tx, user_id, (from, before.saturating_sub(1)))?;
    Ok(as_array(rows.iter().map(|row| row.message_id).collect()))
}

/// Moves the user's group cursors to `taken.through` where they already
/// cover everything before `taken.from` (never backwards).
pub(super) fn advance_group_cursors(
    tx: &Transaction,
    user_id: i64,
    taken: GroupsTaken,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE group_members SET delivered_through = ?3
         WHERE user_id = ?1 AND delivered_through >= ?2 - 1 AND delivered_through < ?3",
    )?
    .execute(params![user_id, taken.from, taken.through])?;
    Ok(())
}

/// Every 1:1 message to the user up to this was confirmed by one of their
/// receipts devices, so it is not in their offline queue (schema version 6).
fn taken_through(tx: &Transaction, user_id: i64) -> rusqlite::Result<i64> {
    let taken = tx
        .prepare_cached("SELECT taken_through FROM users WHERE user_id = ?1")?
        .query_row([user_id], |row| row.get(0))
        .optional()?;
    Ok(taken.unwrap_or(0))
}

/// Whether the user is in any group (most logins are not: skip that query).
fn is_in_any_group(tx: &Transaction, user_id: i64) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM group_members WHERE user_id = ?1)")?
        .query_row([user_id], |row| row.get(0))
}
