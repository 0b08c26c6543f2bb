//! The way back into the event loop: worker threads (storage, hashing) send
//! their results here, then wake the loop's `mio::Waker` so `poll` returns.
//!
//! Every completion names the connection it was for by [`ConnId`] (inside a
//! [`Requester`], with the request's id), which
//! includes a serial number never reused; a result for a connection that has
//! since closed (its slab slot perhaps taken by another) is dropped.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use mio::Waker;
use protocol::RequestId;

use crate::bus::Inbound;
use crate::hasher::HashDone;
use crate::storage::Reply;

/// Identifies one connection for its whole life: its slab slot plus a serial
/// number unique for the process, so a late reply never reaches a new occupant
/// of the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The slab key (and mio token) of the connection.
    pub slot: usize,
    /// Unique per accepted connection.
    pub serial: u64,
}

/// Who waits for an answer: the connection, and the `request_id` its request
/// carried (protocol 1.1), echoed on every reply to it. Off-loop work carries
/// one from the request to the reply, across as many hops as it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    /// The requesting connection.
    pub conn: ConnId,
    /// The request's id, if it had one.
    pub request_id: Option<RequestId>,
}

impl Requester {
    /// A requester whose request carried no id (or none to echo).
    pub const fn anonymous(conn: ConnId) -> Requester {
        Requester {
            conn,
            request_id: None,
        }
    }
}

/// A finished piece of off-loop work.
#[derive(Debug)]
pub enum Completion {
    /// A storage command was executed (and, for writes, committed).
    Storage(Reply),
    /// A password was hashed or verified.
    Hash(HashDone),
    /// Another server of the cluster told something (`bus/nats.rs`).
    Bus(Inbound),
}

/// The sending half, cloned into every worker thread.
#[derive(Clone)]
pub struct CompletionSender {
    sender: Sender<Completion>,
    waker: Arc<Waker>,
}

impl CompletionSender {
    /// Queues one completion and wakes the loop.
    pub fn send(&self, completion: Completion) {
        self.send_all(std::iter::once(completion));
    }

    /// Queues several completions and wakes the loop once.
    pub fn send_all(&self, completions: impl IntoIterator<Item = Completion>) {
        for completion in completions {
            // The loop owns the receiver until it exits; after that there is
            // nobody left to tell, so a failed send is not an error.
            let _ = self.sender.send(completion);
        }
        if let Err(error) = self.waker.wake() {
            log::error!("cannot wake the event loop: {error}");
        }
    }
}

/// A completion channel whose sender wakes `waker`.
pub fn channel(waker: Arc<Waker>) -> (CompletionSender, Receiver<Completion>) {
    let (sender, receiver) = mpsc::channel();
    (CompletionSender { sender, waker }, receiver)
}

/// Why an off-loop queue (storage's or the hashers') refused work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue, or the client's share of it, is full: the client is told
    /// to try again (`server_busy` for storage, `rate_limited` for hashing).
    Full,
    /// The thread behind it is gone (shutdown).
    Stopped,
}
