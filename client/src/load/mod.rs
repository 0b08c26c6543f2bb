//! `chat-load`: a load generator for chat-server that speaks the wire protocol
//! through the `protocol` crate.
//!
//! # Layout
//! - [`conn`]: one non-blocking WebSocket client connection as a state machine
//!   (TCP connect → handshake → open → closed).
//! - [`socket`]: the TCP socket under every connection, which skips the read
//!   that would only return `EAGAIN` after a short read (edge-triggered).
//! - [`pool`]: many connections on one mio `Poll`; turns readiness into
//!   [`pool::PoolEvent`]s (opened, a decoded frame, closed). No scenario logic.
//! - [`setup`]: the request flows every scenario needs first — register users,
//!   open logged-in connections — bounded in concurrency and time.
//! - [`traffic`]: the sending side every traffic shares — sender windows,
//!   messages in flight, answers (Ack or refusal) matched by request id — and
//!   the [`traffic::Traffic`] trait the scenario loops drive.
//! - [`exchange`]: 1:1 message traffic between pairs of users (closed loop or
//!   fixed rate), with ack and end-to-end latency and loss accounting.
//! - [`fanout`]: group message traffic (members send to their group), with
//!   per-delivery and whole-fan-out latency and lost-delivery accounting.
//! - [`receipts`]: protocol 1.1 receipts — the `Received` confirmations each
//!   connection sends once per read batch, and `Delivered` matched to acked
//!   1:1 messages (count and send → Delivered latency).
//! - [`stats`]: latency histograms (hdrhistogram, nanoseconds) and their summary.
//! - [`report`]: the human table and the JSON result file.
//! - [`progress`]: shared counters and the progress line on long runs.
//! - [`cpu`]: chat-load's own CPU share, printed with every result.
//! - [`summary`]: one table over several JSON results, with the targets.
//! - [`scenario`]: one file per scenario (`logins`, `messages`,
//!   `groups`, `idle`, `storm`).
//!
//! # Invariants
//! - One thread drives many sockets: there is never a thread per connection.
//!   `messages --threads N` runs N independent shards, each its own `Poll`.
//! - Every loop is bounded by a deadline and a count; nothing waits forever on
//!   the server.
//! - The scenario owns control flow; the pool and the exchange only react to
//!   events and report.
//! - Replies are matched to requests by request id (protocol 1.1), never by
//!   order or content: every request chat-load sends carries an integer id
//!   (see [`pool`] for how ids are chosen).

pub mod conn;
pub mod cpu;
pub mod exchange;
pub mod fanout;
pub mod pool;
pub mod progress;
pub mod receipts;
pub mod report;
pub mod scenario;
pub mod setup;
pub mod socket;
pub mod stats;
pub mod summary;
pub mod traffic;

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since a process-local epoch (the first call). Message contents
/// carry a send timestamp in this clock, so sender and recipient must be in the
/// same process — they are: every pair lives in one shard.
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64
}

/// A failure that ends a scenario before it can report (the server is not
/// there, setup could not finish in time, registration was refused).
#[derive(Debug)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// Shorthand for building a [`LoadError`].
pub fn load_error(message: impl Into<String>) -> LoadError {
    LoadError(message.into())
}
