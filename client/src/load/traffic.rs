//! The sending side every message traffic shares: sender windows, messages
//! in flight, and matching each answer (Ack or refusal) to its message.
//!
//! Every message carries its sender's sequence number three times: in its
//! content (`t=<nanos> s=<seq>`, read by the recipient), as its client
//! `message_id` (echoed in the Ack), and as its request id (protocol 1.1,
//! echoed on every answer, Ack or Error alike). Answers are matched by request
//! id alone, so a refusal (`rate_limited`, `server_busy`, …) is attributed to
//! exactly the message it refused, in whatever order answers arrive.
//!
//! [`Senders`] owns that bookkeeping, the event [`Counts`] and the ack
//! latency. What is sent to whom and what arrives where belongs to the
//! traffic that embeds it ([`super::exchange::Exchange`] for 1:1 pairs,
//! [`super::fanout::GroupExchange`] for groups); the [`Traffic`] trait gives
//! the scenario loops one interface over both.
//!
//! Request ids are per connection (a reply comes back on the connection that
//! sent the request) and the connections here send nothing else while
//! traffic runs but `Received` confirmations (which use an id no message
//! uses, see [`super::receipts`]): their logins and group creations were
//! answered during setup.
//!
//! With receipts on (protocol 1.1) [`Senders`] also confirms what each
//! connection received ([`Senders::send_confirmations`], once per read batch)
//! and matches `Delivered` pushes to acked 1:1 messages.

use std::collections::{BTreeMap, HashMap};

use protocol::client::{Received, SendMessage};
use protocol::server::{Ack, Delivered, Error};
use protocol::{ClientMessage, ServerMessage};
use serde::Serialize;

use super::pool::{ConnId, Pool, PoolEvent};
use super::progress::Progress;
use super::receipts::{Awaiting, Holding, RECEIVED_REQUEST_ID};
use super::stats::Latency;

mod confirm;
mod member;
pub use member::parse_content;
pub(crate) use member::{get_bit, set_bit};
use member::{InFlight, Sender};

/// Counts of what happened, summed over all members (and shards).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Messages sent.
    pub sent: u64,
    /// Acks received.
    pub acked: u64,
    /// Messages received by their recipient (first copies).
    pub delivered: u64,
    /// Acks that arrived inside the measured window.
    pub acked_in_window: u64,
    /// Deliveries that arrived inside the measured window.
    pub delivered_in_window: u64,
    /// A second copy of a message already received.
    pub duplicates: u64,
    /// A message from a sender that arrived after a later one.
    pub reordered: u64,
    /// `Received` confirmations sent (receipts on).
    pub received_sent: u64,
    /// `Delivered` receipts received.
    pub receipts: u64,
    /// Acked messages a `Delivered` covered (each counted once).
    pub receipted: u64,
    /// Error frames and other failures, by kind.
    pub errors: BTreeMap<String, u64>,
}

impl Counts {
    pub(crate) fn error(&mut self, kind: &str, progress: &Progress) {
        // Look up before inserting: a known kind costs no allocation.
        match self.errors.get_mut(kind) {
            Some(count) => *count += 1,
            None => {
                self.errors.insert(kind.to_string(), 1);
            }
        }
        Progress::add(&progress.errors, 1);
    }

    pub(crate) fn merge(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.delivered += other.delivered;
        self.acked_in_window += other.acked_in_window;
        self.delivered_in_window += other.delivered_in_window;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.received_sent += other.received_sent;
        self.receipts += other.receipts;
        self.receipted += other.receipted;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
    }
}

/// Where a member's messages go.
pub enum Target {
    /// 1:1 to this username.
    User(String),
    /// To this group id.
    Group(i64),
}

/// What [`Senders::on_event`] left to the traffic that embeds it.
pub enum Routed<'e> {
    /// The event is about a connection of no member.
    Foreign,
    /// Fully accounted for.
    Handled,
    /// A message arrived at member `.0`: the embedding traffic accounts for it.
    Delivered(usize, &'e Delivered),
}

/// What [`Senders::finish`] hands back.
pub struct SendersTally {
    /// Event counts.
    pub counts: Counts,
    /// Send → Ack.
    pub ack: Latency,
    /// Send → the `Delivered` that covered the message (receipts on).
    pub receipt: Latency,
    /// Acked 1:1 messages no `Delivered` covered (receipts on).
    pub unreceipted: u64,
}

