//! Contacts (SQLite's `contacts.rs`, the same behaviour): adding and
//! removing one, the directory, and who is a mutual contact.

use super::{Batch, Error};
use crate::completion::Requester;
use crate::storage::{ContactRow, Reply};

/// `AddContact`: the contact is added (once), and the reply says whether it
/// is new and whether the contact had added the owner already.
pub(super) fn add_contact(
    batch: &mut Batch,
    to: &Requester,
    owner_id: i64,
    owner_name: &str,
    contact_id: i64,
    now: i64,
) -> Result<Reply, Error> {
    let added = batch.execute(
        "INSERT INTO contacts (owner_id, contact_id, created_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&owner_id, &contact_id, &now],
    )? == 1;
    let mutual = batch
        .query_one(
            "SELECT EXISTS(SELECT 1 FROM contacts WHERE owner_id = $1 AND contact_id = $2)",
            &[&contact_id, &owner_id],
        )?
        .try_get(0)?;
    Ok(Reply::ContactAdded {
        to: to.clone(),
        contacts: contacts(batch, owner_id)?,
        added,
        mutual,
        contact_id,
        owner_name: owner_name.to_owned(),
    })
}

/// `RemoveContact`: the contact is removed; the reply is the directory.
pub(super) fn remove_contact(
    batch: &mut Batch,
    to: &Requester,
    owner_id: i64,
    contact_id: i64,
) -> Result<Reply, Error> {
    batch.execute(
        "DELETE FROM contacts WHERE owner_id = $1 AND contact_id = $2",
        &[&owner_id, &contact_id],
    )?;
    directory(batch, to, owner_id)
}

/// `Directory`: the owner's contacts.
pub(super) fn directory(batch: &mut Batch, to: &Requester, owner_id: i64) -> Result<Reply, Error> {
    Ok(Reply::Directory {
        to: to.clone(),
        contacts: contacts(batch, owner_id)?,
    })
}

/// Users with whom `user_id` has a mutual contact relationship.
pub(super) fn mutual_contacts(batch: &mut Batch, user_id: i64) -> Result<Vec<i64>, Error> {
    batch
        .query(
            "SELECT c.contact_id FROM contacts c
             JOIN contacts r ON r.owner_id = c.contact_id AND r.contact_id = c.owner_id
             WHERE c.owner_id = $1",
            &[&user_id],
        )?
        .iter()
        .map(|row| Ok(row.try_get(0)?))
        .collect()
}

/// Users that `owner_id` has added, with whether each added them back, by
/// username in byte order (SQLite's order, whatever the database's locale).
fn contacts(batch: &mut Batch, owner_id: i64) -> Result<Vec<ContactRow>, Error> {
    batch
        .query(
            "SELECT u.username, u.user_id,
                    EXISTS(SELECT 1 FROM contacts r
                           WHERE r.owner_id = c.contact_id AND r.contact_id = c.owner_id),
                    u.last_activity
             FROM contacts c JOIN users u ON u.user_id = c.contact_id
             WHERE c.owner_id = $1
             ORDER BY u.username COLLATE \"C\"",
            &[&owner_id],
        )?
        .iter()
        .map(|row| {
            Ok(ContactRow {
                username: row.try_get(0)?,
                user_id: row.try_get(1)?,
                mutual: row.try_get(2)?,
                last_activity: row.try_get(3)?,
            })
        })
        .collect()
}
