//! 1:1 message traffic between pairs of logged-in users, and its accounting.
//!
//! User `2k` sends to `2k+1` and back. Each message's `content` carries its
//! send time and sequence number (`t=<nanos> s=<seq>`), and its sequence
//! number is also its client `message_id` and its request id (see
//! [`super::traffic`], which matches every Ack and refusal to its message by
//! request id), so:
//! - ack latency is Ack arrival minus send time;
//! - end-to-end latency is the recipient's arrival time minus `t`;
//! - a message is *lost* when its sender got an Ack but the recipient never
//!   got the message (each user has exactly one connection, one device);
//! - with receipts (protocol 1.1, see [`super::receipts`]) each recipient
//!   confirms what it holds once per read batch, and receipt latency is the
//!   `Delivered` covering a message minus `t`.
//!
//! The exchange only sends when told to ([`Traffic::fill_windows`],
//! [`Traffic::send_due`]) and only accounts for events it is handed; the
//! scenario owns the loop and the clock.

use std::collections::BTreeMap;

use protocol::server::Delivered;
use serde::Serialize;

use super::pool::ConnId;
use super::progress::Progress;
use super::stats::{per_sec, Latency, LatencySummary};
use super::traffic::{get_bit, parse_content, set_bit, Counts, Senders, Target, Traffic};

/// What one user of the exchange has received from its partner (its sending
/// side lives in [`Senders`], under the same index).
struct Peer {
    username: String,
    partner: usize,
    /// By the partner's sequence: the message arrived here.
    received: Vec<bool>,
    received_count: u64,
    last_received: Option<u64>,
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
    /// Send → the `Delivered` covering the message (receipts on).
    pub receipt: Latency,
    /// Acked messages no `Delivered` covered (receipts on).
    pub unreceipted: u64,
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
        self.receipt.merge(&other.receipt);
        self.unreceipted += other.unreceipted;
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
            received_sent: self.counts.received_sent,
            delivered_receipts: self.counts.receipts,
            receipted: self.counts.receipted,
            unreceipted: self.unreceipted,
            receipt_latency: self.receipt.summary(),
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
    /// `Received` confirmations sent (receipts on).
    pub received_sent: u64,
    /// `Delivered` receipts received.
    pub delivered_receipts: u64,
    /// Acked messages a `Delivered` covered.
    pub receipted: u64,
    /// Acked messages no `Delivered` covered (receipts on).
    pub unreceipted: u64,
    /// Send → the `Delivered` covering the message.
    pub receipt_latency: LatencySummary,
}

/// Pairs of users exchanging messages over one pool.
pub struct Exchange {
    senders: Senders,
    peers: Vec<Peer>,
    end_to_end: Vec<Latency>,
    /// Send times (nanos) where a new latency phase starts.
    phase_marks: Vec<u64>,
}

impl Exchange {
    /// An exchange between `users` (username, logged-in connection); their
    /// number must be even. Each message's content is padded to at least
    /// `content_bytes`. With `receipts`, the connections logged in with
    /// receipts: they confirm what they receive, and expect `Delivered`.
    pub fn new(users: Vec<(String, ConnId)>, content_bytes: usize, receipts: bool) -> Exchange {
        assert!(users.len().is_multiple_of(2), "users come in pairs");
        let mut senders = Senders::new(content_bytes, receipts);
        let usernames: Vec<String> = users.iter().map(|(name, _)| name.clone()).collect();
        let peers = users
            .into_iter()
            .enumerate()
            .map(|(index, (username, conn))| {
                let partner = index ^ 1;
                let target = Target::User(usernames[partner].clone());
                assert_eq!(senders.add(conn, target, true), index);
                Peer {
                    username,
                    partner,
                    received: Vec::new(),
                    received_count: 0,
                    last_received: None,
                }
            })
            .collect();
        Exchange {
            senders,
            peers,
            end_to_end: vec![Latency::default()],
            phase_marks: Vec::new(),
        }
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

    /// The final tally: compares every sender's acks with its partner's
    /// deliveries.
    pub fn finish(self) -> Tally {
        let mut tally = Tally {
            unanswered: self.senders.unanswered(),
            ..Tally::default()
        };
        for (index, peer) in self.peers.iter().enumerate() {
            let partner = &self.peers[peer.partner];
            for seq in 0..self.senders.sent_by(index) {
                let acked = self.senders.was_acked(index, seq);
                let delivered = get_bit(&partner.received, seq);
                if acked && !delivered {
                    tally.lost += 1;
                }
                if delivered && !acked {
                    tally.delivered_unacked += 1;
                }
            }
        }
        let senders = self.senders.finish();
        (tally.counts, tally.ack) = (senders.counts, senders.ack);
        (tally.receipt, tally.unreceipted) = (senders.receipt, senders.unreceipted);
        tally.end_to_end = self.end_to_end;
        tally
    }
}

impl Traffic for Exchange {
    fn senders(&self) -> &Senders {
        &self.senders
    }