/// The members of one traffic (indexed as the embedding traffic indexes
/// them), the round-robin order of those that send, and the counts.
pub struct Senders {
    members: Vec<Sender>,
    by_conn: HashMap<ConnId, usize>,
    /// Indices of the members that send, in round-robin order.
    order: Vec<usize>,
    next_in_order: usize,
    counts: Counts,
    ack: Latency,
    /// Arrivals in [start, end) (nanos) count towards throughput.
    window: (u64, u64),
    padding: String,
    /// The connections logged in with receipts: they confirm what they
    /// receive and expect `Delivered` for their 1:1 messages.
    receipts: bool,
    /// Members that received messages in the current batch (receipts on).
    to_confirm: Vec<usize>,
    /// The `Received` frame, rewritten in place for every confirmation.
    received: ClientMessage,
    /// Send → Delivered.
    receipt: Latency,
}

impl Senders {
    /// No members yet; contents will be padded to at least `content_bytes`.
    /// With `receipts`, the members' connections logged in with receipts.
    pub fn new(content_bytes: usize, receipts: bool) -> Senders {
        Senders {
            members: Vec::new(),
            by_conn: HashMap::new(),
            order: Vec::new(),
            next_in_order: 0,
            counts: Counts::default(),
            ack: Latency::default(),
            window: (0, u64::MAX),
            // "t=<20 digits> s=<20 digits>" is at most 45 bytes.
            padding: " ".repeat(content_bytes.saturating_sub(45)),
            receipts,
            to_confirm: Vec::new(),
            received: ClientMessage::Received(Received { through: 0 }),
            receipt: Latency::default(),
        }
    }

    /// Adds a member on `conn` whose messages go to `target`; with `sends`
    /// false it only receives. Returns its index (members are numbered in the
    /// order they are added).
    pub fn add(&mut self, conn: ConnId, target: Target, sends: bool) -> usize {
        let (dest_id, group_id) = match target {
            Target::User(username) => (Some(username), None),
            Target::Group(group_id) => (None, Some(group_id)),
        };
        let index = self.members.len();
        self.members.push(Sender {
            conn,
            open: true,
            message: ClientMessage::Message(SendMessage {
                dest_id: dest_id.clone(),
                group_id,
                content: String::new(),
                message_id: None,
                source_id: None,
                is_encrypted: false,
            }),
            next_seq: 0,
            in_flight: InFlight::default(),
            acked: Vec::new(),
            acked_count: 0,
            dest_id,
            holding: Holding::default(),
            awaiting: Awaiting::default(),
        });
        self.by_conn.insert(conn, index);
        if sends {
            self.order.push(index);
        }
        index
    }

    /// Arrivals inside [start, end) (nanos) count towards throughput.
    pub fn set_window(&mut self, start_nanos: u64, end_nanos: u64) {
        self.window = (start_nanos, end_nanos);
    }

    /// Whether `now` is inside the measured window.
    pub fn in_window(&self, now: u64) -> bool {
        (self.window.0..self.window.1).contains(&now)
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.counts.sent
    }

    /// The counts, for the embedding traffic's own events.
    pub fn counts_mut(&mut self) -> &mut Counts {
        &mut self.counts
    }

    /// Whether member `index`'s connection is still open.
    pub fn is_open(&self, index: usize) -> bool {
        self.members[index].open
    }

    /// Messages member `index` has sent.
    pub fn sent_by(&self, index: usize) -> u64 {
        self.members[index].next_seq
    }

    /// Whether member `index`'s message `seq` was acked.
    pub fn was_acked(&self, index: usize, seq: u64) -> bool {
        get_bit(&self.members[index].acked, seq)
    }

    /// Messages of member `index` that were acked.
    pub fn acked_count(&self, index: usize) -> u64 {
        self.members[index].acked_count
    }

    /// Messages answered by neither Ack nor Error, over open members only
    /// (a closed one will never be answered: the grace period does not wait).
    pub fn unanswered_open(&self) -> u64 {
        let open = self.members.iter().filter(|member| member.open);
        open.map(|member| member.in_flight.len).sum()
    }

