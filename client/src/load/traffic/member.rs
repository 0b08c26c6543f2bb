//! One member of a traffic: its message (stamped afresh for every send),
//! the messages it has in flight, what was acked, and how a message's
//! content carries its send time and sequence number.

use std::collections::VecDeque;
use std::fmt::Write;

use protocol::ClientMessage;

use super::super::pool::ConnId;
use super::super::receipts::{Awaiting, Holding};

/// Messages sent and not yet answered, by sequence number (= request id).
/// Sequences are dense, so a lookup is an index into a ring, not a search; an
/// answered slot is emptied and the ring drops empty slots from its front.
#[derive(Default)]
pub(super) struct InFlight {
    /// The sequence number of `sent_at[0]`.
    pub(super) first_seq: u64,
    /// By sequence − `first_seq`: the send time (nanos), None once answered.
    pub(super) sent_at: VecDeque<Option<u64>>,
    /// Slots still holding a send time.
    pub(super) len: u64,
}

impl InFlight {
    /// Records message `seq`, which must be the next sequence number.
    pub(super) fn push(&mut self, seq: u64, now: u64) {
        assert_eq!(
            seq,
            self.first_seq + self.sent_at.len() as u64,
            "sequences are dense"
        );
        self.sent_at.push_back(Some(now));
        self.len += 1;
    }

    /// Removes message `seq` and returns its send time; None if it is not in
    /// flight (never sent, or already answered).
    pub(super) fn take(&mut self, seq: u64) -> Option<u64> {
        let offset = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let sent = self.sent_at.get_mut(offset)?.take()?;
        self.len -= 1;
        while let Some(None) = self.sent_at.front() {
            self.sent_at.pop_front();
            self.first_seq += 1;
        }
        Some(sent)
    }
}

/// One member connection: what it sends, what it has in flight, what was
/// acked. Members that only receive have one too (with nothing sent).
pub(super) struct Sender {
    pub(super) conn: ConnId,
    pub(super) open: bool,
    /// The member's Message, rewritten in place for every send (content and
    /// client id), so a send allocates nothing but the encoded frame.
    pub(super) message: ClientMessage,
    pub(super) next_seq: u64,
    pub(super) in_flight: InFlight,
    /// By sequence: the message was acked.
    pub(super) acked: Vec<bool>,
    pub(super) acked_count: u64,
    /// 1:1 messages to this username (None: group messages).
    pub(super) dest_id: Option<String>,
    /// What this connection received and confirmed (receipts on).
    pub(super) holding: Holding,
    /// Acked 1:1 messages no `Delivered` covered yet (receipts on).
    pub(super) awaiting: Awaiting,
}

impl Sender {
    /// Writes `t=<now> s=<seq><padding>` and client id `seq` into the message.
    pub(super) fn stamp(&mut self, seq: u64, now: u64, padding: &str) {
        let ClientMessage::Message(body) = &mut self.message else {
            unreachable!("a sender's message is always a Message (see Senders::add)");
        };
        body.content.clear();
        // Writing into a String cannot fail.
        let _ = write!(body.content, "t={now} s={seq}{padding}");
        let id = body.message_id.get_or_insert_with(String::new);
        id.clear();
        let _ = write!(id, "{seq}");
    }
}

/// Reads `t=<nanos> s=<seq>` from a message content.
pub fn parse_content(content: &str) -> Option<(u64, u64)> {
    let mut words = content.split_ascii_whitespace();
    let sent = words.next()?.strip_prefix("t=")?.parse().ok()?;
    let seq = words.next()?.strip_prefix("s=")?.parse().ok()?;
    Some((sent, seq))
}

/// Sets bit `index`, growing `bits` as needed.
pub(crate) fn set_bit(bits: &mut Vec<bool>, index: u64) {
    let index = index as usize;
    if bits.len() <= index {
        bits.resize(index + 1, false);
    }
    bits[index] = true;
}

/// Bit `index`; false past the end.
pub(crate) fn get_bit(bits: &[bool], index: u64) -> bool {
    bits.get(index as usize).copied().unwrap_or(false)
}
