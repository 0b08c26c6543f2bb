//! 1:1 message traffic between pairs of logged-in users, and its accounting.
//!
//! User `2k` sends to `2k+1` and back. Each message's `content` carries its
//! send time and sequence number (`t=<nanos> s=<seq>`), and its client
//! `message_id` is the sequence number, so:
//! - ack latency is Ack arrival minus send time (acks on one connection come in
//!   sending order, so the oldest in-flight message is normally the one acked);
//! - end-to-end latency is the recipient's arrival time minus `t`;
//! - a message is *lost* when its sender got an Ack but the recipient never
//!   got the message.
//!
//! The exchange only sends when told to ([`Exchange::fill_windows`],
//! [`Exchange::send_due`]) and only accounts for events it is handed; the
//! scenario owns the loop and the clock.

use std::collections::{BTreeMap, HashMap, VecDeque};

use protocol::client::SendMessage;
use protocol::server::Delivered;
use protocol::{ClientMessage, ServerMessage};
use serde::Serialize;

use super::pool::{ConnId, Pool, PoolEvent};
use super::progress::Progress;
use super::stats::{per_sec, Latency, LatencySummary};

/// One user of the exchange: its connection, what it has in flight, and what
/// it has received from its partner.
struct Peer {
    conn: ConnId,
    open: bool,
    username: String,
    partner: usize,
    next_seq: u64,
    /// (sequence, send time) of messages sent and not yet acked.
    in_flight: VecDeque<(u64, u64)>,
    /// Error replies (ref_tag 11) not yet matched to a message in
    /// `in_flight`; see [`Exchange::on_ack`] for how they are matched.
    refusals: u64,
    /// By sequence: the message was acked.
    acked: Vec<bool>,
    acked_count: u64,
    /// By the partner's sequence: the message arrived here.
    received: Vec<bool>,
    received_count: u64,
    last_received: Option<u64>,
}

impl Peer {
    /// Messages sent and answered by neither an Ack nor a refusal.
    fn unanswered(&self) -> u64 {
        (self.in_flight.len() as u64).saturating_sub(self.refusals)
    }
}

/// Counts of what happened, summed over all peers (and shards).
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
    /// A message from a partner that arrived after a later one.
    pub reordered: u64,
    /// Error frames and other failures, by kind.
    pub errors: BTreeMap<String, u64>,
}

impl Counts {
    pub(crate) fn error(&mut self, kind: impl Into<String>, progress: &Progress) {
        *self.errors.entry(kind.into()).or_default() += 1;
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
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
    }
}

/// The final tally of an exchange, mergeable across shards.
#[derive(Clone, Default)]
pub struct Tally {
    /// Event counts.
    pub counts: Counts,
    /// Acked but never delivered.
    pub lost: u64,
    /// Sent and never answered (no Ack, no Error).
    pub unanswered: u64,
    /// Delivered although the sender never saw an Ack.
    pub delivered_unacked: u64,
    /// End-to-end latency, one histogram per phase (see [`Exchange::mark_phase`]).
    pub end_to_end: Vec<Latency>,
    /// Ack latency.
    pub ack: Latency,
}

impl Tally {
    /// Adds another shard's tally.
    pub fn merge(&mut self, other: &Tally) {
        self.counts.merge(&other.counts);
        self.lost += other.lost;
        self.unanswered += other.unanswered;
        self.delivered_unacked += other.delivered_unacked;
        while self.end_to_end.len() < other.end_to_end.len() {
            self.end_to_end.push(Latency::default());
        }
        for (mine, theirs) in self.end_to_end.iter_mut().zip(&other.end_to_end) {
            mine.merge(theirs);
        }
        self.ack.merge(&other.ack);
    }

    /// All errors.
    pub fn errors_total(&self) -> u64 {
        self.counts.errors.values().sum()
    }

    /// End-to-end latency over every phase.
    pub fn end_to_end_all(&self) -> Latency {
        let mut all = Latency::default();
        for phase in &self.end_to_end {
            all.merge(phase);
        }
        all
    }

    /// The serialisable summary for a window of `window_secs`.
    pub fn summary(&self, window_secs: f64) -> TallySummary {
        TallySummary {
            sent: self.counts.sent,
            acked: self.counts.acked,
            delivered: self.counts.delivered,
            acked_per_sec: per_sec(self.counts.acked_in_window, window_secs),
            delivered_per_sec: per_sec(self.counts.delivered_in_window, window_secs),
            lost: self.lost,
            unanswered: self.unanswered,
            delivered_unacked: self.delivered_unacked,
            duplicates: self.counts.duplicates,
            reordered: self.counts.reordered,
            errors: self.errors_total(),
            errors_by_kind: self.counts.errors.clone(),
            end_to_end_latency: self.end_to_end_all().summary(),
            ack_latency: self.ack.summary(),
        }
    }
}

