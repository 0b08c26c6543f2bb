//! Group message traffic, and its accounting: members of groups send messages
//! to their group, and every other member should receive each one.
//!
//! Contents, client ids and request ids are those of [`super::exchange`]
//! (`t=<nanos> s=<seq>`; client `message_id` and request id = the sender's
//! sequence number; answers matched by request id in [`super::traffic`]), so:
//! - ack latency is Ack arrival minus send time;
//! - end-to-end latency is sampled once per delivery: a recipient's arrival
//!   time minus `t`;
//! - fan-out latency is sampled once per message: send until the last of the
//!   other members has it;
//! - a *lost delivery* is an (acked message, other member) pair where the
//!   member never got the message; a *lost message* misses at least one.
//!   Every member is one connection (one device), so a message is lost as
//!   soon as any recipient connection misses it;
//! - with receipts (protocol 1.1, see [`super::receipts`]) every member
//!   confirms what it holds once per read batch. `Delivered` receipts cover
//!   1:1 messages only, so a group run expects none.
//!
//! The server delivers a group message to every member's live connections
//! except the sending one; each member here has exactly one connection, so
//! the sender must not see its own message (counted as an error if it does).
//!
//! Like [`super::exchange::Exchange`], the exchange only sends when told to
//! and only accounts for events it is handed.

use std::collections::HashMap;

use protocol::server::Delivered;
use serde::Serialize;

use super::pool::ConnId;
use super::progress::Progress;
use super::stats::{per_sec, Latency, LatencySummary};
use super::traffic::{get_bit, parse_content, set_bit, Counts, Senders, Target, Traffic};

/// A group the exchange runs over: its server id and its members (username,
/// logged-in connection). The first `senders` members send.
pub struct GroupSpec {
    /// The server's group id (from GroupInfo).
    pub group_id: i64,
    /// Every member, in a fixed order.
    pub members: Vec<(String, ConnId)>,
}

/// What one member of one group has received (its sending side lives in
/// [`Senders`], under the same index).
struct Member {
    group: usize,
    /// Index of this member in its group's `members`.
    position: usize,
    /// By sequence: how many other members received it.
    reached: Vec<u32>,
    /// By the sender's position in the group, then its sequence: received.
    received: Vec<Vec<bool>>,
    received_count: u64,
    /// By the sender's position: the highest sequence received so far.
    last_received: Vec<Option<u64>>,
}

/// One group: its members (indices into the exchange's members).
struct Group {
    members: Vec<usize>,
}

/// The final tally of a group exchange, mergeable across shards.
#[derive(Clone, Default)]
pub struct GroupTally {
    /// Event counts (`delivered` counts deliveries, one per recipient).
    pub counts: Counts,
    /// Deliveries the acked messages should have made: Σ (members − 1).
    pub expected_deliveries: u64,
    /// (Acked message, other member) pairs never delivered.
    pub lost_deliveries: u64,
    /// Acked messages that missed at least one member.
    pub lost_messages: u64,
    /// Sent and never answered (no Ack, no Error).
    pub unanswered: u64,
    /// Deliveries of messages whose sender never saw an Ack.
    pub delivered_unacked: u64,
    /// Send → one recipient has it (one sample per delivery).
    pub end_to_end: Latency,
    /// Send → the last other member has it (one sample per message).
    pub fanout: Latency,
    /// Send → Ack.
    pub ack: Latency,
    /// Send → the `Delivered` covering the message (expected empty: group
    /// messages get no `Delivered`).
    pub receipt: Latency,
}

impl GroupTally {
    /// Adds another shard's tally.
    pub fn merge(&mut self, other: &GroupTally) {
        self.counts.merge(&other.counts);
        self.expected_deliveries += other.expected_deliveries;
        self.lost_deliveries += other.lost_deliveries;
        self.lost_messages += other.lost_messages;
        self.unanswered += other.unanswered;
        self.delivered_unacked += other.delivered_unacked;
        self.end_to_end.merge(&other.end_to_end);
        self.fanout.merge(&other.fanout);
        self.ack.merge(&other.ack);
        self.receipt.merge(&other.receipt);
    }