    fn senders_mut(&mut self) -> &mut Senders {
        &mut self.senders
    }

    /// Acked messages whose recipient is still open and has not got them.
    fn undelivered(&self) -> u64 {
        let pairs = self.peers.iter().enumerate();
        pairs
            .filter(|(_, peer)| self.senders.is_open(peer.partner))
            .map(|(index, peer)| {
                let partner = &self.peers[peer.partner];
                self.senders
                    .acked_count(index)
                    .saturating_sub(partner.received_count)
            })
            .sum()
    }

    fn on_delivered(&mut self, index: usize, delivered: &Delivered, now: u64, progress: &Progress) {
        let in_window = self.senders.in_window(now);
        let counts = self.senders.counts_mut();
        let partner = self.peers[index].partner;
        if delivered.source_id != self.peers[partner].username {
            counts.error("message from a stranger", progress);
            return;
        }
        let Some((sent, seq)) = parse_content(&delivered.content) else {
            counts.error("unparsable content", progress);
            return;
        };
        let peer = &mut self.peers[index];
        if get_bit(&peer.received, seq) {
            counts.duplicates += 1;
            counts.error("duplicate delivery", progress);
            return;
        }
        set_bit(&mut peer.received, seq);
        peer.received_count += 1;
        if peer.last_received.is_some_and(|last| seq < last) {
            counts.reordered += 1;
            counts.error("out-of-order delivery", progress);
        }
        peer.last_received = Some(peer.last_received.map_or(seq, |last| last.max(seq)));
        let phase = self
            .phase_marks
            .iter()
            .filter(|&&mark| sent >= mark)
            .count();
        self.end_to_end[phase].record_nanos(now.saturating_sub(sent));
        counts.delivered += 1;
        if in_window {
            counts.delivered_in_window += 1;
        }
        Progress::add(&progress.delivered, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::pool::PoolEvent;
    use protocol::server::Ack;
    use protocol::ServerMessage;

    fn delivery(to: ConnId, from: &str, sent_at: u64, seq: u64) -> PoolEvent {
        PoolEvent::Frame(
            to,
            ServerMessage::Message(Delivered {
                message_id: seq as i64 + 100,
                source_id: from.to_string(),
                dest_id: None,
                group_id: None,
                content: format!("t={sent_at} s={seq}"),
                is_encrypted: false,
                time: 0,
            }),
            None,
        )
    }

    fn ack(conn: ConnId, seq: u64) -> PoolEvent {
        let ack = Ack {
            message_id: seq as i64 + 100,
            client_message_id: Some(seq.to_string()),
        };
        PoolEvent::Frame(conn, ServerMessage::Ack(ack), Some(seq))
    }

    /// An acked message its partner never got is lost; one delivered
    /// without an Ack is counted apart; one never answered is unanswered.
    #[test]
    fn acked_but_undelivered_messages_are_lost() {
        let progress = Progress::default();
        let mut exchange = Exchange::new(vec![("a".into(), 1), ("b".into(), 2)], 0, false);
        for at in [10, 20] {
            exchange.senders.record_sent(0, at);
        }
        exchange.senders.record_sent(1, 30);
        assert_eq!(exchange.outstanding(), 3);
        exchange.on_event(&ack(1, 0), 40, &progress);
        exchange.on_event(&ack(1, 1), 40, &progress);
        exchange.on_event(&delivery(2, "a", 20, 1), 50, &progress);
        exchange.on_event(&delivery(1, "b", 30, 0), 50, &progress);
        assert_eq!(
            exchange.outstanding(),
            2,
            "b's message unanswered, a's 0 undelivered"
        );
        let tally = exchange.finish();
        assert_eq!(tally.lost, 1);
        assert_eq!(tally.unanswered, 1);
        assert_eq!(tally.delivered_unacked, 1);
        assert_eq!(tally.counts.delivered, 2);
        assert_eq!(tally.end_to_end_all().count(), 2);
        assert!(tally.counts.errors.is_empty(), "{:?}", tally.counts.errors);
    }
}
