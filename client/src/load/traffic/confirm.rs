//! Receipts (protocol 1.1) on the sending side: each connection confirms
//! what it received once per read batch, and `Delivered` pushes are matched
//! to the acked 1:1 messages they cover.

use protocol::server::DeliveryReceipt;
use protocol::ClientMessage;

use super::Senders;
use crate::load::pool::Pool;
use crate::load::progress::Progress;
use crate::load::receipts::RECEIVED_REQUEST_ID;

impl Senders {
    /// Sends one `Received` from every connection that received messages
    /// since the last call, through the highest id it holds. Called once per
    /// read batch, so a connection confirms at most once per batch however
    /// many messages the batch held. Does nothing without receipts.
    pub fn send_confirmations(&mut self, pool: &mut Pool) {
        for i in 0..self.to_confirm.len() {
            let member = &mut self.members[self.to_confirm[i]];
            member.holding.listed = false;
            let Some(through) = member.holding.due() else {
                continue;
            };
            if !member.open {
                continue;
            }
            let ClientMessage::Received(body) = &mut self.received else {
                unreachable!("always a Received (see Senders::new)");
            };
            body.through = through;
            if pool.send(member.conn, &self.received, RECEIVED_REQUEST_ID) {
                member.holding.confirmed(through);
                self.counts.received_sent += 1;
            }
        }
        self.to_confirm.clear();
    }

    /// Member `index` received message `message_id`: list it for the
    /// confirmation after this batch.
    pub(super) fn hold(&mut self, index: usize, message_id: i64, progress: &Progress) {
        let holding = &mut self.members[index].holding;
        if !holding.hold(message_id) {
            // The server pushes a receipts session its messages in id order.
            self.counts
                .error("message id below an earlier one", progress);
        }
        if !holding.listed {
            holding.listed = true;
            self.to_confirm.push(index);
        }
    }

    /// A `Delivered` push: covers member `index`'s acked 1:1 messages to
    /// the user it names up to its `through`.
    pub(super) fn on_receipt(
        &mut self,
        index: usize,
        receipt: &DeliveryReceipt,
        now: u64,
        progress: &Progress,
    ) {
        self.counts.receipts += 1;
        let member = &mut self.members[index];
        if !self.receipts {
            self.counts.error("Delivered without receipts", progress);
            return;
        }
        if member.dest_id.as_deref() != Some(receipt.username.as_str()) {
            self.counts
                .error("Delivered for a user not written to", progress);
            return;
        }
        let covered = member
            .awaiting
            .delivered(receipt.through, now, &mut self.receipt);
        self.counts.receipted += covered;
    }
}
