//! Public keys for end-to-end encryption (the dispatcher handles them in
//! `contacts.rs`): publishing one's own, reading another user's.

use rusqlite::{params, OptionalExtension, Transaction};

use crate::completion::Requester;
use crate::storage::Reply;

/// `SetKey`: the user's published key is replaced.
pub(super) fn set_key(
    tx: &Transaction,
    to: &Requester,
    user_id: i64,
    username: &str,
    public_key: &str,
) -> rusqlite::Result<Reply> {
    tx.prepare_cached("UPDATE users SET public_key = ?2 WHERE user_id = ?1")?
        .execute(params![user_id, public_key])?;
    Ok(Reply::Key {
        to: to.clone(),
        username: username.to_owned(),
        public_key: Some(public_key.to_owned()),
    })
}

/// `GetKey`: the user's published key, if any.
pub(super) fn get_key(
    tx: &Transaction,
    to: &Requester,
    user_id: i64,
    username: &str,
) -> rusqlite::Result<Reply> {
    let public_key = tx
        .prepare_cached("SELECT public_key FROM users WHERE user_id = ?1")?
        .query_row([user_id], |row| row.get(0))
        .optional()?
        .flatten();
    Ok(Reply::Key {
        to: to.clone(),
        username: username.to_owned(),
        public_key,
    })
}
