//! Rate limits: token buckets for bursts, and a growing lockout for failed
//! logins. Pure bookkeeping on a caller-supplied clock, so it is tested
//! without waiting.
//!
//! The defaults are generous enough for real people and for tests (50
//! registrations and 50 logins from one address within a second, 300 messages
//! pipelined on one connection, a handful of failed logins all pass) and tight
//! enough to make guessing passwords slow. `--no-rate-limits` turns all of it
//! off for benchmarks.
//!
//! Failed-login lockout trade-off: after 5 failures within a minute an
//! account (or 20 from one address, which a NAT may share) is locked for 15 s,
//! doubling with each further lockout up to 5 minutes, and reset by a
//! successful login. An attacker who keeps failing can therefore keep a victim
//! from logging in *with a password* for up to 5 minutes at a time — but never
//! longer per lockout, and devices that resume a session are not affected.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A bucket of `capacity` tokens refilled at `per_second`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Bucket {
            capacity: rate.burst,
            per_second: rate.per_second,
            tokens: rate.burst,
            updated: now,
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has been full (untouched) for a while.
    fn is_idle(&self, now: Instant) -> bool {
        let refilled = self.tokens
            + now.saturating_duration_since(self.updated).as_secs_f64() * self.per_second;
        refilled >= self.capacity
    }
}

/// A burst size and a sustained rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens available at once.
    pub burst: f64,
    /// Tokens regained per second.
    pub per_second: f64,
}

/// The limits in force.
#[derive(Clone, Copy, Debug)]
pub struct RateConfig {
    /// Registrations per client address.
    pub registrations_per_ip: Rate,
    /// Password logins per client address.
    pub logins_per_ip: Rate,
    /// Messages per connection.
    pub messages_per_connection: Rate,
    /// Undecodable frames per connection before it is disconnected.
    pub bad_frames_per_connection: Rate,
    /// Failed logins per account within [`FAILURE_WINDOW`] before a lockout.
    pub failures_per_account: u32,
    /// Failed logins per address within [`FAILURE_WINDOW`] before a lockout.
    pub failures_per_ip: u32,
}

/// The window in which failed logins are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The first lockout; each further one doubles, up to [`LOCKOUT_MAX`].
pub const LOCKOUT_FIRST: Duration = Duration::from_secs(15);
/// The longest lockout.
pub const LOCKOUT_MAX: Duration = Duration::from_secs(300);
/// Entries kept per table before idle ones are pruned early (memory bound).
const TABLE_ENTRIES_MAX: usize = 100_000;

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            registrations_per_ip: Rate {
                burst: 100.0,
                per_second: 20.0,
            },
            logins_per_ip: Rate {
                burst: 200.0,
                per_second: 50.0,
            },
            messages_per_connection: Rate {
                burst: 500.0,
                per_second: 100.0,
            },
            bad_frames_per_connection: Rate {
                burst: 20.0,
                per_second: 0.5,
            },
            failures_per_account: 5,
            failures_per_ip: 20,
        }
    }
}

/// Failed logins of one account or address.
#[derive(Clone, Copy, Debug)]
struct Failures {
    window_start: Instant,
    count: u32,
    lockouts: u32,
    locked_until: Option<Instant>,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Failures {
            window_start: now,
            count: 0,
            lockouts: 0,
            locked_until: None,
        }
    }

    fn is_locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    fn record(&mut self, now: Instant, threshold: u32) {
        if now.saturating_duration_since(self.window_start) > FAILURE_WINDOW {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count >= threshold {
            let factor = 1u32 << self.lockouts.min(8);
            self.locked_until = Some(now + (LOCKOUT_FIRST * factor).min(LOCKOUT_MAX));
            self.lockouts += 1;
            self.count = 0;
            self.window_start = now;
        }
    }

    fn is_idle(&self, now: Instant) -> bool {
        !self.is_locked(now)
            && now.saturating_duration_since(self.window_start) > LOCKOUT_MAX + FAILURE_WINDOW
    }
}

/// Every address- and account-keyed limit. Per-connection buckets live with
/// the connection (see [`RateLimits::connection_buckets`]).
pub struct RateLimits {
    config: Option<RateConfig>,
    registrations: HashMap<IpAddr, Bucket>,
    logins: HashMap<IpAddr, Bucket>,
    account_failures: HashMap<String, Failures>,
    ip_failures: HashMap<IpAddr, Failures>,
}

/// The buckets each connection carries.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionBuckets {
    /// Messages sent.
    pub messages: Bucket,
    /// Bad frames sent.
    pub bad_frames: Bucket,
}

impl RateLimits {
    /// Limits as configured; `None` disables them all.
    pub fn new(config: Option<RateConfig>) -> Self {
        RateLimits {
            config,
            registrations: HashMap::new(),
            logins: HashMap::new(),
            account_failures: HashMap::new(),
            ip_failures: HashMap::new(),
        }
    }

    /// Fresh buckets for a new connection, or `None` when limits are off.
    pub fn connection_buckets(&self, now: Instant) -> Option<ConnectionBuckets> {
        self.config.map(|config| ConnectionBuckets {
            messages: Bucket::new(config.messages_per_connection, now),
            bad_frames: Bucket::new(config.bad_frames_per_connection, now),
        })
    }

