//! The way back into the event loop: worker threads (storage, hashing) send
//! their results here, then wake the loop's `mio::Waker` so `poll` returns.
//!
//! Every completion names the connection it was for by [`ConnId`], which
//! includes a serial number never reused; a result for a connection that has
//! since closed (its slab slot perhaps taken by another) is dropped.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use mio::Waker;

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

/// A finished piece of off-loop work.
#[derive(Debug)]
pub enum Completion {
    /// A storage command was executed (and, for writes, committed).
    Storage(Reply),
    /// A password was hashed or verified.
    Hash(HashDone),
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
