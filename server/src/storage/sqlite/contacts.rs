//! Contacts (the dispatcher's `contacts.rs`): adding and removing one, the
//! directory, and who is a mutual contact (told of presence changes).

use rusqlite::{params, OptionalExtension, Transaction};

use crate::completion::Requester;
use crate::storage::{ContactRow, PresenceChange, Reply};

/// `AddContact`: the contact is added (once), and the reply says whether it
/// is new and whether the contact had added the owner already.
pub(super) fn add_contact(
    tx: &Transaction,
    to: &Requester,
    owner_id: i64,
    owner_name: &str,
    contact_id: i64,
    now: i64,
) -> rusqlite::Result<Reply> {
    let added = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO contacts (owner_id, contact_id, created_at)
             VALUES (?1, ?2, ?3)",
        )?
        .execute(params![owner_id, contact_id, now])?
        == 1;
    let mutual = tx
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2)",
        )?
        .query_row(params![contact_id, owner_id], |row| row.get(0))?;
    Ok(Reply::ContactAdded {
        to: to.clone(),
        contacts: contacts(tx, owner_id)?,
        added,
        mutual,
        contact_id,
        owner_name: owner_name.to_owned(),
    })
}

/// `RemoveContact`: the contact is removed; the reply is the directory.
pub(super) fn remove_contact(
    tx: &Transaction,
    to: &Requester,
    owner_id: i64,
    contact_id: i64,
) -> rusqlite::Result<Reply> {
    tx.prepare_cached("DELETE FROM contacts WHERE owner_id = ?1 AND contact_id = ?2")?
        .execute(params![owner_id, contact_id])?;
    directory(tx, to, owner_id)
}

/// `Directory`: the owner's contacts.
pub(super) fn directory(
    tx: &Transaction,
    to: &Requester,
    owner_id: i64,
) -> rusqlite::Result<Reply> {
    Ok(Reply::Directory {
        to: to.clone(),
        contacts: contacts(tx, owner_id)?,
    })
}

/// Users with whom `user_id` has a mutual contact relationship.
pub(super) fn mutual_contacts(tx: &Transaction, user_id: i64) -> rusqlite::Result<Vec<i64>> {
    let mut statement = tx.prepare_cached(
        "SELECT c.contact_id FROM contacts c
         JOIN contacts r ON r.owner_id = c.contact_id AND r.contact_id = c.owner_id
         WHERE c.owner_id = ?1",
    )?;
    let rows = statement.query_map([user_id], |row| row.get(0))?;
    rows.collect()
}

/// `PresenceOf`: each user's name and mutual contacts (PostgreSQL's
/// `cluster.rs` has the cluster's version; this one keeps the backends
/// alike).
pub(super) fn presence_of(tx: &Transaction, changes: &[(i64, bool)]) -> rusqlite::Result<Reply> {
    let mut found = Vec::with_capacity(changes.len());
    for &(user_id, online) in changes {
        let username: Option<String> = tx
            .prepare_cached("SELECT username FROM users WHERE user_id = ?1")?
            .query_row([user_id], |row| row.get(0))
            .optional()?;
        if let Some(username) = username {
            found.push(PresenceChange {
                user_id,
                username,
                online,
                mutual_contacts: mutual_contacts(tx, user_id)?,
            });
        }
    }
    Ok(Reply::PresenceOf { changes: found })
}

/// Users that `owner_id` has added, with whether each added them back.
fn contacts(tx: &Transaction, owner_id: i64) -> rusqlite::Result<Vec<ContactRow>> {
    let mut statement = tx.prepare_cached(
        "SELECT u.username, u.user_id,
                EXISTS(SELECT 1 FROM contacts r
                       WHERE r.owner_id = c.contact_id AND r.contact_id = c.owner_id),
                u.last_activity
         FROM contacts c JOIN users u ON u.user_id = c.contact_id
         WHERE c.owner_id = ?1
         ORDER BY u.username",
    )?;
    let rows = statement.query_map([owner_id], |row| {
        Ok(ContactRow {
            username: row.get(0)?,
            user_id: row.get(1)?,
            mutual: row.get(2)?,
            last_activity: row.get(3)?,
        })
    })?;
    rows.collect()
}
