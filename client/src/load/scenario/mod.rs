//! One file per scenario. Each takes the [`Common`] options and its own
//! config, runs bounded in time and count, and returns a serialisable result
//! with a `passed` verdict and a [`Table`](super::report::Table) to print.

pub mod groups;
pub mod idle;
pub mod logins;
pub mod messages;
pub mod storm;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Options every scenario shares.
#[derive(Clone, Debug)]
pub struct Common {
    /// The server, or the servers of one cluster (connections take them
    /// in turn).
    pub addrs: Vec<SocketAddr>,
    /// Random id in every username of this run.
    pub run_id: String,
    /// Seconds between progress lines (0: none).
    pub progress_secs: f64,
    /// Requests in flight while registering and logging users in.
    pub setup_concurrency: usize,
    /// The longest setup may take before the scenario gives up.
    pub setup_timeout_secs: f64,
}

impl Common {
    /// When setup must be finished.
    pub fn setup_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs_f64(self.setup_timeout_secs)
    }

    /// Usernames `l<run>_<first>` … of this run.
    pub fn names(&self, kind: char, range: std::ops::Range<usize>) -> Vec<String> {
        range
            .map(|i| super::setup::username(kind, &self.run_id, i))
            .collect()
    }
}

/// Seconds → nanoseconds.
pub fn secs_to_nanos(secs: f64) -> u64 {
    (secs * 1e9) as u64
}
