//! Group message traffic, and its accounting: members of groups send messages
//! to their group, and every other member should receive each one.
//!
//! Contents and client ids are those of [`super::exchange`] (`t=<nanos>
//! s=<seq>`, client `message_id` = the sender's sequence number), so:
//! - ack latency is Ack arrival minus send time;
//! - end-to-end latency is sampled once per delivery: a recipient's arrival
//!   time minus `t`;
//! - fan-out latency is sampled once per message: send until the last of the
//!   other members has it;
//! - a *lost delivery* is an (acked message, other member) pair where the
//!   member never got the message; a *lost message* misses at least one.
//!
//! The server delivers a group message to every member's live connections
//! except the sending one; each member here has exactly one connection, so
//! the sender must not see its own message (counted as an error if it does).
//!
//! Like [`super::exchange::Exchange`], the exchange only sends when told to
//! and only accounts for events it is handed.

use std::collections::{HashMap, VecDeque};

use protocol::client::SendMessage;
use protocol::server::Delivered;
use protocol::{ClientMessage, ServerMessage};
use serde::Serialize;

use super::exchange::{get_bit, parse_content, set_bit, Counts, Traffic};
use super::pool::{ConnId, Pool, PoolEvent};
use super::progress::Progress;
use super::stats::{per_sec, Latency, LatencySummary};

/// A group the exchange runs over: its server id and its members (username,
/// logged-in connection). The first `senders` members send.
pub struct GroupSpec {
    /// The server's group id (from GroupInfo).
    pub group_id: i64,
    /// Every member, in a fixed order.
    pub members: Vec<(String, ConnId)>,
}

/// One member of one group.
struct Member {
    conn: ConnId,
    open: bool,
    group: usize,
    /// Index of this member in its group's `members`.
    position: usize,
    next_seq: u64,
    /// (sequence, send time) of messages sent and not yet acked.
    in_flight: VecDeque<(u64, u64)>,
    /// Error replies (ref_tag 11) not yet matched to a message in flight.
    refusals: u64,
    /// By sequence: the message was acked.
    acked: Vec<bool>,
    acked_count: u64,
    /// By sequence: how many other members received it.
    reached: Vec<u32>,
    /// By the sender's position in the group, then its sequence: received.
    received: Vec<Vec<bool>>,
    received_count: u64,
    /// By the sender's position: the highest sequence received so far.
    last_received: Vec<Option<u64>>,
}

impl Member {
    fn unanswered(&self) -> u64 {
        (self.in_flight.len() as u64).saturating_sub(self.refusals)
    }
}

/// One group: its members (indices into the exchange's members) and how many
/// of its messages were acked.
struct Group {
    members: Vec<usize>,
    acked: u64,
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
}

/// Groups of users sending group messages over one pool.
pub struct GroupExchange {
    members: Vec<Member>,
    groups: Vec<Group>,
    group_ids: Vec<i64>,
    by_conn: HashMap<ConnId, usize>,
    by_group_id: HashMap<i64, usize>,
    by_username: HashMap<String, usize>,
    /// Members that send, in round-robin order.
    senders: Vec<usize>,
    next_sender: usize,
    counts: Counts,
    end_to_end: Latency,
    fanout: Latency,
    ack: Latency,
    window: (u64, u64),
    padding: String,
}