    /// May `ip` register now?
    pub fn allow_registration(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(config) = self.config else {
            return true;
        };
        take(
            &mut self.registrations,
            ip,
            config.registrations_per_ip,
            now,
        )
    }

    /// May `ip` try a password login for `username` now?
    pub fn allow_login(&mut self, ip: IpAddr, username: &str, now: Instant) -> bool {
        let Some(config) = self.config else {
            return true;
        };
        let locked = self
            .account_failures
            .get(username)
            .is_some_and(|f| f.is_locked(now))
            || self.ip_failures.get(&ip).is_some_and(|f| f.is_locked(now));
        !locked && take(&mut self.logins, ip, config.logins_per_ip, now)
    }

    /// Records a failed password login.
    pub fn login_failed(&mut self, ip: IpAddr, username: &str, now: Instant) {
        let Some(config) = self.config else {
            return;
        };
        // Only names that could exist are tracked, so junk names cannot
        // grow the table beyond the address limit.
        if protocol::validate::is_valid_username(username) {
            self.account_failures
                .entry(username.to_owned())
                .or_insert_with(|| Failures::new(now))
                .record(now, config.failures_per_account);
        }
        self.ip_failures
            .entry(ip)
            .or_insert_with(|| Failures::new(now))
            .record(now, config.failures_per_ip);
    }

    /// A successful login clears the account's failures.
    pub fn login_succeeded(&mut self, username: &str) {
        self.account_failures.remove(username);
    }

    /// Forgets entries that no longer limit anyone (called from the tick).
    pub fn prune(&mut self, now: Instant) {
        self.registrations.retain(|_, bucket| !bucket.is_idle(now));
        self.logins.retain(|_, bucket| !bucket.is_idle(now));
        self.account_failures.retain(|_, f| !f.is_idle(now));
        self.ip_failures.retain(|_, f| !f.is_idle(now));
    }
}

fn take<K: Hash + Eq>(table: &mut HashMap<K, Bucket>, key: K, rate: Rate, now: Instant) -> bool {
    if table.len() >= TABLE_ENTRIES_MAX {
        table.retain(|_, bucket| !bucket.is_idle(now));
    }
    table
        .entry(key)
        .or_insert_with(|| Bucket::new(rate, now))
        .try_take(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "10.0.0.1".parse().unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills() {
        let start = Instant::now();
        let mut bucket = Bucket::new(
            Rate {
                burst: 3.0,
                per_second: 1.0,
            },
            start,
        );
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert!(bucket.try_take(start + Duration::from_secs(1)));
    }

    #[test]
    fn the_documented_bursts_pass() {
        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        assert!((0..50).all(|_| limits.allow_registration(ip(), now)));
        assert!((0..50).all(|i| limits.allow_login(ip(), &format!("user{i}"), now)));
        let mut buckets = limits.connection_buckets(now).unwrap();
        assert!((0..300).all(|_| buckets.messages.try_take(now)));
    }

    #[test]
    fn five_failures_lock_the_account_and_lockouts_grow_but_stay_bounded() {
        let start = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        for _ in 0..4 {
            limits.login_failed(ip(), "alice", start);
            assert!(limits.allow_login(ip(), "alice", start), "a handful pass");
        }
        limits.login_failed(ip(), "alice", start);
        assert!(!limits.allow_login(ip(), "alice", start));
        assert!(limits.allow_login(ip(), "bob", start), "only that account");
        let after_first = start + LOCKOUT_FIRST;
        assert!(limits.allow_login(ip(), "alice", after_first));
        for _ in 0..5 {
            limits.login_failed("10.0.0.2".parse().unwrap(), "alice", after_first);
        }
        assert!(!limits.allow_login(ip(), "alice", after_first + LOCKOUT_FIRST));
        assert!(limits.allow_login(ip(), "alice", after_first + LOCKOUT_FIRST * 2));
        let mut later = after_first;
        for _ in 0..20 {
            for _ in 0..5 {
                limits.login_failed("10.0.0.3".parse().unwrap(), "alice", later);
            }
            later += LOCKOUT_MAX;
        }
        assert!(
            limits.allow_login(ip(), "alice", later),
            "never longer than the maximum"
        );
    }

    #[test]
    fn success_clears_an_accounts_failures() {
        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        for _ in 0..4 {
            limits.login_failed(ip(), "alice", now);
        }
        limits.login_succeeded("alice");
        limits.login_failed(ip(), "alice", now);
        assert!(limits.allow_login(ip(), "alice", now));
    }

    #[test]
    fn disabled_limits_allow_everything() {
        let now = Instant::now();
        let mut limits = RateLimits::new(None);
        assert!((0..10_000).all(|_| limits.allow_registration(ip(), now)));
        for _ in 0..100 {
            limits.login_failed(ip(), "alice", now);
        }
        assert!(limits.allow_login(ip(), "alice", now));
        assert!(limits.connection_buckets(now).is_none());
    }

    #[test]
    fn idle_entries_are_pruned() {
        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        limits.allow_registration(ip(), now);
        limits.login_failed(ip(), "alice", now);
        limits.prune(now + Duration::from_secs(3600));
        assert!(limits.registrations.is_empty());
        assert!(limits.account_failures.is_empty());
        assert!(limits.ip_failures.is_empty());
    }
}
