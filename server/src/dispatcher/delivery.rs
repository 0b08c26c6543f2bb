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
use protocol::server::{Delivered, DeliveryReceipt};
use protocol::ClientTag;
use protocol::{ErrorType, ServerMessage};

use super::{Auth, Dispatcher, Effects, Queued};
use crate::bus::BusEvent;
use crate::completion::{ConnId, Requester};
use crate::config;
use crate::id_map::{IdMap, IdSet};
use crate::storage::{Command, NewMessage, StoredMessage};

/// Whether a logged-in connection is pushed messages as they are committed.
///
/// A recipient is never closed for what others send: when its unsent output
/// is past [`crate::config::PUSH_BYTES_MAX`] (it reads slower than they
/// send), the next message for it is left in storage, where it is anyway,
/// and so is every later one; once the output has drained, they are pushed a
/// page at a time from storage (the offline-queue read, from `from` on) until
/// a page comes back with nothing more, and the connection is live again.
///
/// Nothing falls between the two: storage answers commands in order, so a
/// message committed before a page was read is in that page, and one
/// committed after it reaches the loop after the page does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stream {
    /// Messages are pushed as they are committed.
    #[default]
    Live,
    /// Messages from `from` on are pushed from storage.
    Behind {
        /// The first message not yet pushed.
        from: i64,
    },
    /// Cluster mode, every device: every message comes from storage, read
    /// past the last one pushed, so pushes are in increasing id order with
    /// nothing left out (commit order is id order, `storage/ids.rs`), a
    /// cumulative confirmation never covers a message the device did not
    /// get, and a device without receipts gets messages from one sender in
    /// order and every one committed while it is connected — whatever
    /// order the bus brings notices in, and whatever notices it lost. A
    /// commit (here, or a notice from another server) only asks for a
    /// read.
    FromStorage {
        /// The first message not yet pushed.
        from: i64,
        /// A read is on its way.
        reading: bool,
        /// A notice came during that read: read again after it.
        again: bool,
    },
}

impl Stream {
    /// Whether messages are being left in storage.
    pub fn is_behind(&self) -> bool {
        matches!(self, Stream::Behind { .. })
    }

    /// Cluster mode: something new may be in storage for a device that
    /// reads from it. Returns whether to ask for a read now; with one on
    /// its way, another follows it instead.
    pub(super) fn notice(&mut self) -> bool {
        match self {
            Stream::FromStorage { reading, again, .. } if *reading => {
                *again = true;
                false
            }
            Stream::FromStorage { reading, .. } => {
                *reading = true;
                true
            }
            Stream::Live | Stream::Behind { .. } => false,
        }
    }

    /// Leaves message `message_id` in storage; returns whether the stream
    /// was live until now (then a catch-up page is to be asked for).
    pub(super) fn fall_behind(&mut self, message_id: i64) -> bool {
        if self.is_behind() {
            return false;
        }
        *self = Stream::Behind { from: message_id };
        true
    }
}

/// Where a message goes once it is committed.
#[derive(Debug)]
pub(super) enum Route {
    /// To this user's connections.
    User {
        /// The recipient.
        receiver_id: i64,
        /// Their name (the frame's `dest_id`).
        name: String,
    },
    /// To every member of this group.
    Group(i64),
}

/// A message accepted and on its way to storage: delivered only after the
/// commit, so no recipient holds a message the server did not keep.
#[derive(Debug)]
pub(super) struct AwaitingCommit {
    /// The sender's name (the frame's `source_id`).
    source: String,
    /// Where it goes.
    route: Route,
    /// The sending connection, which gets no copy.
    except: ConnId,
    /// Its content's bytes, charged to the storage budget until committed.
    bytes: usize,
}

/// What storage says about a StoreMessage (see `Reply::MessageStored`).
pub(super) struct MessageStored {
    /// The loop's name for this send.
    pub ticket: u64,
    /// The id this send was given.
    pub message_id: i64,
    /// The client's id, echoed in the Ack.
    pub client_message_id: Option<String>,
    /// A resend: the first message's id (nothing was stored).
    pub duplicate_of: Option<i64>,
    /// The committed message, handed back for delivery.
    pub message: Option<NewMessage>,
}

