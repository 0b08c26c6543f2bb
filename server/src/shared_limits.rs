//! Cluster mode: the failed-login lockout and the registration limit that
//! every server of a cluster shares, so guesses or registrations spread
//! over several servers count as they would on one.
//!
//! The rows live in PostgreSQL (`login_failures`, `registration_buckets`,
//! schema version 4) and are read and written by the storage thread as part
//! of the commands that need them: `FetchCredentials` checks the locks and
//! charges the account, `EndSharedLogin` records the verdict, `CreateUser`
//! takes a registration token. Time is PostgreSQL's clock, so servers with
//! skewed clocks still agree. This file is the arithmetic on those rows,
//! pure like [`crate::rate_limit`], whose constants (window, lockout
//! lengths, rates) it uses so that both modes lock out alike.
//!
//! **Charged first.** A password attempt for an account is counted as a
//! failure when it *begins* (in the same transaction that reads the
//! password hash), and given back when it succeeds (the record is cleared,
//! as on one server) or was never tried (hash queue full). So the five
//! attempts a lockout allows are five however many servers they are spread
//! over and however many run at once: the sixth finds the account locked.
//! An address is counted after the verdict, as on one server.
//!
//! Alone (SQLite, or PostgreSQL without `--nats`) none of this runs: the
//! loop's in-memory tables are the whole truth.

use std::time::Duration;

use crate::rate_limit::{Rate, FAILURE_WINDOW, LOCKOUT_FIRST, LOCKOUT_MAX};

/// Rows kept per shared table (failures; registration buckets) once
/// expired rows are deleted: as many as one server keeps in memory
/// ([`crate::rate_limit::TABLE_ENTRIES_MAX`]). Past it the rows that
/// expire soonest go first (a lock in force last). Between two prunes the
/// table grows at most by the attempts the per-address rates let through.
pub const SHARED_LIMIT_ROWS_MAX: i64 = crate::rate_limit::TABLE_ENTRIES_MAX as i64;

/// How often the storage thread deletes expired shared rows (and enforces
/// [`SHARED_LIMIT_ROWS_MAX`]): often enough that the tables stay small,
/// rarely enough that the deletes cost nothing next to the logins.
pub const SHARED_LIMIT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// What the storage thread needs to check and count one password attempt
/// across the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedLogin {
    /// The address's key ([`crate::rate_limit::address_key`], as text).
    pub address: String,
    /// Whether the attempt counts on the account's shared record: the name
    /// could be an account and the address is not trusted for it here (a
    /// trusted address counts on its own record, on the server that
    /// trusts it).
    pub account: bool,
    /// Failures per account before a lockout.
    pub failures_per_account: u32,
    /// Failures per address before a lockout.
    pub failures_per_ip: u32,
}

/// What the storage thread needs to take a registration token across the
/// cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedRegistration {
    /// The address's key, as text.
    pub address: String,
    /// Registrations per address.
    pub rate: Rate,
}

/// The key of an account's row in `login_failures`.
pub fn account_key(username: &str) -> String {
    format!("account:{username}")
}

/// The key of an address's row in `login_failures`.
pub fn address_key(address: &str) -> String {
    format!("address:{address}")
}

/// One row of `login_failures`: the failures of an account or an address,
/// in milliseconds of PostgreSQL's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureRow {
    /// When the current window of failures began.
    pub window_start_ms: i64,
    /// Failures in it.
    pub count: i32,
    /// Lockouts so far (each one twice as long as the last).
    pub lockouts: i32,
    /// Locked until then (0: never locked).
    pub locked_until_ms: i64,
}

impl FailureRow {
    /// A record with no failures, its window starting at `now_ms`.
    pub fn new(now_ms: i64) -> FailureRow {
        FailureRow {
            window_start_ms: now_ms,
            ..FailureRow::default()
        }
    }

    /// Whether a lockout is in force.
    pub fn is_locked(&self, now_ms: i64) -> bool {
        now_ms < self.locked_until_ms
    }

