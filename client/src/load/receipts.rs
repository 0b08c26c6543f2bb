//! Receipts (protocol 1.1) on the load generator's side: what one connection
//! confirms it holds, and which of its own messages a `Delivered` covers.
//!
//! With receipts on, every traffic connection logs in with `receipts: true`
//! and plays both roles:
//! - as a recipient it confirms cumulatively with `Received{through}`
//!   ([`Holding`]): after each read batch (one [`super::pool::Pool::poll`]),
//!   each connection that received messages in it sends at most one
//!   `Received`, through the highest message id it has received so far. The
//!   server pushes a receipts session its messages in increasing id order, so
//!   holding id N means holding everything addressed to it up to N; an id
//!   below an earlier one breaks that promise and is counted as an error.
//! - as a 1:1 sender it matches `Delivered{username, through}` pushes to its
//!   acked messages ([`Awaiting`]): every acked message to `username` with a
//!   server id ≤ `through` is covered, and its send → Delivered latency is
//!   recorded once.
//!
//! Both sides are a few integers and one ring per connection, reused for the
//! whole run: the hot path allocates nothing per message for receipts.
//!
//! `Received` has no reply; it carries the request id [`RECEIVED_REQUEST_ID`],
//! which no message uses (messages use their sender's sequence number), so an
//! Error refusing a confirmation is told apart from a refused message.

use std::collections::VecDeque;

use super::stats::Latency;

/// The request id of every `Received` chat-load sends: above any sequence
/// number a run reaches, and exact in a JSON double.
pub const RECEIVED_REQUEST_ID: u64 = (1 << 53) - 1;

/// What one connection holds and has confirmed (the recipient side).
#[derive(Clone, Copy, Debug, Default)]
pub struct Holding {
    /// The highest message id received (0: none yet).
    highest: i64,
    /// The `through` of the last `Received` sent (0: none yet).
    confirmed: i64,
    /// Already listed for confirmation after the current batch.
    pub(crate) listed: bool,
}

impl Holding {
    /// Message `message_id` arrived. Returns false when it is below the
    /// highest id received before (the server broke the receipts order);
    /// the confirmation never moves back.
    pub fn hold(&mut self, message_id: i64) -> bool {
        if message_id < self.highest {
            return false;
        }
        self.highest = message_id;
        true
    }

    /// The `through` to confirm now, if anything arrived since the last one.
    pub fn due(&self) -> Option<i64> {
        (self.highest > self.confirmed).then_some(self.highest)
    }

    /// A `Received{through}` was sent.
    pub fn confirmed(&mut self, through: i64) {
        self.confirmed = self.confirmed.max(through);
    }
}

/// One connection's acked 1:1 messages that no `Delivered` has covered yet
/// (the sender side), oldest first.
#[derive(Debug, Default)]
pub struct Awaiting {
    /// (server message id, send time in nanos), increasing ids.
    acked: VecDeque<(i64, u64)>,
    /// The highest `through` any `Delivered` named (0: none yet).
    through: i64,
}

impl Awaiting {
    /// Message `message_id`, sent at `sent`, was acked at `now`. If a
    /// `Delivered` already covered it (the receipt overtook the Ack), its
    /// latency is recorded at once and true returned.
    pub fn acked(&mut self, message_id: i64, sent: u64, now: u64, latency: &mut Latency) -> bool {
        if message_id <= self.through {
            latency.record_nanos(now.saturating_sub(sent));
            return true;
        }
        // Acks on one connection come in increasing id order, so this is a
        // push at the back; keep the ring sorted should one not.
        match self.acked.back() {
            Some(&(last, _)) if last > message_id => {
                let at = self.acked.partition_point(|&(id, _)| id < message_id);
                self.acked.insert(at, (message_id, sent));
            }
            _ => self.acked.push_back((message_id, sent)),
        }
        false
    }

    /// A `Delivered` with `through` arrived at `now`: records the latency of
    /// every message it newly covers and returns how many those are.
    pub fn delivered(&mut self, through: i64, now: u64, latency: &mut Latency) -> u64 {
        self.through = self.through.max(through);
        let mut covered = 0;
        while let Some(&(id, sent)) = self.acked.front() {
            if id > through {
                break;
            }
            self.acked.pop_front();
            latency.record_nanos(now.saturating_sub(sent));
            covered += 1;
        }
        covered
    }

    /// Acked messages still waiting for a `Delivered`.
    pub fn len(&self) -> u64 {
        self.acked.len() as u64
    }

    /// True when no acked message waits for a `Delivered`.
    pub fn is_empty(&self) -> bool {
        self.acked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holding_confirms_through_the_highest_id_once() {
        let mut holding = Holding::default();
        assert_eq!(holding.due(), None, "nothing received");
        assert!(holding.hold(5));
        assert!(holding.hold(9));
        assert_eq!(holding.due(), Some(9));
        holding.confirmed(9);
        assert_eq!(holding.due(), None, "nothing new since");
        assert!(!holding.hold(7), "below an earlier id");
        assert_eq!(holding.due(), None, "the confirmation never moves back");
        assert!(holding.hold(12));
        assert_eq!(holding.due(), Some(12));
    }

    #[test]
    fn a_delivered_covers_every_acked_message_up_to_its_through() {
        let mut latency = Latency::default();
        let mut awaiting = Awaiting::default();
        for (id, sent) in [(10, 100), (20, 200), (30, 300)] {
            assert!(!awaiting.acked(id, sent, sent + 5, &mut latency));
        }
        assert_eq!(awaiting.delivered(25, 1_000, &mut latency), 2);
        assert_eq!(awaiting.len(), 1);
        assert_eq!(latency.count(), 2);
        assert_eq!(awaiting.delivered(25, 1_100, &mut latency), 0, "again");
        // A receipt that overtakes the Ack covers the message on its Ack.
        assert_eq!(awaiting.delivered(45, 1_200, &mut latency), 1);
        assert!(awaiting.acked(40, 400, 1_300, &mut latency));
        assert!(!awaiting.acked(50, 500, 1_300, &mut latency));
        assert_eq!(latency.count(), 4);
        assert_eq!(awaiting.len(), 1);
    }

    #[test]
    fn acks_out_of_id_order_stay_sorted() {
        let mut latency = Latency::default();
        let mut awaiting = Awaiting::default();
        for id in [10, 30, 20] {
            awaiting.acked(id, 0, 0, &mut latency);
        }
        assert_eq!(awaiting.delivered(20, 1, &mut latency), 2);
        assert_eq!(awaiting.len(), 1);
    }
}
