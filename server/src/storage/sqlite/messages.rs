//! Messages (the dispatcher's `messages.rs`): storing one, History and Sync
//! pages, and the page reader every read of messages shares (the offline
//! queue's too), which stops at a page's budget in messages and bytes.
//!
//! Every read here is right whichever part of the messages is in the
//! per-user indexes (`sent`, `received`): the indexed part is read through
//! them, the unindexed tail past the user's watermark from memory (see
//! `indexes.rs`), as one `rarray` parameter of candidate ids.

use std::rc::Rc;

use rusqlite::types::Value;
use rusqlite::vtab::array::Array;
use rusqlite::{params, Connection, Transaction};

use super::indexes::Indexes;
use super::Batch;
use crate::completion::Requester;
use crate::storage::client_ids::ClientIds;
use crate::storage::pages::{PageBudget, PageFill, PageFrom};
use crate::storage::{Conversation, NewMessage, Reply, StoredMessage};

/// `StoreMessage`: the message is inserted, unless its client id says the
/// sender already stored it (then the reply names the first one's id).
pub(super) fn store_message(
    batch: &mut Batch,
    (to, ticket): (&Requester, u64),
    client_message_id: Option<&str>,
    message: &NewMessage,
) -> rusqlite::Result<Reply> {
    let duplicate_of =
        client_message_id.and_then(|client_id| batch.client_ids.find(message.sender_id, client_id));
    if duplicate_of.is_none() {
        insert_message(batch.tx, message, client_message_id)?;
        // It lands past the index watermarks, in the unindexed tail.
        batch.indexes.stored(message);
        if let Some(client_id) = client_message_id {
            let ids = &mut batch.client_ids;
            ids.remember(
                message.sender_id,
                client_id,
                message.message_id,
                message.time,
            );
        }
    }
    Ok(Reply::MessageStored {
        to: to.clone(),
        ticket,
        message_id: message.message_id,
        client_message_id: client_message_id.map(str::to_owned),
        duplicate_of,
        stored: None,
    })
}

/// `History`: a page of one conversation, with a peer or in a group.
pub(super) fn history(
    batch: &mut Batch,
    to: &Requester,
    user_id: i64,
    with: Conversation,
    chat_id: &str,
    before: Option<i64>,
    limit: u32,
) -> rusqlite::Result<Reply> {
    let (messages, has_more) = match with {
        Conversation::Peer(peer_id) => {
            peer_history(batch.tx, batch.indexes, (user_id, peer_id), before, limit)?
        }
        Conversation::Group(group_id) => group_history(batch.tx, group_id, before, limit)?,
    };
    Ok(Reply::History {
        to: to.clone(),
        chat_id: chat_id.to_owned(),
        messages,
        has_more,
    })
}

/// `Sync`: a page of everything the user sent or received after `since`.
pub(super) fn sync(
    batch: &mut Batch,
    to: &Requester,
    user_id: i64,
    since: i64,
    limit: u32,
) -> rusqlite::Result<Reply> {
    let (messages, has_more) = sync_page(batch.tx, batch.indexes, user_id, since, limit)?;
    Ok(Reply::Synced {
        to: to.clone(),
        messages,
        has_more,
    })
}

/// The highest message id stored (0 for none).
pub(super) fn highest_stored_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(message_id), 0) FROM messages",
        [],
        |row| row.get(0),
    )
}

/// The index of recent client ids, rebuilt from the messages' rows at a
/// start (newest first, stopping at the retention).
pub(super) fn load_client_ids(conn: &Connection, now: i64) -> rusqlite::Result<ClientIds> {
    let mut loading = ClientIds::loading(now);
    let mut statement = conn.prepare(
        "SELECT sender_id, client_message_id, message_id, timestamp FROM messages
         ORDER BY message_id DESC",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        if !loading.offer(row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?) {
            break;
        }
    }
    Ok(loading.finish())
}

/// `messages.delivered` for a new row: taken (1), or pending (2), outside
/// the undelivered index until a pass finds it still untaken (schema.rs).
fn delivered_column(taken: bool) -> i64 {
    match taken {
        true => 1,
        false => 2,
    }
}

fn insert_message(
    tx: &Transaction,
    message: &NewMessage,
    client_message_id: Option<&str>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO messages
             (message_id, sender_id, receiver_id, group_id, content, is_encrypted, timestamp,
              delivered, client_message_id)
         VALUES (?1, ?2, ?3, ?8, ?4, ?5, ?6, ?7, ?9)",
    )?
    .execute(params![
        message.message_id,
        message.sender_id,
        message.receiver_id,
        message.content,
        message.is_encrypted,
        message.time,
        delivered_column(message.delivered),
        message.group_id,
        client_message_id,
    ])?;
    Ok(())
}