    /// Counts one failure; the `threshold`-th within the window locks for
    /// [`LOCKOUT_FIRST`], doubled per earlier lockout up to
    /// [`LOCKOUT_MAX`] (as [`crate::rate_limit`] does on one server).
    pub fn record(&mut self, now_ms: i64, threshold: u32) {
        if now_ms - self.window_start_ms > millis(FAILURE_WINDOW) {
            self.window_start_ms = now_ms;
            self.count = 0;
        }
        self.count += 1;
        if self.count >= i32::try_from(threshold).unwrap_or(i32::MAX) {
            let factor = 1i64 << self.lockouts.clamp(0, 8);
            let lockout = (millis(LOCKOUT_FIRST) * factor).min(millis(LOCKOUT_MAX));
            self.locked_until_ms = now_ms + lockout;
            self.lockouts += 1;
            self.count = 0;
            self.window_start_ms = now_ms;
        }
    }

    /// Gives back a failure charged to an attempt that was never tried.
    pub fn refund(&mut self) {
        self.count = (self.count - 1).max(0);
    }

    /// When the row stops limiting anyone and may be deleted: no lock, and
    /// its window long past (as one server forgets an idle record).
    pub fn idle_after_ms(&self) -> i64 {
        let forgotten = self.window_start_ms + millis(LOCKOUT_MAX + FAILURE_WINDOW);
        forgotten.max(self.locked_until_ms)
    }
}

/// One row of `registration_buckets`: a token bucket in PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketRow {
    /// Tokens left at `updated_ms`.
    pub tokens: f64,
    /// When they were counted.
    pub updated_ms: i64,
}

impl BucketRow {
    /// A full bucket at `now_ms`.
    pub fn full(rate: Rate, now_ms: i64) -> BucketRow {
        BucketRow {
            tokens: rate.burst,
            updated_ms: now_ms,
        }
    }

    /// Takes a token if there is one (refilled at `rate` since the row was
    /// written); whether it did.
    pub fn try_take(&mut self, rate: Rate, now_ms: i64) -> bool {
        let elapsed = (now_ms - self.updated_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the bucket is full again (and its row may be deleted).
    pub fn full_at_ms(&self, rate: Rate) -> i64 {
        if rate.per_second <= 0.0 {
            return i64::MAX;
        }
        let missing = (rate.burst - self.tokens).max(0.0);
        self.updated_ms + (missing / rate.per_second * 1000.0).ceil() as i64
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threshold-th failure locks, the next lockout is twice as long,
    /// and a failure after the window starts a new count.
    #[test]
    fn failures_lock_as_on_one_server() {
        let mut row = FailureRow::new(0);
        for _ in 0..4 {
            row.record(1_000, 5);
            assert!(!row.is_locked(1_000));
        }
        row.record(1_000, 5);
        assert!(row.is_locked(1_000));
        assert_eq!(row.locked_until_ms, 1_000 + millis(LOCKOUT_FIRST));
        let after = row.locked_until_ms;
        for _ in 0..5 {
            row.record(after, 5);
        }
        assert_eq!(row.locked_until_ms, after + 2 * millis(LOCKOUT_FIRST));
        let late = row.window_start_ms + millis(FAILURE_WINDOW) + 1;
        let mut fresh = FailureRow::new(0);
        fresh.record(0, 5);
        fresh.record(late + 1_000_000, 5);
        assert_eq!(fresh.count, 1);
    }

    /// A refund never goes below zero, and a row is idle only once its
    /// lock and window are over.
    #[test]
    fn refunds_and_idleness() {
        let mut row = FailureRow::new(0);
        row.refund();
        assert_eq!(row.count, 0);
        row.record(0, 1);
        assert!(row.idle_after_ms() >= row.locked_until_ms);
        assert!(row.idle_after_ms() >= millis(LOCKOUT_MAX + FAILURE_WINDOW));
    }

    /// A bucket gives its burst, then refills at its rate.
    #[test]
    fn a_bucket_row_refills() {
        let rate = Rate {
            burst: 2.0,
            per_second: 1.0,
        };
        let mut row = BucketRow::full(rate, 0);
        assert!(row.try_take(rate, 0));
        assert!(row.try_take(rate, 0));
        assert!(!row.try_take(rate, 0));
        assert_eq!(row.full_at_ms(rate), 2_000);
        assert!(row.try_take(rate, 1_000));
    }
}