/// [`Tally`] as it appears in the JSON result.
#[derive(Clone, Debug, Serialize)]
pub struct TallySummary {
    /// Messages sent.
    pub sent: u64,
    /// Acks received.
    pub acked: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Acks per second inside the measured window.
    pub acked_per_sec: f64,
    /// Deliveries per second inside the measured window.
    pub delivered_per_sec: f64,
    /// Acked but never delivered.
    pub lost: u64,
    /// Never answered by Ack or Error.
    pub unanswered: u64,
    /// Delivered without an Ack.
    pub delivered_unacked: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// Out-of-order deliveries.
    pub reordered: u64,
    /// Errors of every kind.
    pub errors: u64,
    /// Errors by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Send → recipient receives.
    pub end_to_end_latency: LatencySummary,
    /// Send → Ack.
    pub ack_latency: LatencySummary,
}

/// What the scenario loops (`messages::send_for_duration`, `messages::drain`)
/// need from a traffic generator: 1:1 pairs ([`Exchange`]) or groups
/// ([`super::fanout::GroupExchange`]).
pub trait Traffic {
    /// Arrivals inside [start, end) (nanos) count towards throughput.
    fn set_window(&mut self, start_nanos: u64, end_nanos: u64);
    /// Messages sent so far.
    fn sent(&self) -> u64;
    /// Unanswered messages plus acked messages not yet delivered everywhere.
    fn outstanding(&self) -> u64;
    /// Tops every open sender up to `window` unanswered messages.
    fn fill_windows(&mut self, pool: &mut Pool, window: usize, now: u64);
    /// Sends round-robin until `due_total` messages have been sent overall.
    fn send_due(&mut self, pool: &mut Pool, due_total: u64, now: u64);
    /// Accounts for one pool event; false if it is not about this traffic.
    fn on_event(&mut self, event: &PoolEvent, now: u64, progress: &Progress) -> bool;
}

impl Traffic for Exchange {
    fn set_window(&mut self, start_nanos: u64, end_nanos: u64) {
        Exchange::set_window(self, start_nanos, end_nanos)
    }
    fn sent(&self) -> u64 {
        Exchange::sent(self)
    }
    fn outstanding(&self) -> u64 {
        Exchange::outstanding(self)
    }
    fn fill_windows(&mut self, pool: &mut Pool, window: usize, now: u64) {
        Exchange::fill_windows(self, pool, window, now)
    }
    fn send_due(&mut self, pool: &mut Pool, due_total: u64, now: u64) {
        Exchange::send_due(self, pool, due_total, now)
    }
    fn on_event(&mut self, event: &PoolEvent, now: u64, progress: &Progress) -> bool {
        Exchange::on_event(self, event, now, progress)
    }
}

/// Pairs of users exchanging messages over one pool.
pub struct Exchange {
    peers: Vec<Peer>,
    by_conn: HashMap<ConnId, usize>,
    counts: Counts,
    end_to_end: Vec<Latency>,
    ack: Latency,
    /// Send times (nanos) where a new latency phase starts.
    phase_marks: Vec<u64>,
    /// Arrivals in [start, end) count towards throughput.
    window: (u64, u64),
    padding: String,
    next_sender: usize,
}

impl Exchange {
    /// An exchange between `users` (username, logged-in connection); their
    /// number must be even. Each message's content is padded to at least
    /// `content_bytes`.
    pub fn new(users: Vec<(String, ConnId)>, content_bytes: usize) -> Exchange {
        assert!(users.len().is_multiple_of(2), "users come in pairs");
        let peers: Vec<Peer> = users
            .into_iter()
            .enumerate()
            .map(|(index, (username, conn))| Peer {
                conn,
                open: true,
                username,
                partner: index ^ 1,
                next_seq: 0,
                in_flight: VecDeque::new(),
                refusals: 0,
                acked: Vec::new(),
                acked_count: 0,
                received: Vec::new(),
                received_count: 0,
                last_received: None,
            })
            .collect();
        let by_conn = peers.iter().enumerate().map(|(i, p)| (p.conn, i)).collect();
        Exchange {
            peers,
            by_conn,
            counts: Counts::default(),
            end_to_end: vec![Latency::default()],
            ack: Latency::default(),
            phase_marks: Vec::new(),
            window: (0, u64::MAX),
            // "t=<20 digits> s=<20 digits>" is at most 45 bytes.
            padding: " ".repeat(content_bytes.saturating_sub(45)),
            next_sender: 0,
        }
    }

