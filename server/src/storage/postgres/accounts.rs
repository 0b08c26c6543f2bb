//! Users, credentials and sessions (SQLite's `accounts.rs`, the same
//! behaviour): registering, the password lookup, opening, resuming and
//! ending a session, a connection's departure, and expiring unused sessions.

use std::net::SocketAddr;

use protocol::server::SessionInfo;

use super::contacts::mutual_contacts;
use super::delivery;
use super::limits;
use super::{Batch, Error};
use crate::completion::Requester;
use crate::config::{LAST_USED_RESOLUTION_SECS, SESSIONS_LISTED_MAX, SESSION_IDLE_SECS};
use crate::password::PasswordHash;
use crate::shared_limits::{SharedLogin, SharedRegistration};
use crate::storage::pages::QueueTake;
use crate::storage::{GroupsTaken, Reply};

/// `CreateUser`: the new account's id, or none when the name is taken.
pub(super) fn create_user(
    batch: &mut Batch,
    to: &Requester,
    username: &str,
    email: &str,
    hash: &PasswordHash,
    now: i64,
    shared: Option<&SharedRegistration>,
) -> Result<Reply, Error> {
    if let Some(shared) = shared {
        if !limits::take_registration(batch, shared)? {
            return Ok(Reply::RegistrationLimited { to: to.clone() });
        }
    }
    let inserted = batch.query_opt(
        "INSERT INTO users (username, email, password_hash, salt, created_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (username) DO NOTHING
         RETURNING user_id",
        &[&username, &email, &hash.phc, &hash.salt, &now],
    )?;
    Ok(Reply::UserCreated {
        to: to.clone(),
        username: username.to_owned(),
        user_id: inserted.map(|row| row.try_get(0)).transpose()?,
    })
}

/// `FetchCredentials`: the user's id and password hash, if the user exists.
pub(super) fn fetch_credentials(
    batch: &mut Batch,
    to: &Requester,
    username: &str,
    shared: Option<&SharedLogin>,
) -> Result<Reply, Error> {
    if let Some(shared) = shared {
        if !limits::begin_login(batch, username, shared)? {
            return Ok(Reply::LoginLocked { to: to.clone() });
        }
    }
    let found = batch
        .query_opt(
            "SELECT user_id, password_hash FROM users WHERE username = $1",
            &[&username],
        )?
        .map(|row| Ok::<_, Error>((row.try_get(0)?, row.try_get(1)?)))
        .transpose()?;
    Ok(Reply::Credentials {
        to: to.clone(),
        found,
    })
}

/// `LookUp`: the ids of the names that exist, and the group asked for.
pub(super) fn look_up(
    batch: &mut Batch,
    (to, ticket): (&Requester, u64),
    usernames: &[String],
    group_id: Option<i64>,
) -> Result<Reply, Error> {
    let users = batch
        .query(
            "SELECT username, user_id FROM users WHERE username = ANY($1)",
            &[&usernames],
        )?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(String, i64)>, Error>>()?;
    let group = match group_id {
        Some(id) => super::groups::group_row(batch, id)?,
        None => None,
    };
    Ok(Reply::Found {
        to: to.clone(),
        ticket,
        users,
        group,
    })
}

/// `OpenSession`: a new session after a password login, its user online,
/// and the first chunk of `queue`.
pub(super) fn open_session(
    batch: &mut Batch,
    to: &Requester,
    session_hash: &str,
    peer: SocketAddr,
    now: i64,
    queue: QueueTake,
) -> Result<Reply, Error> {
    batch.execute(
        "INSERT INTO sessions (session_hash, user_id, created_at, last_used_at, ip_address)
         VALUES ($1, $2, $3, $3, $4)",
        &[&session_hash, &queue.user_id, &now, &peer.ip().to_string()],
    )?;
    let session = Confirmation::StartNew(session_hash);
    session_opened(batch, to.clone(), queue, peer, now, session)
}

/// `ResumeSession`: the session, if it is the user's and not expired, is
/// used again; a receipts login's queue is everything past its confirmation.
pub(super) fn resume_session(
    batch: &mut Batch,
    to: &Requester,
    session_hash: &str,
    receipts: bool,
    peer: SocketAddr,
    now: i64,
    queue: QueueTake,
) -> Result<Reply, Error> {
    let idle_before = now - SESSION_IDLE_SECS;
    let found = batch.query_opt(
        "SELECT confirmed_through FROM sessions
         WHERE session_hash = $1 AND user_id = $2 AND last_used_at > $3",
        &[&session_hash, &queue.user_id, &idle_before],
    )?;
    let Some(row) = found else {
        return Ok(Reply::SessionInvalid { to: to.clone() });
    };
    let confirmed: i64 = row.try_get(0)?;
    touch_session(batch, session_hash, now)?;
    let queue = QueueTake {
        since: receipts.then_some(confirmed),
        ..queue
    };
    let session = Confirmation::Existing(confirmed);
    session_opened(batch, to.clone(), queue, peer, now, session)
}