impl Dispatcher {
    /// Remembers where the send `ticket` goes until its commit.
    pub(super) fn await_commit(
        &mut self,
        ticket: u64,
        source: String,
        route: Route,
        (except, bytes): (ConnId, usize),
    ) {
        self.storing_bytes += bytes;
        if let Some(client) = self.clients.get_mut(&except) {
            client.storing_bytes += bytes;
        }
        let waiting = AwaitingCommit {
            source,
            route,
            except,
            bytes,
        };
        self.awaiting_commit.insert(ticket, waiting);
    }

    /// Whether `bytes` more of message content fit the storage budget: the
    /// process's ([`config::STORAGE_BYTES_MAX`]) and the sending
    /// connection's share of it ([`config::STORAGE_BYTES_PER_CONNECTION`]).
    pub(super) fn storage_budget_allows(&self, conn: ConnId, bytes: usize) -> bool {
        let connection = self.clients.get(&conn).map_or(0, |c| c.storing_bytes);
        self.storing_bytes + bytes <= config::STORAGE_BYTES_MAX
            && connection + bytes <= config::STORAGE_BYTES_PER_CONNECTION
    }

    /// Takes the send `ticket` off the commit wait and its bytes off the
    /// storage budget.
    fn stop_awaiting(&mut self, ticket: u64) -> Option<AwaitingCommit> {
        let waiting = self.awaiting_commit.remove(&ticket)?;
        self.storing_bytes -= waiting.bytes;
        if let Some(client) = self.clients.get_mut(&waiting.except) {
            client.storing_bytes = client.storing_bytes.saturating_sub(waiting.bytes);
        }
        Some(waiting)
    }

    /// The message was not stored (a resend, or storage failed): it is
    /// never delivered.
    pub(super) fn forget_delivery(&mut self, ticket: u64) {
        self.stop_awaiting(ticket);
    }

    /// The message is committed: deliver it to every recipient connection.
    /// If whether a device without receipts took it differs from what was
    /// stored (a recipient came or went meanwhile), storage is told.
    pub(super) fn deliver_committed(&mut self, ticket: u64, message: NewMessage, fx: &mut Effects) {
        let Some(waiting) = self.stop_awaiting(ticket) else {
            return;
        };
        let message_id = message.message_id;
        let (dest_id, group_id) = match &waiting.route {
            Route::User { name, .. } => (Some(name.clone()), None),
            Route::Group(group_id) => (None, Some(*group_id)),
        };
        let delivered = Delivered {
            message_id,
            source_id: waiting.source,
            dest_id,
            group_id,
            content: message.content,
            is_encrypted: message.is_encrypted,
            time: message.time,
        };
        let frame = protocol::encode_delivered(&delivered);
        if self.limits.cluster {
            // The recipients' connections on other servers.
            let recipients = match &waiting.route {
                Route::User { receiver_id, .. } => vec![*receiver_id],
                Route::Group(group_id) => self.group_member_ids(*group_id),
            };
            let event = BusEvent::Message {
                recipients,
                message: delivered,
            };
            self.publish(event, fx);
        }
        let except = Some(waiting.except);
        match waiting.route {
            Route::User { receiver_id, .. } => {
                let queued = Queued::Direct {
                    taken: message.delivered,
                };
                let message_ref = Some((message_id, queued));
                let pushed = self.push_to_user(receiver_id, &frame, message_ref, except, fx);
                let taken = pushed || receiver_id == message.sender_id;
                if taken && !message.delivered {
                    let message_ids = vec![message_id];
                    fx.storage.push(Command::MarkDelivered {
                        user_id: receiver_id,
                        message_ids,
                    });
                } else if !taken && message.delivered {
                    fx.storage.push(Command::Requeue {
                        user_id: receiver_id,
                        from_message_id: message_id,
                    });
                }
            }
            Route::Group(group_id) => {
                for member in self.group_member_ids(group_id) {
                    let message_ref = Some((message_id, Queued::Group));
                    self.push_to_user(member, &frame, message_ref, except, fx);
                }
            }
        }
    }