    /// Messages answered by neither Ack nor Error, over every member.
    pub fn unanswered(&self) -> u64 {
        self.members.iter().map(|member| member.in_flight.len).sum()
    }

    /// Acked 1:1 messages of open members that no `Delivered` covered yet
    /// (0 without receipts).
    pub fn unreceipted_open(&self) -> u64 {
        let open = self.members.iter().filter(|member| member.open);
        open.map(|member| member.awaiting.len()).sum()
    }

    /// The counts and latencies, once the traffic is over.
    pub fn finish(self) -> SendersTally {
        SendersTally {
            unreceipted: self.members.iter().map(|m| m.awaiting.len()).sum(),
            counts: self.counts,
            ack: self.ack,
            receipt: self.receipt,
        }
    }

    /// Tops every open sender up to `window` unanswered messages.
    pub fn fill_windows(&mut self, pool: &mut Pool, window: usize, now: u64) {
        for i in 0..self.order.len() {
            let index = self.order[i];
            while self.members[index].open && self.members[index].in_flight.len < window as u64 {
                if !self.send(pool, index, now) {
                    break;
                }
            }
        }
    }

    /// Sends round-robin until `due_total` messages have been sent overall.
    pub fn send_due(&mut self, pool: &mut Pool, due_total: u64, now: u64) {
        let mut skipped = 0;
        while self.counts.sent < due_total && skipped < self.order.len() {
            let index = self.order[self.next_in_order];
            self.next_in_order = (self.next_in_order + 1) % self.order.len();
            if self.members[index].open && self.send(pool, index, now) {
                skipped = 0;
            } else {
                skipped += 1;
            }
        }
    }

    /// Sends member `index`'s next message, its sequence number as request id.
    fn send(&mut self, pool: &mut Pool, index: usize, now: u64) -> bool {
        let member = &mut self.members[index];
        let seq = member.next_seq;
        member.stamp(seq, now, &self.padding);
        if !pool.send(member.conn, &member.message, seq) {
            return false;
        }
        self.record_sent(index, now);
        true
    }

    /// Books member `index`'s next message as sent at `now`; returns its
    /// sequence number.
    pub(crate) fn record_sent(&mut self, index: usize, now: u64) -> u64 {
        let member = &mut self.members[index];
        let seq = member.next_seq;
        member.next_seq += 1;
        member.in_flight.push(seq, now);
        self.counts.sent += 1;
        seq
    }

    /// Accounts for one pool event: answers, undecodable frames and closes
    /// here; deliveries are handed back.
    pub fn on_event<'e>(
        &mut self,
        event: &'e PoolEvent,
        now: u64,
        progress: &Progress,
    ) -> Routed<'e> {
        let conn = event.conn();
        let Some(&index) = self.by_conn.get(&conn) else {
            return Routed::Foreign;
        };
        match event {
            PoolEvent::Opened(_) => {}
            PoolEvent::Frame(_, ServerMessage::Message(delivered), _) => {
                if self.receipts {
                    self.hold(index, delivered.message_id, progress);
                }
                return Routed::Delivered(index, delivered);
            }
            PoolEvent::Frame(_, ServerMessage::Delivered(receipt), _) => {
                self.on_receipt(index, receipt, now, progress)
            }
            PoolEvent::Frame(_, ServerMessage::Ack(ack), request_id) => {
                self.on_ack(index, *request_id, ack, now, progress)
            }
            PoolEvent::Frame(_, ServerMessage::Error(error), request_id) => {
                self.on_error(index, *request_id, error, progress)
            }
            // GroupInfo pushes, Presence and the like are not traffic.
            PoolEvent::Frame(_, _, _) => {}
            PoolEvent::Undecodable(_, _) => self.counts.error("undecodable frame", progress),
            PoolEvent::Closed(_, _) => {
                self.members[index].open = false;
                self.by_conn.remove(&conn);
                Progress::sub(&progress.connections, 1);
                self.counts.error("disconnected", progress);
            }
        }
        Routed::Handled
    }

    /// An Ack answers the message its request id names.
    fn on_ack(
        &mut self,
        index: usize,
        request_id: Option<u64>,
        ack: &Ack,
        now: u64,
        progress: &Progress,
    ) {
        let member = &mut self.members[index];
        let answered = request_id.and_then(|seq| Some((seq, member.in_flight.take(seq)?)));
        let Some((seq, sent)) = answered else {
            self.counts.error("ack for no message in flight", progress);
            return;
        };
        // The request id decides; the client id is only checked against it.
        let client_id = ack.client_message_id.as_deref();
        if client_id.and_then(|id| id.parse::<u64>().ok()) != Some(seq) {
            self.counts.error("ack names another message", progress);
        }
        set_bit(&mut member.acked, seq);
        member.acked_count += 1;
        if self.receipts && member.dest_id.is_some() {
            let latency = &mut self.receipt;
            if member.awaiting.acked(ack.message_id, sent, now, latency) {
                self.counts.receipted += 1;
            }
        }
        self.ack.record_nanos(now.saturating_sub(sent));
        self.counts.acked += 1;
        if self.in_window(now) {
            self.counts.acked_in_window += 1;
        }
        Progress::add(&progress.acked, 1);
    }

    /// An Error is counted by kind; when its request id names a message in
    /// flight, that message was refused and is answered. One without a
    /// request id answers nothing (every request carries one, so the server
    /// sends such an Error only for a frame it could not read).
    fn on_error(
        &mut self,
        index: usize,
        request_id: Option<u64>,
        error: &Error,
        progress: &Progress,
    ) {
        if request_id == Some(RECEIVED_REQUEST_ID) {
            // Refusals of confirmations are rare enough to name each.
            let kind = format!("Received refused: {}", error.error_type.as_str());
            self.counts.error(&kind, progress);
            return;
        }
        if let Some(seq) = request_id {
            self.members[index].in_flight.take(seq);
        }
        self.counts.error(error.error_type.as_str(), progress);
    }
}