    /// The serialisable summary for a window of `window_secs`.
    pub fn summary(&self, window_secs: f64) -> GroupTallySummary {
        let c = &self.counts;
        GroupTallySummary {
            sent: c.sent,
            acked: c.acked,
            delivered: c.delivered,
            expected_deliveries: self.expected_deliveries,
            acked_per_sec: per_sec(c.acked_in_window, window_secs),
            delivered_per_sec: per_sec(c.delivered_in_window, window_secs),
            lost: self.lost_deliveries,
            lost_messages: self.lost_messages,
            unanswered: self.unanswered,
            delivered_unacked: self.delivered_unacked,
            duplicates: c.duplicates,
            reordered: c.reordered,
            errors: c.errors.values().sum(),
            errors_by_kind: c.errors.clone(),
            end_to_end_latency: self.end_to_end.summary(),
            fanout_latency: self.fanout.summary(),
            ack_latency: self.ack.summary(),
            received_sent: c.received_sent,
            delivered_receipts: c.receipts,
            receipt_latency: self.receipt.summary(),
        }
    }
}

/// [`GroupTally`] as it appears in the JSON result.
#[derive(Clone, Debug, Serialize)]
pub struct GroupTallySummary {
    /// Messages sent.
    pub sent: u64,
    /// Acks received.
    pub acked: u64,
    /// Deliveries (one per message and recipient).
    pub delivered: u64,
    /// Deliveries the acked messages should have made.
    pub expected_deliveries: u64,
    /// Acks per second inside the measured window.
    pub acked_per_sec: f64,
    /// Deliveries per second inside the measured window.
    pub delivered_per_sec: f64,
    /// Lost deliveries: (acked message, other member) never delivered.
    pub lost: u64,
    /// Acked messages that missed at least one member.
    pub lost_messages: u64,
    /// Never answered by Ack or Error.
    pub unanswered: u64,
    /// Deliveries of messages never acked.
    pub delivered_unacked: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// Deliveries from one sender that arrived after a later one.
    pub reordered: u64,
    /// Errors of every kind.
    pub errors: u64,
    /// Errors by kind.
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// Send → each recipient receives (one sample per delivery).
    pub end_to_end_latency: LatencySummary,
    /// Send → the last other member receives (one sample per message).
    pub fanout_latency: LatencySummary,
    /// Send → Ack.
    pub ack_latency: LatencySummary,
    /// `Received` confirmations sent (receipts on).
    pub received_sent: u64,
    /// `Delivered` receipts received (expected 0: they cover 1:1 messages).
    pub delivered_receipts: u64,
    /// Send → the `Delivered` covering the message.
    pub receipt_latency: LatencySummary,
}

/// Groups of users sending group messages over one pool.
pub struct GroupExchange {
    senders: Senders,
    members: Vec<Member>,
    groups: Vec<Group>,
    by_group_id: HashMap<i64, usize>,
    by_username: HashMap<String, usize>,
    end_to_end: Latency,
    fanout: Latency,
}

impl GroupExchange {
    /// An exchange over `groups`; in each, the first `senders_per_group`
    /// members send. Contents are padded to at least `content_bytes`. With
    /// `receipts`, the connections logged in with receipts and confirm what
    /// they receive.
    pub fn new(
        groups: Vec<GroupSpec>,
        senders_per_group: usize,
        content_bytes: usize,
        receipts: bool,
    ) -> GroupExchange {
        let mut exchange = GroupExchange {
            senders: Senders::new(content_bytes, receipts),
            members: Vec::new(),
            groups: Vec::new(),
            by_group_id: HashMap::new(),
            by_username: HashMap::new(),
            end_to_end: Latency::default(),
            fanout: Latency::default(),
        };
        for (group, spec) in groups.into_iter().enumerate() {
            let size = spec.members.len();
            let mut indices = Vec::with_capacity(size);
            for (position, (username, conn)) in spec.members.into_iter().enumerate() {
                let target = Target::Group(spec.group_id);
                let index = exchange
                    .senders
                    .add(conn, target, position < senders_per_group);
                assert_eq!(index, exchange.members.len());
                indices.push(index);
                exchange.by_username.insert(username, index);
                exchange.members.push(Member {
                    group,
                    position,
                    reached: Vec::new(),
                    received: vec![Vec::new(); size.min(senders_per_group)],
                    received_count: 0,
                    last_received: vec![None; size.min(senders_per_group)],
                });
            }
            exchange.by_group_id.insert(spec.group_id, group);
            exchange.groups.push(Group { members: indices });
        }
        exchange
    }