/// The session was used `now`: its `last_used_at` moves there unless it is
/// within [`LAST_USED_RESOLUTION_SECS`] of it already (as SQLite's
/// `touch_session`).
fn touch_session(batch: &mut Batch, session_hash: &str, now: i64) -> Result<(), Error> {
    batch.execute(
        "UPDATE sessions SET last_used_at = $2 WHERE session_hash = $1 AND last_used_at <= $3",
        &[&session_hash, &now, &(now - LAST_USED_RESOLUTION_SECS)],
    )?;
    Ok(())
}

/// `EndSession` (Logout): the session is deleted.
pub(super) fn end_session(
    batch: &mut Batch,
    to: &Requester,
    session_hash: &str,
) -> Result<Reply, Error> {
    batch.execute(
        "DELETE FROM sessions WHERE session_hash = $1",
        &[&session_hash],
    )?;
    Ok(Reply::SessionEnded { to: to.clone() })
}

/// `Sessions`: the user's most recent sessions, oldest first.
pub(super) fn sessions(batch: &mut Batch, to: &Requester, user_id: i64) -> Result<Reply, Error> {
    let rows = batch.query(
        "SELECT session_hash, created_at, last_used_at, ip_address, confirmed_through
         FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, session_hash LIMIT $2",
        &[&user_id, &SESSIONS_LISTED_MAX],
    )?;
    let mut sessions = Vec::with_capacity(rows.len());
    for row in rows.iter().rev() {
        let info = SessionInfo {
            created_at: row.try_get(1)?,
            last_used_at: row.try_get(2)?,
            address: row.try_get(3)?,
            confirmed_through: row.try_get(4)?,
            current: false,
            online: false,
        };
        sessions.push((row.try_get(0)?, info));
    }
    Ok(Reply::Sessions {
        to: to.clone(),
        sessions,
    })
}

/// `ConnectionLost`: the session is touched, the group cursors move as far
/// as the connection took, and the user's last connection leaving marks
/// them offline (answered with the mutual contacts to tell).
pub(super) fn connection_lost(
    batch: &mut Batch,
    user_id: i64,
    username: &str,
    session_hash: &str,
    last: bool,
    groups_taken: Option<GroupsTaken>,
    now: i64,
) -> Result<Option<Reply>, Error> {
    touch_session(batch, session_hash, now)?;
    if let Some(taken) = groups_taken {
        delivery::advance_group_cursors(batch, user_id, taken)?;
    }
    if !last {
        return Ok(None);
    }
    batch.execute(
        "UPDATE users SET is_online = FALSE, last_activity = $2 WHERE user_id = $1",
        &[&user_id, &now],
    )?;
    Ok(Some(Reply::WentOffline {
        user_id,
        username: username.to_owned(),
        mutual_contacts: mutual_contacts(batch, user_id)?,
    }))
}

/// `PurgeSessions`: sessions unused since `idle_before` are deleted.
pub(super) fn purge_sessions(batch: &mut Batch, idle_before: i64) -> Result<(), Error> {
    let purged = batch.execute(
        "DELETE FROM sessions WHERE last_used_at <= $1",
        &[&idle_before],
    )?;
    if purged > 0 {
        log::info!("expired {purged} sessions unused for 7 days");
    }
    Ok(())
}

/// Every account, `(username, user_id)`, for the loop's directory.
pub(super) fn all_users(batch: &mut Batch) -> Result<Vec<(String, i64)>, Error> {
    batch
        .query("SELECT username, user_id FROM users", &[])?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Where an opened session's confirmation stands.
enum Confirmation<'a> {
    /// A resumed session's, as stored.
    Existing(i64),
    /// A new session (this hash): set just below the first message pushed.
    StartNew(&'a str),
}

/// Marks the user online, records the peer, and takes the first chunk of
/// the queue.
fn session_opened(
    batch: &mut Batch,
    to: Requester,
    queue: QueueTake,
    peer: SocketAddr,
    now: i64,
    session: Confirmation,
) -> Result<Reply, Error> {
    batch.execute(
        "UPDATE users SET is_online = TRUE, last_activity = $2, ip_address = $3, port = $4
         WHERE user_id = $1",
        &[
            &queue.user_id,
            &now,
            &peer.ip().to_string(),
            &i32::from(peer.port()),
        ],
    )?;
    let (queued, more_queued) = delivery::read_queue(batch, queue)?;
    let confirmed_through = match session {
        Confirmation::Existing(confirmed) => confirmed,
        Confirmation::StartNew(session_hash) => {
            // Just below the first message pushed to it: its queue, else the
            // next live one.
            let first = queued.first().map_or(queue.queue_before, |m| m.message_id);
            delivery::set_confirmed(batch, session_hash, first - 1)?;
            first - 1
        }
    };
    Ok(Reply::SessionOpened {
        to,
        queued,
        more_queued,
        mutual_contacts: mutual_contacts(batch, queue.user_id)?,
        confirmed_through,
        queue_before: queue.queue_before,
    })
}
