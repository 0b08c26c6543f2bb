//! Users, credentials and sessions (the dispatcher's `accounts.rs`):
//! registering, the password lookup, opening, resuming and ending a session,
//! a connection's departure, and expiring unused sessions.

use std::net::SocketAddr;

use protocol::server::SessionInfo;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::contacts::mutual_contacts;
use super::delivery;
use super::Batch;
use crate::completion::Requester;
use crate::config::{LAST_USED_RESOLUTION_SECS, SESSIONS_LISTED_MAX, SESSION_IDLE_SECS};
use crate::password::PasswordHash;
use crate::storage::pages::QueueTake;
use crate::storage::{GroupsTaken, Reply};

/// `CreateUser`: the new account's id, or none when the name is taken.
pub(super) fn create_user(
    tx: &Transaction,
    to: &Requester,
    username: &str,
    email: &str,
    hash: &PasswordHash,
    now: i64,
) -> rusqlite::Result<Reply> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO users (username, email, password_hash, salt, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![username, email, hash.phc, hash.salt, now])?;
    Ok(Reply::UserCreated {
        to: to.clone(),
        username: username.to_owned(),
        user_id: (inserted == 1).then(|| tx.last_insert_rowid()),
    })
}

/// `FetchCredentials`: the user's id and password hash, if the user exists.
pub(super) fn fetch_credentials(
    tx: &Transaction,
    to: &Requester,
    username: &str,
) -> rusqlite::Result<Reply> {
    let found = tx
        .prepare_cached("SELECT user_id, password_hash FROM users WHERE username = ?1")?
        .query_row([username], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(Reply::Credentials {
        to: to.clone(),
        found,
    })
}

/// `LookUp`: the ids of the names that exist, and the group asked for.
pub(super) fn look_up(
    tx: &Transaction,
    (to, ticket): (&Requester, u64),
    usernames: &[String],
    group_id: Option<i64>,
) -> rusqlite::Result<Reply> {
    let mut select = tx.prepare_cached("SELECT user_id FROM users WHERE username = ?1")?;
    let mut users = Vec::new();
    for name in usernames {
        if let Some(id) = select.query_row([name], |row| row.get(0)).optional()? {
            users.push((name.clone(), id));
        }
    }
    let group = group_id
        .map(|id| super::groups::group_row(tx, id))
        .transpose()?
        .flatten();
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
) -> rusqlite::Result<Reply> {
    batch
        .tx
        .prepare_cached(
            "INSERT INTO sessions (session_hash, user_id, created_at, last_used_at, ip_address)
             VALUES (?1, ?2, ?3, ?3, ?4)",
        )?
        .execute(params![
            session_hash,
            queue.user_id,
            now,
            peer.ip().to_string()
        ])?;
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
) -> rusqlite::Result<Reply> {
    let idle_before = now - SESSION_IDLE_SECS;
    let found = batch
        .tx
        .prepare_cached(
            "SELECT confirmed_through FROM sessions
             WHERE session_hash = ?1 AND user_id = ?2 AND last_used_at > ?3",
        )?
        .query_row(params![session_hash, queue.user_id, idle_before], |row| {
            row.get::<_, i64>(0)
        })
        .optional()?;
    let Some(confirmed) = found else {
        return Ok(Reply::SessionInvalid { to: to.clone() });
    };
    touch_session(batch.tx, session_hash, now)?;
    let queue = QueueTake {
        since: receipts.then_some(confirmed),
        ..queue
    };
    let session = Confirmation::Existing(confirmed);
    session_opened(batch, to.clone(), queue, peer, now, session)
}

/// `EndSession` (Logout): the session is deleted.
pub(super) fn end_session(
    tx: &Transaction,
    to: &Requester,
    session_hash: &str,
) -> rusqlite::Result<Reply> {
    tx.prepare_cached("DELETE FROM sessions WHERE session_hash = ?1")?
        .execute([session_hash])?;
    Ok(Reply::SessionEnded { to: to.clone() })
}

/// `Sessions`: the user's sessions, oldest first.
pub(super) fn sessions(tx: &Transaction, to: &Requester, user_id: i64) -> rusqlite::Result<Reply> {
    let mut statement = tx.prepare_cached(
        "SELECT session_hash, created_at, last_used_at, ip_address, confirmed_through
         FROM sessions WHERE user_id = ?1 ORDER BY created_at DESC, session_hash LIMIT ?2",
    )?;
    let mut sessions: Vec<_> = statement
        .query_map([user_id, SESSIONS_LISTED_MAX], |row| {
            let info = SessionInfo {
                created_at: row.get(1)?,
                last_used_at: row.get(2)?,
                address: row.get(3)?,
                confirmed_through: row.get(4)?,
                current: false,
                online: false,
            };
            Ok((row.get(0)?, info))
        })?
        .collect::<rusqlite::Result<_>>()?;
    sessions.reverse();
    Ok(Reply::Sessions {
        to: to.clone(),
        sessions,
    })
}

/// `ConnectionLost`: the session is touched, the group cursors move as far
/// as the connection took, and the user's last connection leaving marks
/// them offline (answered with the mutual contacts to tell).
pub(super) fn connection_lost(
    tx: &Transaction,
    user_id: i64,
    username: &str,
    session_hash: &str,
    last: bool,
    groups_taken: Option<GroupsTaken>,
    now: i64,
) -> rusqlite::Result<Option<Reply>> {
    touch_session(tx, session_hash, now)?;
    if let Some(taken) = groups_taken {
        delivery::advance_group_cursors(tx, user_id, taken)?;
    }
    if !last {
        return Ok(None);
    }
    tx.prepare_cached("UPDATE users SET is_online = FALSE, last_activity = ?2 WHERE user_id = ?1")?
        .execute(params![user_id, now])?;
    Ok(Some(Reply::WentOffline {
        user_id,
        username: username.to_owned(),
        mutual_contacts: mutual_contacts(tx, user_id)?,
    }))
}

/// The session was used `now`: its `last_used_at` moves there unless it is
/// within [`LAST_USED_RESOLUTION_SECS`] of it already (then nothing is
/// written).
fn touch_session(tx: &Transaction, session_hash: &str, now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE sessions SET last_used_at = ?2 WHERE session_hash = ?1 AND last_used_at <= ?3",
    )?
    .execute(params![session_hash, now, now - LAST_USED_RESOLUTION_SECS])?;
    Ok(())
}