    /// Asks storage for the next page of what `conn` is behind on, once its
    /// output has drained (the offline-queue read, unbounded above: a legacy
    /// device gets what no device took, a receipts device everything
    /// addressed to the user; in cluster mode a legacy device, too, gets
    /// everything past what it was pushed, as it would have live).
    pub(super) fn ask_catch_up_page(&mut self, conn: ConnId, fx: &mut Effects) {
        let Some(Auth::LoggedIn {
            user_id,
            receipts,
            confirmed_through,
            stream,
            ..
        }) = self.clients.get(&conn).map(|client| &client.auth)
        else {
            return;
        };
        let (from, since) = match *stream {
            Stream::Live => return,
            Stream::Behind { from } => (from, receipts.then_some(*confirmed_through)),
            Stream::FromStorage { from, .. } if *receipts => (from, Some(*confirmed_through)),
            Stream::FromStorage { from, .. } => (from, Some(from - 1)),
        };
        let page = Command::TakeQueue {
            // A push, not an answer to a request: no request id.
            to: Requester {
                conn,
                request_id: None,
            },
            user_id: *user_id,
            queue_before: i64::MAX,
            after: from - 1,
            since,
            include_groups: true,
        };
        fx.after_flush.push((conn, page));
    }

    /// A page of what `conn` was behind on: push it; ask for the next, or
    /// go live when storage has nothing more.
    pub(super) fn push_catch_up_page(
        &mut self,
        conn: ConnId,
        page: Vec<StoredMessage>,
        more: bool,
        fx: &mut Effects,
    ) {
        let Some(Auth::LoggedIn {
            user_id,
            receipts,
            stream: stream @ (Stream::Behind { .. } | Stream::FromStorage { .. }),
            ..
        }) = self.clients.get_mut(&conn).map(|client| &mut client.auth)
        else {
            return;
        };
        let (user_id, receipts) = (*user_id, *receipts);
        let pushed_through = page.last().map(|message| message.message_id);
        if let Some(last) = pushed_through {
            // In a cluster a page may hold ids the bus has not announced
            // here yet: confirmations up to them are not capped below.
            self.highest_message_id = self.highest_message_id.max(last);
        }
        let read_on;
        *stream = match (more, pushed_through, *stream) {
            (more, last, Stream::FromStorage { from, again, .. }) => {
                read_on = more || again;
                Stream::FromStorage {
                    from: last.map_or(from, |last| last + 1),
                    reading: read_on,
                    again: false,
                }
            }
            (false, _, _) => {
                read_on = false;
                Stream::Live
            }
            (true, Some(last), _) => {
                read_on = true;
                Stream::Behind { from: last + 1 }
            }
            (true, None, behind) => {
                read_on = true;
                behind
            }
        };
        push_page(conn, (user_id, receipts), page, fx);
        if read_on {
            self.ask_catch_up_page(conn, fx);
        }
    }

    /// The loop tells whether `conn`'s unsent output is past
    /// [`crate::config::PUSH_BYTES_MAX`]; while it is, live messages for it
    /// stay in storage (see [`Stream`]).
    pub fn set_output_full(&mut self, conn: ConnId, full: bool) {
        if let Some(client) = self.clients.get_mut(&conn) {
            client.output_full = full;
        }
    }

    /// Whether `user_id` has a logged-in connection without receipts.
    pub(super) fn has_any_legacy_connection(&self, user_id: i64) -> bool {
        self.legacy_connections(user_id).next().is_some()
    }

    /// Whether `user_id` has a logged-in connection without receipts other
    /// than `except` (one that takes a message by reading it).
    pub(super) fn has_legacy_connection(&self, user_id: i64, except: ConnId) -> bool {
        self.legacy_connections(user_id).any(|conn| conn != except)
    }