    /// The final tally: compares every sender's acks with every other
    /// member's deliveries.
    pub fn finish(self) -> GroupTally {
        let mut tally = GroupTally {
            unanswered: self.senders.unanswered(),
            ..GroupTally::default()
        };
        for (index, member) in self.members.iter().enumerate() {
            let others = &self.groups[member.group].members;
            for seq in 0..self.senders.sent_by(index) {
                let acked = self.senders.was_acked(index, seq);
                let mut missing = 0;
                for &other in others.iter().filter(|&&other| other != index) {
                    let got = self.members[other]
                        .received
                        .get(member.position)
                        .is_some_and(|bits| get_bit(bits, seq));
                    match (acked, got) {
                        (true, false) => missing += 1,
                        (false, true) => tally.delivered_unacked += 1,
                        _ => {}
                    }
                }
                if acked {
                    tally.expected_deliveries += others.len() as u64 - 1;
                }
                tally.lost_deliveries += missing;
                tally.lost_messages += u64::from(missing > 0);
            }
        }
        let senders = self.senders.finish();
        (tally.counts, tally.ack, tally.receipt) = (senders.counts, senders.ack, senders.receipt);
        tally.end_to_end = self.end_to_end;
        tally.fanout = self.fanout;
        tally
    }
}

impl Traffic for GroupExchange {
    fn senders(&self) -> &Senders {
        &self.senders
    }

    fn senders_mut(&mut self) -> &mut Senders {
        &mut self.senders
    }

    /// For every open member, the acked messages of the others in its group
    /// it has not received.
    fn undelivered(&self) -> u64 {
        let mut total = 0;
        for group in &self.groups {
            let acked = |&index: &usize| self.senders.acked_count(index);
            let group_acked: u64 = group.members.iter().map(acked).sum();
            for &index in &group.members {
                if self.senders.is_open(index) {
                    let others_acked = group_acked - self.senders.acked_count(index);
                    total += others_acked.saturating_sub(self.members[index].received_count);
                }
            }
        }
        total
    }

