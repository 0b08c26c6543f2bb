//! Public keys for end-to-end encryption (SQLite's `keys.rs`, the same
//! behaviour): publishing one's own, reading another user's.

use super::{Batch, Error};
use crate::completion::Requester;
use crate::storage::Reply;

/// `SetKey`: the user's published key is replaced.
pub(super) fn set_key(
    batch: &mut Batch,
    to: &Requester,
    user_id: i64,
    username: &str,
    public_key: &str,
) -> Result<Reply, Error> {
    batch.execute(
        "UPDATE users SET public_key = $2 WHERE user_id = $1",
        &[&user_id, &public_key],
    )?;
    Ok(Reply::Key {
        to: to.clone(),
        username: username.to_owned(),
        public_key: Some(public_key.to_owned()),
    })
}

/// `GetKey`: the user's published key, if any.
pub(super) fn get_key(
    batch: &mut Batch,
    to: &Requester,
    user_id: i64,
    username: &str,
) -> Result<Reply, Error> {
    let public_key = batch
        .query_opt(
            "SELECT public_key FROM users WHERE user_id = $1",
            &[&user_id],
        )?
        .map(|row| row.try_get::<_, Option<String>>(0))
        .transpose()?
        .flatten();
    Ok(Reply::Key {
        to: to.clone(),
        username: username.to_owned(),
        public_key,
    })
}