/// The newest `limit` messages between the two users older than `before`,
/// oldest first, and whether older ones exist. Three parts: each direction
/// through the sender index, and the unindexed tail's candidates (from
/// memory: `Indexes::tail_between`).
pub(super) fn peer_history(
    tx: &Transaction,
    indexes: &mut Indexes,
    (user_id, peer_id): (i64, i64),
    before: Option<i64>,
    limit: u32,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    let fetch = limit + 1;
    let indexed_through = indexes.through(user_id).min(indexes.through(peer_id));
    let below = before.unwrap_or(i64::MAX);
    let tail = indexes.tail_between(
        tx,
        (user_id, peer_id),
        (indexed_through, below),
        fetch as usize,
    )?;
    read_page(
        tx,
        "SELECT message_id FROM (
             SELECT message_id FROM sent
             WHERE sender_id = ?1 AND receiver_id = ?2 AND message_id < ?3
             ORDER BY message_id DESC LIMIT ?4)
         UNION
         SELECT message_id FROM (
             SELECT message_id FROM sent
             WHERE sender_id = ?2 AND receiver_id = ?1 AND message_id < ?3
             ORDER BY message_id DESC LIMIT ?4)
         UNION
         SELECT value FROM rarray(?5)
         ORDER BY message_id DESC LIMIT ?4",
        params![user_id, peer_id, below, fetch, as_array(tail)],
        PageFrom::Newest,
        PageBudget::read(limit),
    )
}

/// The newest `limit` messages of a group older than `before`, oldest first.
fn group_history(
    tx: &Transaction,
    group_id: i64,
    before: Option<i64>,
    limit: u32,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    read_page(
        tx,
        "SELECT message_id FROM messages
         WHERE group_id = ?1 AND message_id < ?2
         ORDER BY message_id DESC LIMIT ?3",
        params![group_id, before.unwrap_or(i64::MAX), limit + 1],
        PageFrom::Newest,
        PageBudget::read(limit),
    )
}

/// The oldest `limit` messages the user sent or received after `since`:
/// sent and received through the indexes, the unindexed tail's candidates
/// (from memory: `Indexes::tail_of`), and the user's groups' messages.
pub(super) fn sync_page(
    tx: &Transaction,
    indexes: &mut Indexes,
    user_id: i64,
    since: i64,
    limit: u32,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    let fetch = limit + 1;
    let after = since.max(indexes.through(user_id));
    let tail = indexes.tail_of(tx, user_id, after, fetch as usize)?;
    read_page(
        tx,
        "SELECT message_id FROM (
             SELECT message_id FROM sent
             WHERE sender_id = ?1 AND message_id > ?2
             ORDER BY message_id LIMIT ?3)
         UNION
         SELECT message_id FROM (
             SELECT message_id FROM received
             WHERE receiver_id = ?1 AND message_id > ?2
             ORDER BY message_id LIMIT ?3)
         UNION
         SELECT value FROM rarray(?4)
         UNION
         SELECT message_id FROM (
             SELECT m.message_id FROM group_members g
             JOIN messages m ON m.group_id = g.group_id AND m.message_id > ?2
             WHERE g.user_id = ?1
             ORDER BY m.message_id LIMIT ?3)
         ORDER BY message_id LIMIT ?3",
        params![user_id, since, fetch, as_array(tail)],
        PageFrom::Oldest,
        PageBudget::read(limit),
    )
}

/// Message ids as one `rarray` parameter.
pub(super) fn as_array(ids: Vec<i64>) -> Array {
    Rc::new(ids.into_iter().map(Value::Integer).collect())
}

/// Reads a page of the messages whose ids `ids_query` selects, from the
/// `from` end, stopping at `budget`: rows past it are never read, so a page
/// costs what it holds whatever the messages' sizes. Returns the page oldest
/// first and whether selected messages were left out.
pub(super) fn read_page(
    tx: &Transaction,
    ids_query: &str,
    parameters: impl rusqlite::Params,
    from: PageFrom,
    budget: PageBudget,
) -> rusqlite::Result<(Vec<StoredMessage>, bool)> {
    let order = from.sql_order();
    let sql = format!(
        "SELECT m.message_id, s.username, r.username, m.content, m.is_encrypted, m.timestamp,
                m.group_id
         FROM messages m
         JOIN users s ON s.user_id = m.sender_id
         LEFT JOIN users r ON r.user_id = m.receiver_id
         WHERE m.message_id IN ({ids_query})
         ORDER BY m.message_id {order}"
    );
    let mut statement = tx.prepare_cached(&sql)?;
    let rows = statement.query_map(parameters, |row| {
        Ok(StoredMessage {
            message_id: row.get(0)?,
            sender: row.get(1)?,
            receiver: row.get(2)?,
            content: row.get(3)?,
            is_encrypted: row.get(4)?,
            time: row.get(5)?,
            group_id: row.get(6)?,
        })
    })?;
    let mut fill = PageFill::new(budget);
    for row in rows {
        if !fill.offer(row?) {
            break;
        }
    }
    Ok(fill.finish(from))
}