/// `PurgeSessions`: sessions unused since `idle_before` are deleted.
pub(super) fn purge_sessions(tx: &Transaction, idle_before: i64) -> rusqlite::Result<()> {
    let purged = tx
        .prepare_cached("DELETE FROM sessions WHERE last_used_at <= ?1")?
        .execute([idle_before])?;
    if purged > 0 {
        log::info!("expired {purged} sessions unused for 7 days");
    }
    Ok(())
}

/// Every account, `(username, user_id)`, for the loop's directory.
pub(super) fn all_users(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    conn.prepare("SELECT username, user_id FROM users")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
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
) -> rusqlite::Result<Reply> {
    let tx = batch.tx;
    tx.prepare_cached(
        "UPDATE users SET is_online = TRUE, last_activity = ?2, ip_address = ?3, port = ?4
         WHERE user_id = ?1",
    )?
    .execute(params![
        queue.user_id,
        now,
        peer.ip().to_string(),
        peer.port()
    ])?;
    let (queued, more_queued) = delivery::read_queue(batch, queue)?;
    let confirmed_through = match session {
        Confirmation::Existing(confirmed) => confirmed,
        Confirmation::StartNew(session_hash) => {
            // Just below the first message pushed to it: its queue, else the
            // next live one.
            let first = queued.first().map_or(queue.queue_before, |m| m.message_id);
            delivery::set_confirmed(tx, session_hash, first - 1)?;
            first - 1
        }
    };
    Ok(Reply::SessionOpened {
        to,
        queued,
        more_queued,
        mutual_contacts: mutual_contacts(tx, queue.user_id)?,
        confirmed_through,
        queue_before: queue.queue_before,
    })
}
