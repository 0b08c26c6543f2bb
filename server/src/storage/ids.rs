//! Message ids: assigned by storage, inside the transaction that commits the
//! message, from one counter row (`server_state`, key
//! [`IDS_KEY`]).
//!
//! Why here and not in the loop: with several servers on one database, ids
//! taken before the commit could commit out of order (server A takes 100,
//! B takes 101 and commits first), and a reader at 101 (`Sync{since}`, a
//! receipts cursor, an offline-queue bound) would skip 100 for ever. So the
//! first id a batch takes reads the counter row *locked* (PostgreSQL:
//! `SELECT … FOR UPDATE`; SQLite has one writer), the batch hands out the
//! ids after it one by one, and writes the counter back just before its
//! commit. The row lock is held until the commit, so another server's batch
//! waits for it and **commit order is id order**: whoever sees id `n`
//! committed also sees every id below `n` that will ever exist. One counter
//! read and one write per batch (group commit keeps that cheap).
//!
//! Ids are never reused: the counter commits with the messages, so it is
//! past every committed id, crash or not; ids of a rolled-back batch were
//! never seen by anyone (the loop learns an id only from a committed
//! batch's reply), so handing them out again is harmless. A resend this
//! server remembers takes no id ([`needs_id`]); one found only in the
//! database (cluster mode) and failed stores leave gaps, which nothing minds.

use super::client_ids::ClientIds;
use super::Command;

/// The `server_state` key of the highest message id handed out. Its name is
/// from when the loop took ids from reserved blocks; it meant "every id
/// handed out is at or below this" then too, so old databases read on.
pub(super) const IDS_KEY: &str = "ids_reserved_through";

/// The ids one transaction has handed out.
#[derive(Debug, Default)]
pub(super) struct BatchIds {
    /// The highest id handed out, once the counter is read (and locked).
    highest: Option<i64>,
    /// Ids were handed out: the counter is written before the commit.
    taken: bool,
}

impl BatchIds {
    /// The highest id handed out so far, if the counter was read.
    pub(super) fn highest(&self) -> Option<i64> {
        self.highest
    }

    /// Hands out the id after `highest` (the counter as read, or the last
    /// id handed out).
    pub(super) fn take_after(&mut self, highest: i64) -> i64 {
        let id = highest + 1;
        self.highest = Some(id);
        self.taken = true;
        id
    }

    /// The value to write to the counter before the commit, if any id was
    /// handed out.
    pub(super) fn to_save(&self) -> Option<i64> {
        self.highest.filter(|_| self.taken)
    }
}

/// Whether `command` needs a message id (a StoreMessage that is not a
/// resend this server remembers): the backend gives it one before running
/// it, so every later step sees the assigned id. A remembered resend takes
/// none, so answering it writes nothing — with the disk full, a resend of a
/// message stored before is still acked, not refused while its recipient
/// already holds it (the fault-injection checker found that).
pub(super) fn needs_id(command: &Command, client_ids: &mut ClientIds) -> bool {
    match command {
        Command::StoreMessage {
            client_message_id,
            message,
            ..
        } => client_message_id
            .as_deref()
            .and_then(|client_id| client_ids.find(message.sender_id, client_id))
            .is_none(),
        _ => false,
    }
}

/// Gives a StoreMessage its id.
pub(super) fn assign(command: &mut Command, id: i64) {
    if let Command::StoreMessage { message, .. } = command {
        message.message_id = id;
    }
}