impl GroupExchange {
    /// An exchange over `groups`; in each, the first `senders_per_group`
    /// members send. Contents are padded to at least `content_bytes`.
    pub fn new(
        groups: Vec<GroupSpec>,
        senders_per_group: usize,
        content_bytes: usize,
    ) -> GroupExchange {
        let mut exchange = GroupExchange {
            members: Vec::new(),
            groups: Vec::new(),
            group_ids: Vec::new(),
            by_conn: HashMap::new(),
            by_group_id: HashMap::new(),
            by_username: HashMap::new(),
            senders: Vec::new(),
            next_sender: 0,
            counts: Counts::default(),
            end_to_end: Latency::default(),
            fanout: Latency::default(),
            ack: Latency::default(),
            window: (0, u64::MAX),
            // "t=<20 digits> s=<20 digits>" is at most 45 bytes.
            padding: " ".repeat(content_bytes.saturating_sub(45)),
        };
        for (group, spec) in groups.into_iter().enumerate() {
            let size = spec.members.len();
            let mut indices = Vec::with_capacity(size);
            for (position, (username, conn)) in spec.members.into_iter().enumerate() {
                let index = exchange.members.len();
                indices.push(index);
                exchange.by_conn.insert(conn, index);
                exchange.by_username.insert(username, index);
                if position < senders_per_group {
                    exchange.senders.push(index);
                }
                exchange.members.push(Member {
                    conn,
                    open: true,
                    group,
                    position,
                    next_seq: 0,
                    in_flight: VecDeque::new(),
                    refusals: 0,
                    acked: Vec::new(),
                    acked_count: 0,
                    reached: Vec::new(),
                    received: vec![Vec::new(); size.min(senders_per_group)],
                    received_count: 0,
                    last_received: vec![None; size.min(senders_per_group)],
                });
            }
            exchange.by_group_id.insert(spec.group_id, group);
            exchange.group_ids.push(spec.group_id);
            exchange.groups.push(Group {
                members: indices,
                acked: 0,
            });
        }
        exchange
    }

    fn send(&mut self, pool: &mut Pool, index: usize, now: u64) -> bool {
        let member = &self.members[index];
        let seq = member.next_seq;
        let message = ClientMessage::Message(SendMessage {
            dest_id: None,
            group_id: Some(self.group_ids[member.group]),
            content: format!("t={now} s={seq}{}", self.padding),
            message_id: Some(seq.to_string()),
            source_id: None,
            is_encrypted: false,
        });
        if !pool.send(member.conn, &message) {
            return false;
        }
        let member = &mut self.members[index];
        member.next_seq += 1;
        member.in_flight.push_back((seq, now));
        self.counts.sent += 1;
        true
    }

    /// Matches an Ack to its message; see `Exchange::on_ack` for why every
    /// message in flight before the acked one was refused.
    fn on_ack(&mut self, index: usize, client_id: Option<&str>, now: u64, progress: &Progress) {
        let member = &mut self.members[index];
        let wanted = client_id.and_then(|id| id.parse::<u64>().ok());
        let position = wanted.and_then(|seq| member.in_flight.iter().position(|&(s, _)| s == seq));
        let Some(position) = position else {
            self.counts.error("ack for no message in flight", progress);
            return;
        };
        let refused = position as u64;
        if refused > member.refusals {
            self.counts
                .error("message skipped: neither acked nor refused", progress);
        }
        member.refusals = member.refusals.saturating_sub(refused);
        member.in_flight.drain(..position);
        let (seq, sent) = member.in_flight.pop_front().expect("position is valid");
        set_bit(&mut member.acked, seq);
        member.acked_count += 1;
        self.groups[member.group].acked += 1;
        self.ack.record_nanos(now.saturating_sub(sent));
        self.counts.acked += 1;
        if (self.window.0..self.window.1).contains(&now) {
            self.counts.acked_in_window += 1;
        }
        Progress::add(&progress.acked, 1);
    }