    fn on_delivered(&mut self, index: usize, delivered: &Delivered, now: u64, progress: &Progress) {
        let in_window = self.senders.in_window(now);
        let counts = self.senders.counts_mut();
        let group = delivered
            .group_id
            .and_then(|id| self.by_group_id.get(&id).copied());
        let source = self.by_username.get(&delivered.source_id).copied();
        let (Some(group), Some(source)) = (group, source) else {
            counts.error("message from a stranger", progress);
            return;
        };
        if self.members[index].group != group || self.members[source].group != group {
            counts.error("message of another group", progress);
            return;
        }
        if source == index {
            counts.error("echo to the sending connection", progress);
            return;
        }
        let Some((sent, seq)) = parse_content(&delivered.content) else {
            counts.error("unparsable content", progress);
            return;
        };
        let from = self.members[source].position;
        let recipient = &mut self.members[index];
        let Some(received) = recipient.received.get_mut(from) else {
            counts.error("message from a member that does not send", progress);
            return;
        };
        if get_bit(received, seq) {
            counts.duplicates += 1;
            counts.error("duplicate delivery", progress);
            return;
        }
        set_bit(received, seq);
        recipient.received_count += 1;
        let last = &mut recipient.last_received[from];
        if last.is_some_and(|last| seq < last) {
            // Counted, not an error: the contract orders 1:1 messages only.
            counts.reordered += 1;
        }
        *last = Some(last.map_or(seq, |last| last.max(seq)));
        let latency = now.saturating_sub(sent);
        self.end_to_end.record_nanos(latency);
        let others = self.groups[group].members.len() as u32 - 1;
        let reached = &mut self.members[source].reached;
        if reached.len() <= seq as usize {
            reached.resize(seq as usize + 1, 0);
        }
        reached[seq as usize] += 1;
        if reached[seq as usize] == others {
            self.fanout.record_nanos(latency);
        }
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

    const GROUP_ID: i64 = 7;

    /// Three members on connections 10, 11, 12; the first two send.
    fn exchange() -> GroupExchange {
        let members = (0..3).map(|i| (format!("u{i}"), 10 + i)).collect();
        let spec = GroupSpec {
            group_id: GROUP_ID,
            members,
        };
        GroupExchange::new(vec![spec], 2, 0, false)
    }

    /// What `send` records, without a pool.
    fn sent(exchange: &mut GroupExchange, index: usize, at: u64) -> u64 {
        exchange.senders.record_sent(index, at)
    }

    fn ack(conn: ConnId, seq: u64) -> PoolEvent {
        PoolEvent::Frame(
            conn,
            ServerMessage::Ack(Ack {
                message_id: seq as i64 + 100,
                client_message_id: Some(seq.to_string()),
            }),
            Some(seq),
        )
    }

    fn delivery(to: ConnId, from: &str, sent_at: u64, seq: u64) -> PoolEvent {
        PoolEvent::Frame(
            to,
            ServerMessage::Message(Delivered {
                message_id: seq as i64 + 100,
                source_id: from.to_string(),
                dest_id: None,
                group_id: Some(GROUP_ID),
                content: format!("t={sent_at} s={seq}"),
                is_encrypted: false,
                time: 0,
            }),
            None,
        )
    }

    #[test]
    fn a_message_delivered_to_every_other_member_is_complete() {
        let progress = Progress::default();
        let mut exchange = exchange();
        let seq = sent(&mut exchange, 0, 1_000);
        assert_eq!(exchange.outstanding(), 1, "in flight");
        exchange.on_event(&ack(10, seq), 2_000, &progress);
        assert_eq!(exchange.outstanding(), 2, "two members still to reach");
        exchange.on_event(&delivery(11, "u0", 1_000, seq), 3_000, &progress);
        exchange.on_event(&delivery(12, "u0", 1_000, seq), 5_000, &progress);
        assert_eq!(exchange.outstanding(), 0);
        let tally = exchange.finish();
        assert_eq!(tally.counts.delivered, 2);
        assert_eq!(tally.expected_deliveries, 2);
        assert_eq!(tally.lost_deliveries, 0);
        assert_eq!(tally.end_to_end.count(), 2);
        assert_eq!(tally.fanout.count(), 1);
        let fanout_ms = tally.fanout.summary().max_ms;
        assert!(
            (fanout_ms - 0.004).abs() < 1e-5,
            "the last member, 4 µs: {fanout_ms}"
        );
        assert!(tally.counts.errors.is_empty(), "{:?}", tally.counts.errors);
    }

    #[test]
    fn a_member_that_misses_an_acked_message_is_a_lost_delivery() {
        let progress = Progress::default();
        let mut exchange = exchange();
        let first = sent(&mut exchange, 1, 1_000);
        let second = sent(&mut exchange, 1, 1_500);
        exchange.on_event(&ack(11, first), 2_000, &progress);
        exchange.on_event(&ack(11, second), 2_100, &progress);
        exchange.on_event(&delivery(10, "u1", 1_000, first), 3_000, &progress);
        exchange.on_event(&delivery(10, "u1", 1_500, second), 3_000, &progress);
        exchange.on_event(&delivery(12, "u1", 1_500, second), 3_000, &progress);
        assert_eq!(exchange.outstanding(), 1);
        let tally = exchange.finish();
        assert_eq!(tally.lost_deliveries, 1);
        assert_eq!(tally.lost_messages, 1);
        assert_eq!(tally.expected_deliveries, 4);
        assert_eq!(tally.fanout.count(), 1);
    }

    #[test]
    fn echoes_duplicates_and_strangers_are_errors() {
        let progress = Progress::default();
        let mut exchange = exchange();
        let seq = sent(&mut exchange, 0, 1_000);
        exchange.on_event(&delivery(10, "u0", 1_000, seq), 2_000, &progress);
        exchange.on_event(&delivery(11, "u0", 1_000, seq), 2_000, &progress);
        exchange.on_event(&delivery(11, "u0", 1_000, seq), 2_000, &progress);
        exchange.on_event(&delivery(11, "nobody", 1_000, seq), 2_000, &progress);
        exchange.on_event(&delivery(11, "u2", 1_000, seq), 2_000, &progress);
        let tally = exchange.finish();
        let errors = &tally.counts.errors;
        assert_eq!(errors.get("echo to the sending connection"), Some(&1));
        assert_eq!(errors.get("duplicate delivery"), Some(&1));
        assert_eq!(errors.get("message from a stranger"), Some(&1));
        assert_eq!(
            errors.get("message from a member that does not send"),
            Some(&1)
        );
        assert_eq!(tally.unanswered, 1);
        assert_eq!(tally.delivered_unacked, 1);
        assert_eq!(tally.lost_deliveries, 0, "never acked, so not lost");
    }
}