/// What the scenario loops (`messages::send_for_duration`, `messages::drain`,
/// storm) need from a traffic: 1:1 pairs ([`super::exchange::Exchange`]) or
/// groups ([`super::fanout::GroupExchange`]). A traffic embeds [`Senders`]
/// and adds its recipients; the sending side comes with the trait.
pub trait Traffic {
    /// The shared sending side.
    fn senders(&self) -> &Senders;
    /// The shared sending side, mutably.
    fn senders_mut(&mut self) -> &mut Senders;
    /// Acked messages not yet delivered to a recipient that is still open.
    fn undelivered(&self) -> u64;
    /// A message arrived at member `index`.
    fn on_delivered(&mut self, index: usize, delivered: &Delivered, now: u64, progress: &Progress);

    /// Arrivals inside [start, end) (nanos) count towards throughput.
    fn set_window(&mut self, start_nanos: u64, end_nanos: u64) {
        self.senders_mut().set_window(start_nanos, end_nanos)
    }
    /// Messages sent so far.
    fn sent(&self) -> u64 {
        self.senders().sent()
    }
    /// Unanswered messages, acked messages not yet delivered everywhere,
    /// and (receipts on) acked 1:1 messages no `Delivered` covered yet: the
    /// grace period waits for this to reach zero.
    fn outstanding(&self) -> u64 {
        let senders = self.senders();
        senders.unanswered_open() + self.undelivered() + senders.unreceipted_open()
    }
    /// After every read batch: the confirmations it calls for (receipts on).
    fn after_batch(&mut self, pool: &mut Pool) {
        self.senders_mut().send_confirmations(pool)
    }
    /// Tops every open sender up to `window` unanswered messages.
    fn fill_windows(&mut self, pool: &mut Pool, window: usize, now: u64) {
        self.senders_mut().fill_windows(pool, window, now)
    }
    /// Sends round-robin until `due_total` messages have been sent overall.
    fn send_due(&mut self, pool: &mut Pool, due_total: u64, now: u64) {
        self.senders_mut().send_due(pool, due_total, now)
    }
    /// Accounts for one pool event; false if it is not about this traffic.
    fn on_event(&mut self, event: &PoolEvent, now: u64, progress: &Progress) -> bool {
        match self.senders_mut().on_event(event, now, progress) {
            Routed::Foreign => false,
            Routed::Handled => true,
            Routed::Delivered(index, delivered) => {
                self.on_delivered(index, delivered, now, progress);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests;