    /// Arrivals inside [start, end) (nanos) count towards throughput.
    pub fn set_window(&mut self, start_nanos: u64, end_nanos: u64) {
        self.window = (start_nanos, end_nanos);
    }

    /// Messages sent from `at_nanos` on are recorded in a new end-to-end
    /// histogram (storm uses this for before / during / after the burst).
    pub fn mark_phase(&mut self, at_nanos: u64) {
        self.phase_marks.push(at_nanos);
        self.end_to_end.push(Latency::default());
    }

    /// Phase marks set so far.
    pub fn phase_count(&self) -> usize {
        self.phase_marks.len()
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.counts.sent
    }

    /// Whether `conn` belongs to the exchange.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    /// Messages still in flight plus acked messages not yet delivered: the
    /// grace period waits for this to reach zero.
    pub fn outstanding(&self) -> u64 {
        self.peers
            .iter()
            .map(|peer| {
                let partner = &self.peers[peer.partner];
                let undelivered = if partner.open {
                    peer.acked_count.saturating_sub(partner.received_count)
                } else {
                    0
                };
                let in_flight = if peer.open { peer.unanswered() } else { 0 };
                in_flight + undelivered
            })
            .sum()
    }

    /// Tops every open sender up to `window` unanswered messages.
    pub fn fill_windows(&mut self, pool: &mut Pool, window: usize, now: u64) {
        for index in 0..self.peers.len() {
            while self.peers[index].open && self.peers[index].unanswered() < window as u64 {
                if !self.send(pool, index, now) {
                    break;
                }
            }
        }
    }

    /// Sends round-robin until `due_total` messages have been sent overall.
    pub fn send_due(&mut self, pool: &mut Pool, due_total: u64, now: u64) {
        let mut skipped = 0;
        while self.counts.sent < due_total && skipped < self.peers.len() {
            let index = self.next_sender;
            self.next_sender = (self.next_sender + 1) % self.peers.len();
            if self.peers[index].open && self.send(pool, index, now) {
                skipped = 0;
            } else {
                skipped += 1;
            }
        }
    }

    fn send(&mut self, pool: &mut Pool, index: usize, now: u64) -> bool {
        let peer = &self.peers[index];
        let seq = peer.next_seq;
        let message = ClientMessage::Message(SendMessage {
            dest_id: Some(self.peers[peer.partner].username.clone()),
            group_id: None,
            content: format!("t={now} s={seq}{}", self.padding),
            message_id: Some(seq.to_string()),
            source_id: None,
            is_encrypted: false,
        });
        if !pool.send(peer.conn, &message) {
            return false;
        }
        let peer = &mut self.peers[index];
        peer.next_seq += 1;
        peer.in_flight.push_back((seq, now));
        self.counts.sent += 1;
        true
    }

    /// Accounts for one pool event; false if it is not about the exchange.
    pub fn on_event(&mut self, event: &PoolEvent, now: u64, progress: &Progress) -> bool {
        let conn = event.conn();
        let Some(&index) = self.by_conn.get(&conn) else {
            return false;
        };
        match event {
            PoolEvent::Opened(_) => {}
            PoolEvent::Frame(_, ServerMessage::Ack(ack)) => {
                self.on_ack(index, ack.client_message_id.as_deref(), now, progress)
            }
            PoolEvent::Frame(_, ServerMessage::Message(delivered)) => {
                self.on_delivered(index, delivered, now, progress)
            }
            PoolEvent::Frame(_, ServerMessage::Error(error)) => {
                if error.ref_tag == Some(11) {
                    self.peers[index].refusals += 1;
                }
                self.counts.error(error.error_type.as_str(), progress);
            }
            // Presence and the like are not part of the exchange.
            PoolEvent::Frame(_, _) => {}
            PoolEvent::Undecodable(_, _) => self.counts.error("undecodable frame", progress),
            PoolEvent::Closed(_, _) => {
                self.peers[index].open = false;
                self.by_conn.remove(&conn);
                Progress::sub(&progress.connections, 1);
                self.counts.error("disconnected", progress);
            }
        }
        true
    }

