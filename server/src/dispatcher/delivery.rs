//! Receipts (protocol 1.1): `Received{through}` (17) from a device that logged
//! in with `receipts: true`, and the coalesced `Delivered{username, through}`
//! (37) it earns the senders.
//!
//! The delivery model in one place (see ARCHITECTURE.md, "Delivery"):
//! - A receipts device *takes* a message only by confirming it: its session's
//!   `confirmed_through` is kept in the database, and a resume pushes
//!   everything addressed to the user past it, so nothing is lost whatever
//!   happens to the connection or the process.
//! - A device without receipts takes a message when the message is fully
//!   written to its socket; [`Dispatcher::disconnected`] puts back what it had
//!   not written.
//! - The offline queue (1:1 rows with `delivered = 0`, group messages past
//!   each member's cursor) is what no device has taken.

use protocol::client::Received;
use protocol::server::DeliveryReceipt;
use protocol::{ErrorType, ServerMessage};

use super::{Auth, Dispatcher, Effects};
use crate::completion::ConnId;
use crate::storage::Command;

const TAG_RECEIVED: i64 = 17;

impl Dispatcher {
    /// `Received{through}`: cumulative; a `through` at or below the session's
    /// confirmation is ignored, one past the highest id assigned counts as
    /// that id.
    pub(super) fn received(&mut self, conn: ConnId, body: Received, now: i64, fx: &mut Effects) {
        let highest_assigned = self.next_message_id - 1;
        let auth = self.clients.get_mut(&conn).map(|client| &mut client.auth);
        let (Some(Auth::LoggedIn {
            user_id,
            receipts,
            confirmed_through,
            session_hash,
            username,
            ..
        })
        | Some(Auth::Opening {
            user_id,
            receipts,
            confirmed_through,
            session_hash,
            username,
            ..
        })) = auth
        else {
            return;
        };
        if !*receipts {
            let detail = "Received needs a login with \"receipts\": true";
            fx.error(conn, ErrorType::BadRequest, detail, TAG_RECEIVED, now);
            return;
        }
        let through = body.through.min(highest_assigned);
        if through <= *confirmed_through {
            return;
        }
        *confirmed_through = through;
        fx.storage.push(Command::Confirm {
            user_id: *user_id,
            username: username.clone(),
            session_hash: session_hash.clone(),
            through,
        });
    }

    /// Storage recorded a confirmation: queue a Delivered receipt for each
    /// sender it covered (sent at the next tick, one per pair).
    pub(super) fn confirmed(&mut self, recipient: i64, name: &str, senders: Vec<(i64, i64)>) {
        for (sender, through) in senders {
            let due = self
                .receipts_due
                .entry((sender, recipient))
                .or_insert_with(|| (name.to_owned(), through));
            due.1 = due.1.max(through);
        }
    }

    /// Sends the Delivered receipts that came due since the last tick to the
    /// senders' receipts connections (at most one per pair per tick).
    pub fn send_due_receipts(&mut self, now: i64, fx: &mut Effects) {
        if self.receipts_due.is_empty() {
            return;
        }
        let due: Vec<((i64, i64), (String, i64))> = self.receipts_due.drain().collect();
        for ((sender, _), (username, through)) in due {
            let receipt = ServerMessage::Delivered(DeliveryReceipt { username, through });
            let frame = protocol::encode_server(&receipt, now);
            for conn in self.receipts_connections(sender) {
                fx.frames.push((conn, frame.clone()));
            }
        }
    }

    /// The logged-in connections of `user_id` that use receipts.
    fn receipts_connections(&self, user_id: i64) -> Vec<ConnId> {
        self.online
            .get(&user_id)
            .into_iter()
            .flatten()
            .copied()
            .filter(|conn| {
                matches!(
                    self.clients.get(conn).map(|client| &client.auth),
                    Some(Auth::LoggedIn { receipts: true, .. })
                )
            })
            .collect()
    }
}