    fn legacy_connections(&self, user_id: i64) -> impl Iterator<Item = ConnId> + '_ {
        self.online
            .get(&user_id)
            .into_iter()
            .flatten()
            .copied()
            .filter(|conn| {
                matches!(
                    self.clients.get(conn).map(|client| &client.auth),
                    Some(Auth::LoggedIn {
                        receipts: false,
                        ..
                    })
                )
            })
    }

    /// `Received{through}`: cumulative; a `through` at or below the session's
    /// confirmation is ignored, one past the highest id assigned counts as
    /// that id.
    pub(super) fn received(&mut self, conn: ConnId, body: Received, now: i64, fx: &mut Effects) {
        let highest_assigned = self.highest_message_id;
        let auth = self.clients.get_mut(&conn).map(|client| &mut client.auth);
        let (receipts, confirmed_through) = match auth {
            Some(Auth::LoggedIn {
                receipts,
                confirmed_through,
                ..
            }) => (receipts, confirmed_through),
            Some(Auth::Opening(opening)) => (&mut opening.receipts, &mut opening.confirmed_through),
            _ => return,
        };
        if !*receipts {
            let detail = "Received needs a login with \"receipts\": true";
            fx.error(
                conn,
                ErrorType::BadRequest,
                detail,
                ClientTag::Received,
                now,
            );
            return;
        }
        let through = body.through.min(highest_assigned);
        if through <= *confirmed_through {
            return;
        }
        *confirmed_through = through;
        // Recorded at the next tick (or when the connection goes): one write
        // per device per tick, however often it confirms. A crash meanwhile
        // only means the device is pushed those messages again on resume.
        self.confirms_due.insert(conn);
    }

    /// Writes the confirmation of `conn`'s session if one is waiting.
    pub(super) fn record_confirmation(&mut self, conn: ConnId, fx: &mut Effects) {
        if self.confirms_due.remove(conn) {
            self.write_confirmation(conn, fx);
        }
    }

    /// Writes the confirmation of `conn`'s session.
    fn write_confirmation(&mut self, conn: ConnId, fx: &mut Effects) {
        let auth = self.clients.get(&conn).map(|client| &client.auth);
        let (user_id, username, session_hash, confirmed_through) = match auth {
            Some(Auth::LoggedIn {
                user_id,
                username,
                session_hash,
                confirmed_through,
                ..
            }) => (user_id, username, session_hash, confirmed_through),
            Some(Auth::Opening(opening)) => (
                &opening.user_id,
                &opening.username,
                &opening.session_hash,
                &opening.confirmed_through,
            ),
            _ => return,
        };
        fx.storage.push(Command::Confirm {
            user_id: *user_id,
            username: username.clone(),
            session_hash: session_hash.clone(),
            through: *confirmed_through,
        });
    }

    /// Once per [`config::CONFIRM_TICK`]: writes the waiting confirmations
    /// of the devices in the schedule's next phase, and sends the Delivered
    /// receipts of the senders in the receipts' next phase.
    pub fn confirm_tick(&mut self, now: i64, fx: &mut Effects) {
        for conn in self.confirms_due.take_next_phase() {
            self.write_confirmation(conn, fx);
        }
        self.send_due_receipts(now, fx);
    }

    /// Storage recorded a confirmation: queue a Delivered receipt for each
    /// sender it covered (sent in the sender's phase, one per pair).
    pub(super) fn confirmed(&mut self, recipient: i64, name: &str, senders: Vec<(i64, i64)>) {
        for (sender, through) in senders {
            self.receipts_due.insert((sender, recipient), name, through);
        }
    }

    /// Once per tick: the heartbeat of cluster mode when it is due.
    pub fn tick(&mut self, fx: &mut Effects) {
        self.beat_if_due(fx);
    }

    /// Sends the Delivered receipts of the next phase's senders to their
    /// receipts connections (at most one per pair per tick), here and, in
    /// cluster mode, through the bus on the other servers.
    fn send_due_receipts(&mut self, now: i64, fx: &mut Effects) {
        for ((sender, _), (username, through)) in self.receipts_due.take_next_phase() {
            let receipt = ServerMessage::Delivered(DeliveryReceipt { username, through });
            let frame = protocol::encode_server(&receipt, now);
            for conn in self.receipts_connections(sender) {
                fx.push(conn, frame.clone());
            }
            let event = BusEvent::Delivered {
                sender_id: sender,
                frame,
            };
            self.publish(event, fx);
        }
    }

    /// The logged-in connections of `user_id` that use receipts.
    pub(super) fn receipts_connections(&self, user_id: i64) -> Vec<ConnId> {
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

/// Queues a stored message for `conn` as a push (a Message frame, with no
/// request id, tracked as unflushed until written).
pub(super) fn push_stored(conn: ConnId, message: StoredMessage, fx: &mut Effects) {
    let message_id = message.message_id;
    let frame = protocol::encode_delivered(&super::delivered(message));
    fx.push_message(conn, frame, message_id);
}

/// Pushes a page of stored messages (offline queue or catch-up) to `conn`
/// of `user_id`. A device without receipts takes its 1:1 messages once they
/// are written out (`MarkDelivered` after the flush): a connection that dies
/// first leaves them in the queue, as the loop drops its after-flush
/// commands.
pub(super) fn push_page(
    conn: ConnId,
    (user_id, receipts): (i64, bool),
    page: Vec<StoredMessage>,
    fx: &mut Effects,
) {
    let direct: Vec<i64> = page
        .iter()
        .filter(|message| message.group_id.is_none())
        .map(|message| message.message_id)
        .collect();
    for message in page {
        push_stored(conn, message, fx);
    }
    if !direct.is_empty() && !receipts {
        let taken = Command::MarkDelivered {
            user_id,
            message_ids: direct,
        };
        fx.after_flush.push((conn, taken));
    }
}

/// The devices with a confirmation to write, in [`config::CONFIRM_PHASES`]
/// phases by connection slot. One phase is written per
/// [`config::CONFIRM_TICK`], so each device's confirmation reaches storage
/// at most once per [`config::TICK`], and the devices' writes are spread
/// over it: written all at once, a hundred devices' confirmations made one
/// storage batch of ~30 ms that every message behind it waited for.
#[derive(Debug, Default)]
pub(super) struct ConfirmSchedule(Phases<IdSet<ConnId>>);

impl ConfirmSchedule {
    /// `conn` has a confirmation to write.
    pub(super) fn insert(&mut self, conn: ConnId) {
        self.0.phase(conn.slot).insert(conn);
    }

    /// Takes `conn` out; whether it had a confirmation waiting.
    pub(super) fn remove(&mut self, conn: ConnId) -> bool {
        self.0.phase(conn.slot).remove(&conn)
    }

    /// The devices of the next phase, taken out.
    fn take_next_phase(&mut self) -> Vec<ConnId> {
        self.0.take_next().drain().collect()
    }
}

/// Delivered receipts (37) waiting to go out, coalesced per (sender,
/// recipient) pair, in [`config::CONFIRM_PHASES`] phases by sender: one
/// phase goes out per [`config::CONFIRM_TICK`], so each pair gets at most
/// one receipt per [`config::TICK`] and the writes are spread over it. Sent
/// all at once on the tick, 5,000 pairs' receipts made one loop turn of
/// 40–60 ms every 500 ms, and at 10,000 msg/s among 5,000 users the Acks
/// behind it put the e2e p99 at ~70 ms (BENCHMARKS, issue 14's reading).
/// Holds at most one entry per pair whose confirmation came since its
/// phase last went out: `(sender, recipient) → (recipient's name,
/// through)`.
#[derive(Debug, Default)]
pub(super) struct ReceiptSchedule(Phases<IdMap<(i64, i64), (String, i64)>>);

impl ReceiptSchedule {
    /// `recipient` (named `name`) confirmed `sender`'s messages up to
    /// `through`.
    pub(super) fn insert(&mut self, (sender, recipient): (i64, i64), name: &str, through: i64) {
        let phase = sender.rem_euclid(config::CONFIRM_PHASES as i64) as usize;
        let due = self
            .0
            .phase(phase)
            .entry((sender, recipient))
            .or_insert_with(|| (name.to_owned(), through));
        due.1 = due.1.max(through);
    }

    /// The receipts of the next phase, taken out.
    fn take_next_phase(&mut self) -> Vec<((i64, i64), (String, i64))> {
        self.0.take_next().drain().collect()
    }
}

/// Work kept in [`config::CONFIRM_PHASES`] phases, taken one phase per
/// [`config::CONFIRM_TICK`] in turn.
#[derive(Debug)]
struct Phases<C> {
    phases: Vec<C>,
    /// The phase taken next.
    next: usize,
}

impl<C: Default + Clone> Default for Phases<C> {
    fn default() -> Self {
        Phases {
            phases: vec![C::default(); config::CONFIRM_PHASES],
            next: 0,
        }
    }
}

impl<C> Phases<C> {
    /// The phase of `key` (any number; taken modulo the phases).
    fn phase(&mut self, key: usize) -> &mut C {
        &mut self.phases[key % config::CONFIRM_PHASES]
    }

    /// The next phase, to be emptied by the caller (it keeps its capacity).
    fn take_next(&mut self) -> &mut C {
        let due = self.next;
        self.next = (self.next + 1) % config::CONFIRM_PHASES;
        &mut self.phases[due]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_go_out_one_phase_per_confirm_tick_coalesced_by_pair() {
        let mut schedule = ReceiptSchedule::default();
        let senders = 3 * config::CONFIRM_PHASES as i64;
        for sender in 0..senders {
            schedule.insert((sender, 1_000), "bob", 10);
        }
        schedule.insert((3, 1_000), "bob", 12);
        schedule.insert((3, 1_000), "bob", 11);
        let mut sent = Vec::new();
        for _ in 0..config::CONFIRM_PHASES {
            let phase = schedule.take_next_phase();
            assert!(phase.len() <= 3, "a phase holds its share only: {phase:?}");
            sent.extend(
                phase
                    .into_iter()
                    .map(|((sender, _), (_, through))| (sender, through)),
            );
        }
        sent.sort_unstable();
        let expected: Vec<(i64, i64)> = (0..senders)
            .map(|sender| (sender, if sender == 3 { 12 } else { 10 }))
            .collect();
        assert_eq!(
            sent, expected,
            "each pair once, at its highest, in one tick cycle"
        );
        for _ in 0..config::CONFIRM_PHASES {
            assert!(schedule.take_next_phase().is_empty());
        }
    }

    fn conn(slot: usize) -> ConnId {
        ConnId { slot, serial: 1 }
    }

    #[test]
    fn confirmations_are_written_one_phase_per_confirm_tick_once_each() {
        let mut schedule = ConfirmSchedule::default();
        for slot in 0..3 * config::CONFIRM_PHASES {
            schedule.insert(conn(slot));
        }
        schedule.insert(conn(3));
        assert!(schedule.remove(conn(4)), "a departure takes its own out");
        let mut written = Vec::new();
        for _ in 0..config::CONFIRM_PHASES {
            let phase = schedule.take_next_phase();
            assert!(phase.len() <= 3, "a phase holds its share only: {phase:?}");
            written.extend(phase.into_iter().map(|conn| conn.slot));
        }
        written.sort_unstable();
        let expected: Vec<usize> = (0..3 * config::CONFIRM_PHASES)
            .filter(|slot| *slot != 4)
            .collect();
        assert_eq!(written, expected, "each device once, in one tick cycle");
        for _ in 0..config::CONFIRM_PHASES {
            assert!(schedule.take_next_phase().is_empty());
        }
    }
}