    /// An Ack names its message by client id. A refusal (Error with ref_tag
    /// 11) names none and may overtake the Acks of earlier messages, which
    /// wait for the commit; but Acks come in sending order, so every message
    /// still in flight before the acked one was refused, and is dropped here.
    fn on_ack(&mut self, index: usize, client_id: Option<&str>, now: u64, progress: &Progress) {
        let peer = &mut self.peers[index];
        let wanted = client_id.and_then(|id| id.parse::<u64>().ok());
        let position = match wanted {
            Some(seq) => peer.in_flight.iter().position(|&(s, _)| s == seq),
            None => None,
        };
        let Some(position) = position else {
            self.counts.error("ack for no message in flight", progress);
            return;
        };
        let refused = position as u64;
        if refused > peer.refusals {
            self.counts
                .error("message skipped: neither acked nor refused", progress);
        }
        peer.refusals = peer.refusals.saturating_sub(refused);
        peer.in_flight.drain(..position);
        let (seq, sent) = peer.in_flight.pop_front().expect("position is valid");
        set_bit(&mut peer.acked, seq);
        peer.acked_count += 1;
        self.ack.record_nanos(now.saturating_sub(sent));
        self.counts.acked += 1;
        if (self.window.0..self.window.1).contains(&now) {
            self.counts.acked_in_window += 1;
        }
        Progress::add(&progress.acked, 1);
    }

    fn on_delivered(&mut self, index: usize, delivered: &Delivered, now: u64, progress: &Progress) {
        let partner = self.peers[index].partner;
        if delivered.source_id != self.peers[partner].username {
            self.counts.error("message from a stranger", progress);
            return;
        }
        let Some((sent, seq)) = parse_content(&delivered.content) else {
            self.counts.error("unparsable content", progress);
            return;
        };
        let peer = &mut self.peers[index];
        if get_bit(&peer.received, seq) {
            self.counts.duplicates += 1;
            self.counts.error("duplicate delivery", progress);
            return;
        }
        set_bit(&mut peer.received, seq);
        peer.received_count += 1;
        if peer.last_received.is_some_and(|last| seq < last) {
            self.counts.reordered += 1;
            self.counts.error("out-of-order delivery", progress);
        }
        peer.last_received = Some(peer.last_received.map_or(seq, |last| last.max(seq)));
        let phase = self
            .phase_marks
            .iter()
            .filter(|&&mark| sent >= mark)
            .count();
        self.end_to_end[phase].record_nanos(now.saturating_sub(sent));
        self.counts.delivered += 1;
        if (self.window.0..self.window.1).contains(&now) {
            self.counts.delivered_in_window += 1;
        }
        Progress::add(&progress.delivered, 1);
    }

    /// The final tally: compares every sender's acks with its partner's
    /// deliveries.
    pub fn finish(self) -> Tally {
        let mut tally = Tally {
            counts: self.counts,
            end_to_end: self.end_to_end,
            ack: self.ack,
            ..Tally::default()
        };
        for peer in &self.peers {
            let partner = &self.peers[peer.partner];
            tally.unanswered += peer.unanswered();
            for seq in 0..peer.next_seq {
                let acked = get_bit(&peer.acked, seq);
                let delivered = get_bit(&partner.received, seq);
                if acked && !delivered {
                    tally.lost += 1;
                }
                if delivered && !acked {
                    tally.delivered_unacked += 1;
                }
            }
        }
        tally
    }
}

/// Reads `t=<nanos> s=<seq>` from a message content.
pub fn parse_content(content: &str) -> Option<(u64, u64)> {
    let mut words = content.split_ascii_whitespace();
    let sent = words.next()?.strip_prefix("t=")?.parse().ok()?;
    let seq = words.next()?.strip_prefix("s=")?.parse().ok()?;
    Some((sent, seq))
}

pub(crate) fn set_bit(bits: &mut Vec<bool>, index: u64) {
    let index = index as usize;
    if bits.len() <= index {
        bits.resize(index + 1, false);
    }
    bits[index] = true;
}

pub(crate) fn get_bit(bits: &[bool], index: u64) -> bool {
    bits.get(index as usize).copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_through_the_parser() {
        assert_eq!(parse_content("t=123 s=7"), Some((123, 7)));
        assert_eq!(parse_content("t=123 s=7      "), Some((123, 7)));
        assert_eq!(parse_content("hello"), None);
        assert_eq!(parse_content("t=x s=1"), None);
    }
}
