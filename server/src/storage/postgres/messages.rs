//! Messages (SQLite's `messages.rs`, the same behaviour): storing one,
//! History and Sync pages, the highest stored id, and the client ids read
//! back at a start. Pages are read by `Batch::read_page` (`mod.rs`) under
//! the shared budgets of `storage/pages.rs`.

use super::{Batch, Error};
use crate::completion::Requester;
use crate::storage::client_ids::ClientIds;
use crate::storage::pages::{PageBudget, PageFrom};
use crate::storage::{Conversation, NewMessage, Reply, StoredMessage};

/// `StoreMessage`: the message is inserted, unless its client id says the
/// sender already stored it (then the reply names the first one's id).
pub(super) fn store_message(
    batch: &mut Batch,
    (to, ticket): (&Requester, u64),
    client_message_id: Option<&str>,
    message: &NewMessage,
) -> Result<Reply, Error> {
    let mut duplicate_of =
        client_message_id.and_then(|client_id| batch.client_ids.find(message.sender_id, client_id));
    if let (None, Some(client_id), true) = (duplicate_of, client_message_id, batch.cluster) {
        // Another server may have stored it (the client resent through a
        // different one). This batch holds the id counter's lock (its id is
        // assigned), so every store of the same client id is committed or
        // waits behind this one: the look-up cannot miss it.
        duplicate_of = stored_client_id(batch, message.sender_id, client_id, message.time)?;
    }
    if duplicate_of.is_none() {
        insert_message(batch, message, client_message_id)?;
        if let Some(client_id) = client_message_id {
            batch.client_ids.remember(
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

/// The message `sender_id` stored with `client_id` within the retention
/// before `now`, if any (cluster mode: the in-memory index holds only this
/// server's).
fn stored_client_id(
    batch: &mut Batch,
    sender_id: i64,
    client_id: &str,
    now: i64,
) -> Result<Option<i64>, Error> {
    let since = now - crate::config::CLIENT_ID_RETENTION_SECS;
    let row = batch.query_opt(
        "SELECT message_id FROM messages
         WHERE sender_id = $1 AND client_message_id = $2 AND timestamp >= $3
         ORDER BY message_id LIMIT 1",
        &[&sender_id, &client_id, &since],
    )?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
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
) -> Result<Reply, Error> {
    let before = before.unwrap_or(i64::MAX);
    let (messages, has_more) = match with {
        Conversation::Peer(peer_id) => peer_history(batch, (user_id, peer_id), before, limit)?,
        Conversation::Group(group_id) => group_history(batch, group_id, before, limit)?,
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
) -> Result<Reply, Error> {
    let (messages, has_more) = sync_page(batch, user_id, since, limit)?;
    Ok(Reply::Synced {
        to: to.clone(),
        messages,
        has_more,
    })
}

/// The highest message id stored (0 for none).
pub(super) fn highest_stored_id(batch: &mut Batch) -> Result<i64, Error> {
    Ok(batch
        .query_one("SELECT COALESCE(MAX(message_id), 0) FROM messages", &[])?
        .try_get(0)?)
}

/// The index of recent client ids, rebuilt from the messages' rows at a
/// start: newest first, read in portal-sized pieces until the retention
/// (or the index's byte budget) is passed.
pub(super) fn load_client_ids(batch: &mut Batch, now: i64) -> Result<ClientIds, Error> {
    let mut loading = ClientIds::loading(now);
    batch.read_rows(
        "SELECT sender_id, client_message_id, message_id, timestamp FROM messages
         ORDER BY message_id DESC",
        &[],
        |row| {
            Ok(loading.offer(
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        },
    )?;
    Ok(loading.finish())
}

fn insert_message(
    batch: &mut Batch,
    message: &NewMessage,
    client_message_id: Option<&str>,
) -> Result<(), Error> {
    batch.execute(
        "INSERT INTO messages
             (message_id, sender_id, receiver_id, group_id, content, is_encrypted, timestamp,
              delivered, client_message_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &message.message_id,
            &message.sender_id,
            &message.receiver_id,
            &message.group_id,
            &message.content,
            &message.is_encrypted,
            &message.time,
            &message.delivered,
            &client_message_id,
        ],
    )?;
    Ok(())
}

/// The newest `limit` messages between the two users older than `before`,
/// oldest first, and whether older ones exist: each direction through its
/// sender index.
fn peer_history(
    batch: &mut Batch,
    (user_id, peer_id): (i64, i64),
    before: i64,
    limit: u32,
) -> Result<(Vec<StoredMessage>, bool), Error> {
    let fetch = i64::from(limit) + 1;
    batch.read_page(
        "SELECT message_id FROM (
             (SELECT message_id FROM messages
              WHERE sender_id = $1 AND receiver_id = $2 AND message_id < $3
              ORDER BY message_id DESC LIMIT $4)
             UNION
             (SELECT message_id FROM messages
              WHERE sender_id = $2 AND receiver_id = $1 AND message_id < $3
              ORDER BY message_id DESC LIMIT $4)
         ) AS ids ORDER BY message_id DESC LIMIT $4",
        &[&user_id, &peer_id, &before, &fetch],
        PageFrom::Newest,
        PageBudget::read(limit),
    )
}

/// The newest `limit` messages of a group older than `before`, oldest first.
fn group_history(
    batch: &mut Batch,
    group_id: i64,
    before: i64,
    limit: u32,
) -> Result<(Vec<StoredMessage>, bool), Error> {
    let fetch = i64::from(limit) + 1;
    batch.read_page(
        "SELECT message_id FROM messages
         WHERE group_id = $1 AND message_id < $2
         ORDER BY message_id DESC LIMIT $3",
        &[&group_id, &before, &fetch],
        PageFrom::Newest,
        PageBudget::read(limit),
    )
}

/// The oldest `limit` messages the user sent or received after `since`:
/// 1:1 sent and received through their indexes, and the user's groups'.
fn sync_page(
    batch: &mut Batch,
    user_id: i64,
    since: i64,
    limit: u32,
) -> Result<(Vec<StoredMessage>, bool), Error> {
    let fetch = i64::from(limit) + 1;
    batch.read_page(
        "SELECT message_id FROM (
             (SELECT message_id FROM messages
              WHERE sender_id = $1 AND message_id > $2 AND group_id IS NULL
              ORDER BY message_id LIMIT $3)
             UNION
             (SELECT message_id FROM messages
              WHERE receiver_id = $1 AND message_id > $2
              ORDER BY message_id LIMIT $3)
             UNION
             (SELECT m.message_id FROM group_members g
              JOIN messages m ON m.group_id = g.group_id AND m.message_id > $2
              WHERE g.user_id = $1
              ORDER BY m.message_id LIMIT $3)
         ) AS ids ORDER BY message_id LIMIT $3",
        &[&user_id, &since, &fetch],
        PageFrom::Oldest,
        PageBudget::read(limit),
    )
}