    fn on_delivered(&mut self, index: usize, delivered: &Delivered, now: u64, progress: &Progress) {
        let group = delivered
            .group_id
            .and_then(|id| self.by_group_id.get(&id).copied());
        let source = self.by_username.get(&delivered.source_id).copied();
        let (Some(group), Some(source)) = (group, source) else {
            self.counts.error("message from a stranger", progress);
            return;
        };
        if self.members[index].group != group || self.members[source].group != group {
            self.counts.error("message of another group", progress);
            return;
        }
        if source == index {
            self.counts
                .error("echo to the sending connection", progress);
            return;
        }
        let Some((sent, seq)) = parse_content(&delivered.content) else {
            self.counts.error("unparsable content", progress);
            return;
        };
        let from = self.members[source].position;
        let recipient = &mut self.members[index];
        let Some(received) = recipient.received.get_mut(from) else {
            self.counts
                .error("message from a member that does not send", progress);
            return;
        };
        if get_bit(received, seq) {
            self.counts.duplicates += 1;
            self.counts.error("duplicate delivery", progress);
            return;
        }
        set_bit(received, seq);
        recipient.received_count += 1;
        let last = &mut recipient.last_received[from];
        if last.is_some_and(|last| seq < last) {
            // Counted, not an error: the contract orders 1:1 messages only.
            self.counts.reordered += 1;
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
        self.counts.delivered += 1;
        if (self.window.0..self.window.1).contains(&now) {
            self.counts.delivered_in_window += 1;
        }
        Progress::add(&progress.delivered, 1);
    }

    /// The final tally: compares every sender's acks with every other
    /// member's deliveries.
    pub fn finish(self) -> GroupTally {
        let mut tally = GroupTally {
            counts: self.counts,
            end_to_end: self.end_to_end,
            fanout: self.fanout,
            ack: self.ack,
            ..GroupTally::default()
        };
        for (index, member) in self.members.iter().enumerate() {
            tally.unanswered += member.unanswered();
            let others = &self.groups[member.group].members;
            for seq in 0..member.next_seq {
                let acked = get_bit(&member.acked, seq);
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
        tally
    }
}

impl Traffic for GroupExchange {
    fn set_window(&mut self, start_nanos: u64, end_nanos: u64) {
        self.window = (start_nanos, end_nanos);
    }

    fn sent(&self) -> u64 {
        self.counts.sent
    }

    /// Unanswered messages of open senders, plus for every open member the
    /// acked messages of the others in its group it has not received.
    fn outstanding(&self) -> u64 {
        self.members
            .iter()
            .filter(|member| member.open)
            .map(|member| {
                let others_acked = self.groups[member.group].acked - member.acked_count;
                member.unanswered() + others_acked.saturating_sub(member.received_count)
            })
            .sum()
    }

    fn fill_windows(&mut self, pool: &mut Pool, window: usize, now: u64) {
        for i in 0..self.senders.len() {
            let index = self.senders[i];
            while self.members[index].open && self.members[index].unanswered() < window as u64 {
                if !self.send(pool, index, now) {
                    break;
                }
            }
        }
    }

    fn send_due(&mut self, pool: &mut Pool, due_total: u64, now: u64) {
        let mut skipped = 0;
        while self.counts.sent < due_total && skipped < self.senders.len() {
            let index = self.senders[self.next_sender];
            self.next_sender = (self.next_sender + 1) % self.senders.len();
            if self.members[index].open && self.send(pool, index, now) {
                skipped = 0;
            } else {
                skipped += 1;
            }
        }
    }

    fn on_event(&mut self, event: &PoolEvent, now: u64, progress: &Progress) -> bool {
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
                    self.members[index].refusals += 1;
                }
                self.counts.error(error.error_type.as_str(), progress);
            }
            // GroupInfo echoes, Presence and the like are not traffic.
            PoolEvent::Frame(_, _) => {}
            PoolEvent::Undecodable(_, _) => self.counts.error("undecodable frame", progress),
            PoolEvent::Closed(_, _) => {
                self.members[index].open = false;
                self.by_conn.remove(&conn);
                Progress::sub(&progress.connections, 1);
                self.counts.error("disconnected", progress);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::server::Ack;

    const GROUP_ID: i64 = 7;

    /// Three members on connections 10, 11, 12; the first two send.
    fn exchange() -> GroupExchange {
        let members = (0..3).map(|i| (format!("u{i}"), 10 + i)).collect();
        let spec = GroupSpec {
            group_id: GROUP_ID,
            members,
        };
        GroupExchange::new(vec![spec], 2, 0)
    }

    /// What `send` records, without a pool.
    fn sent(exchange: &mut GroupExchange, index: usize, at: u64) -> u64 {
        let member = &mut exchange.members[index];
        let seq = member.next_seq;
        member.next_seq += 1;
        member.in_flight.push_back((seq, at));
        exchange.counts.sent += 1;
        seq
    }

    fn ack(conn: ConnId, seq: u64) -> PoolEvent {
        PoolEvent::Frame(
            conn,
            ServerMessage::Ack(Ack {
                message_id: seq as i64 + 100,
                client_message_id: Some(seq.to_string()),
            }),
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
