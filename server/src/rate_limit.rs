//! Rate limits: token buckets for bursts, and a growing lockout for failed
//! logins. Pure bookkeeping on a caller-supplied clock, so it is tested
//! without waiting.
//!
//! The defaults are generous enough for real people and for tests (50
//! registrations and 50 logins from one address within a second, 300 messages
//! pipelined on one connection, a handful of failed logins all pass) and tight
//! enough to make guessing passwords slow. `--no-rate-limits` turns all of it
//! off for benchmarks. Every number is a named constant below; SECURITY.md's
//! budget table lists them.
//!
//! Addresses are keyed by [`address_key`]: an IPv4 address as is, an IPv6
//! address by its /64 (one subscriber's prefix holds billions of addresses).
//!
//! **Password guesses.** At most one password attempt per account is in
//! flight (fetching the hash, hashing): another one for the same account
//! gets `rate_limited` at once, so parallel guesses cannot all be hashed
//! before the first failure is counted. The attempt in flight holds the
//! account's slot until its verdict; a verdict whose connection is gone counts
//! as a failure whatever it was, so hanging up cannot hide a right guess.
//!
//! **Lockout scheme.** After [`FAILURES_PER_ACCOUNT`] failures within
//! [`FAILURE_WINDOW`] an account is locked for [`LOCKOUT_FIRST`], doubling
//! with each further lockout up to [`LOCKOUT_MAX`]; [`FAILURES_PER_ADDRESS`]
//! from one address lock that address. An attacker can keep that lock on
//! forever (5 guesses per period), so the lock does not apply to a *trusted*
//! address: one that logged in to that account with its password within
//! [`TRUSTED_ADDRESS_TTL`] (up to [`TRUSTED_ADDRESSES_PER_ACCOUNT`] of them,
//! in memory, so forgotten on restart). Each trusted address counts its own
//! failures against the same threshold, so it is locked only by failing
//! itself. The rightful user at a usual address therefore always gets in;
//! at a new address they wait like the attacker; devices that resume a
//! session are never locked out.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::completion::ConnId;
use crate::id_map::{HashMapExt, IdMap};

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

    /// Takes `count` tokens whatever is left (a bucket of bytes, where one
    /// message may take more than remains): the bucket may go below zero,
    /// and refills from there.
    pub fn charge(&mut self, count: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity) - count;
        self.updated = now;
    }

    /// Whether a token is there to take now (takes none).
    pub fn has_token(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.per_second >= 1.0
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

/// Registrations per address: a family or a classroom behind one NAT
/// registers at once; a script probing usernames gets 20 a second.
pub const REGISTRATIONS_PER_ADDRESS: Rate = Rate {
    burst: 100.0,
    per_second: 20.0,
};

/// Password logins per address (hashing is the cost: see the hash queue).
pub const LOGINS_PER_ADDRESS: Rate = Rate {
    burst: 200.0,
    per_second: 50.0,
};

/// Messages per connection (`--message-burst`, `--messages-per-second`):
/// a client catching up pipelines hundreds; a person types a few a second.
pub const MESSAGES_PER_CONNECTION: Rate = Rate {
    burst: 500.0,
    per_second: 100.0,
};

/// Bytes of message content per connection: a burst of 4 MiB, then 1 MiB/s.
/// The message rate alone would let one connection write 6 MB/s of 60 KB
/// messages, which slows every other user's commits.
pub const MESSAGE_BYTES_PER_CONNECTION: Rate = Rate {
    burst: 4.0 * 1024.0 * 1024.0,
    per_second: 1024.0 * 1024.0,
};

/// Undecodable frames per connection before it is closed with 1008: a
/// buggy client learns from the errors; a fuzzer is cut off.
pub const BAD_FRAMES_PER_CONNECTION: Rate = Rate {
    burst: 20.0,
    per_second: 0.5,
};

/// CreateGroup, AddGroupMembers and LeaveGroup per connection. Each one
/// writes to storage and sends GroupInfo to every online member (up to
/// `--max-group-size` frames), so a person's few a minute pass and a
/// script's thousands do not.
pub const GROUP_OPERATIONS_PER_CONNECTION: Rate = Rate {
    burst: 20.0,
    per_second: 1.0,
};

/// Failed logins per account within [`FAILURE_WINDOW`] before a lockout
/// (`--login-failures-per-account`).
pub const FAILURES_PER_ACCOUNT: u32 = 5;

/// Failed logins per address within [`FAILURE_WINDOW`] before a lockout;
/// looser than per account because many people can share one address.
pub const FAILURES_PER_ADDRESS: u32 = 20;

/// The window in which failed logins are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The first lockout; each further one doubles, up to [`LOCKOUT_MAX`].
pub const LOCKOUT_FIRST: Duration = Duration::from_secs(15);
/// The longest lockout.
pub const LOCKOUT_MAX: Duration = Duration::from_secs(300);
/// How long a successful password login keeps its address trusted for that
/// account (exempt from the account's lockout; see the module docs).
pub const TRUSTED_ADDRESS_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Trusted addresses kept per account (home, work, phone, one spare); the
/// least recently used is forgotten first.
pub const TRUSTED_ADDRESSES_PER_ACCOUNT: usize = 4;
/// A password attempt whose verdict has not come back by then is forgotten
/// (it cannot happen short of a lost reply; a full hash queue takes minutes).
const ATTEMPT_STALE: Duration = Duration::from_secs(30 * 60);
/// Entries kept per table before idle ones are pruned early (memory bound);
/// the table of trusted addresses takes no new account past it.
pub const TABLE_ENTRIES_MAX: usize = 100_000;

/// The limits in force.
#[derive(Clone, Copy, Debug)]
pub struct RateConfig {
    /// Registrations per client address.
    pub registrations_per_ip: Rate,
    /// Password logins per client address.
    pub logins_per_ip: Rate,
    /// Messages per connection.
    pub messages_per_connection: Rate,
    /// Bytes of message content per connection.
    pub message_bytes_per_connection: Rate,
    /// Undecodable frames per connection before it is disconnected.
    pub bad_frames_per_connection: Rate,
    /// Group operations per connection.
    pub group_operations_per_connection: Rate,
    /// Failed logins per account within [`FAILURE_WINDOW`] before a lockout.
    pub failures_per_account: u32,
    /// Failed logins per address within [`FAILURE_WINDOW`] before a lockout.
    pub failures_per_ip: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            registrations_per_ip: REGISTRATIONS_PER_ADDRESS,
            logins_per_ip: LOGINS_PER_ADDRESS,
            messages_per_connection: MESSAGES_PER_CONNECTION,
            message_bytes_per_connection: MESSAGE_BYTES_PER_CONNECTION,
            bad_frames_per_connection: BAD_FRAMES_PER_CONNECTION,
            group_operations_per_connection: GROUP_OPERATIONS_PER_CONNECTION,
            failures_per_account: FAILURES_PER_ACCOUNT,
            failures_per_ip: FAILURES_PER_ADDRESS,
        }
    }
}

/// The key under which per-address limits count `ip`: IPv4 as is (and an
/// IPv4-mapped IPv6 address as its IPv4), IPv6 by its /64 prefix, since one
/// subscriber is usually given a whole /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Failed logins of one account, address, or account at a trusted address.
#[derive(Clone, Copy, Debug)]
struct Failures {
    window_start: Instant,
    count: u32,
    lockouts: u32,
    locked_until: Option<Instant>,
    /// A password attempt counted here is being checked.
    in_flight: bool,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Failures {
            window_start: now,
            count: 0,
            lockouts: 0,
            locked_until: None,
            in_flight: false,
        }
    }

    fn is_locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    /// Whether a new attempt must wait: locked, or one is in flight.
    fn is_busy(&self, now: Instant) -> bool {
        self.in_flight || self.is_locked(now)
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

    /// Records how an attempt counted here ended.
    fn finish(&mut self, verdict: Verdict, now: Instant, threshold: u32) {
        self.in_flight = false;
        match verdict {
            Verdict::Failed => self.record(now, threshold),
            Verdict::Succeeded => *self = Failures::new(now),
            Verdict::NotTried => {}
        }
    }

    fn is_idle(&self, now: Instant) -> bool {
        !self.in_flight
            && !self.is_locked(now)
            && now.saturating_duration_since(self.window_start) > LOCKOUT_MAX + FAILURE_WINDOW
    }
}

/// An address that logged in to an account with its password.
#[derive(Clone, Copy, Debug)]
struct TrustedAddress {
    address: IpAddr,
    last_login: Instant,
    /// This address's own failures for the account.
    failures: Failures,
}

impl TrustedAddress {
    fn is_expired(&self, now: Instant) -> bool {
        !self.failures.in_flight
            && now.saturating_duration_since(self.last_login) > TRUSTED_ADDRESS_TTL
    }
}

/// Whose failures a password attempt is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guesser {
    /// An address the account does not trust: the account's shared record.
    Anyone,
    /// A trusted address: its own record.
    Trusted(IpAddr),
}

/// How a password attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The password matched and the client heard so.
    Succeeded,
    /// Wrong password, unknown user, or a verdict nobody was left to hear.
    Failed,
    /// No hash was computed (queue full, storage failed): not a guess.
    NotTried,
}

/// A password attempt in flight.
#[derive(Clone, Debug)]
struct Attempt {
    address: IpAddr,
    /// The account and whose record holds the attempt, when the name could
    /// be an account (others only count for the address).
    account: Option<(String, Guesser)>,
    started: Instant,
}

/// Every address- and account-keyed limit. Per-connection buckets live with
/// the connection (see [`RateLimits::connection_buckets`]).
pub struct RateLimits {
    config: Option<RateConfig>,
    registrations: HashMap<IpAddr, Bucket>,
    logins: HashMap<IpAddr, Bucket>,
    /// Failures of each account from addresses it does not trust.
    account_failures: HashMap<String, Failures>,
    /// The addresses each account trusts.
    trusted: HashMap<String, Vec<TrustedAddress>>,
    ip_failures: HashMap<IpAddr, Failures>,
    /// Password attempts in flight, by the connection that made them.
    attempts: IdMap<ConnId, Attempt>,
}

/// The buckets each connection carries.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionBuckets {
    /// Messages sent.
    pub messages: Bucket,
    /// Bytes of message content sent.
    pub message_bytes: Bucket,
    /// Bad frames sent.
    pub bad_frames: Bucket,
    /// Group operations (create, add members, leave).
    pub group_operations: Bucket,
    /// Messages refused for being over the rate: past these too, the loop
    /// stops reading the connection until its rate allows more, so a flood
    /// costs the loop twice the rate, not what the client can write.
    pub refusals: Bucket,
}

impl RateLimits {
    /// Limits as configured; `None` disables them all.
    pub fn new(config: Option<RateConfig>) -> Self {
        RateLimits {
            config,
            registrations: HashMap::new(),
            logins: HashMap::new(),
            account_failures: HashMap::new(),
            trusted: HashMap::new(),
            ip_failures: HashMap::new(),
            attempts: IdMap::new(),
        }
    }

    /// Fresh buckets for a new connection, or `None` when limits are off.
    pub fn connection_buckets(&self, now: Instant) -> Option<ConnectionBuckets> {
        self.config.map(|config| ConnectionBuckets {
            messages: Bucket::new(config.messages_per_connection, now),
            message_bytes: Bucket::new(config.message_bytes_per_connection, now),
            bad_frames: Bucket::new(config.bad_frames_per_connection, now),
            group_operations: Bucket::new(config.group_operations_per_connection, now),
            refusals: Bucket::new(config.messages_per_connection, now),
        })
    }

    /// May `ip` register now?
    pub fn allow_registration(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(config) = self.config else {
            return true;
        };
        take(
            &mut self.registrations,
            address_key(ip),
            config.registrations_per_ip,
            now,
        )
    }

    /// May `conn`, at `ip`, try a password for `username` now? When it may,
    /// the attempt is in flight until [`RateLimits::end_login`] for `conn`:
    /// meanwhile no other attempt for that account (from an address with the
    /// same standing) is allowed.
    pub fn begin_login(&mut self, conn: ConnId, ip: IpAddr, username: &str, now: Instant) -> bool {
        let Some(config) = self.config else {
            return true;
        };
        let address = address_key(ip);
        if self
            .ip_failures
            .get(&address)
            .is_some_and(|f| f.is_locked(now))
        {
            return false;
        }
        // Only names that could exist are tracked, so junk names cannot
        // grow the account tables beyond the address limit.
        let account = protocol::validate::is_valid_username(username)
            .then(|| (username.to_owned(), self.guesser(username, address, now)));
        if let Some((name, guesser)) = &account {
            if self
                .failures(name, *guesser)
                .is_some_and(|f| f.is_busy(now))
            {
                return false;
            }
        }
        if !take(&mut self.logins, address, config.logins_per_ip, now) {
            return false;
        }
        if let Some((name, guesser)) = &account {
            self.hold_account(name, *guesser, now);
        }
        let attempt = Attempt {
            address,
            account,
            started: now,
        };
        self.attempts.insert(conn, attempt);
        true
    }

    /// The password attempt of `conn` ended with `verdict`: count it, and
    /// on success trust the address for that account.
    pub fn end_login(&mut self, conn: ConnId, verdict: Verdict, now: Instant) {
        let (Some(config), Some(attempt)) = (self.config, self.attempts.remove(&conn)) else {
            return;
        };
        if let Some((name, guesser)) = &attempt.account {
            if let Some(failures) = self.failures_mut(name, *guesser) {
                failures.finish(verdict, now, config.failures_per_account);
            }
            if verdict == Verdict::Succeeded {
                self.trust(name, attempt.address, now);
            }
        }
        if verdict == Verdict::Failed {
            self.ip_failures
                .entry(attempt.address)
                .or_insert_with(|| Failures::new(now))
                .record(now, config.failures_per_ip);
        }
    }

    /// Where the password attempt of `conn` in flight is counted: its
    /// address's key, and whether on its account's shared record (the name
    /// could be an account and the address is not trusted for it).
    pub fn attempt_standing(&self, conn: ConnId) -> Option<(IpAddr, bool)> {
        let attempt = self.attempts.get(&conn)?;
        let shared = matches!(attempt.account, Some((_, Guesser::Anyone)));
        Some((attempt.address, shared))
    }

    /// Whose record an attempt from `address` for `username` counts on.
    fn guesser(&self, username: &str, address: IpAddr, now: Instant) -> Guesser {
        let trusted = self.trusted.get(username).is_some_and(|addresses| {
            addresses.iter().any(|t| {
                t.address == address
                    && now.saturating_duration_since(t.last_login) <= TRUSTED_ADDRESS_TTL
            })
        });
        match trusted {
            true => Guesser::Trusted(address),
            false => Guesser::Anyone,
        }
    }

    fn failures(&self, username: &str, guesser: Guesser) -> Option<&Failures> {
        match guesser {
            Guesser::Anyone => self.account_failures.get(username),
            Guesser::Trusted(address) => self
                .trusted
                .get(username)?
                .iter()
                .find(|t| t.address == address)
                .map(|t| &t.failures),
        }
    }

    fn failures_mut(&mut self, username: &str, guesser: Guesser) -> Option<&mut Failures> {
        match guesser {
            Guesser::Anyone => self.account_failures.get_mut(username),
            Guesser::Trusted(address) => self
                .trusted
                .get_mut(username)?
                .iter_mut()
                .find(|t| t.address == address)
                .map(|t| &mut t.failures),
        }
    }

    /// Marks an attempt in flight on the record it counts on.
    fn hold_account(&mut self, username: &str, guesser: Guesser, now: Instant) {
        if guesser == Guesser::Anyone && !self.account_failures.contains_key(username) {
            if self.account_failures.len() >= TABLE_ENTRIES_MAX {
                self.account_failures.retain(|_, f| !f.is_idle(now));
            }
            self.account_failures
                .insert(username.to_owned(), Failures::new(now));
        }
        if let Some(failures) = self.failures_mut(username, guesser) {
            failures.in_flight = true;
        }
    }

    /// Trusts `address` for `username` from now on (see the module docs).
    fn trust(&mut self, username: &str, address: IpAddr, now: Instant) {
        if !self.trusted.contains_key(username) && self.trusted.len() >= TABLE_ENTRIES_MAX {
            self.trusted.retain(|_, addresses| {
                addresses.retain(|t| !t.is_expired(now));
                !addresses.is_empty()
            });
            if self.trusted.len() >= TABLE_ENTRIES_MAX {
                return; // full of live entries: the shared lockout still holds
            }
        }
        let addresses = self.trusted.entry(username.to_owned()).or_default();
        if let Some(known) = addresses.iter_mut().find(|t| t.address == address) {
            known.last_login = now;
            return;
        }
        if addresses.len() >= TRUSTED_ADDRESSES_PER_ACCOUNT {
            // Forget the least recently used address that is not mid-attempt.
            let oldest = addresses
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.failures.in_flight)
                .min_by_key(|(_, t)| t.last_login)
                .map(|(index, _)| index);
            match oldest {
                Some(index) => {
                    addresses.remove(index);
                }
                None => return,
            }
        }
        addresses.push(TrustedAddress {
            address,
            last_login: now,
            failures: Failures::new(now),
        });
    }

    /// Forgets entries that no longer limit anyone (called from the tick).
    pub fn prune(&mut self, now: Instant) {
        let stale: Vec<ConnId> = self
            .attempts
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.started) > ATTEMPT_STALE)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stale {
            self.end_login(conn, Verdict::NotTried, now);
        }
        self.registrations.retain(|_, bucket| !bucket.is_idle(now));
        self.logins.retain(|_, bucket| !bucket.is_idle(now));
        self.account_failures.retain(|_, f| !f.is_idle(now));
        self.ip_failures.retain(|_, f| !f.is_idle(now));
        self.trusted.retain(|_, addresses| {
            addresses.retain(|t| !t.is_expired(now));
            !addresses.is_empty()
        });
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

    fn conn(serial: u64) -> ConnId {
        ConnId { slot: 0, serial }
    }

    /// One whole password attempt: begun (if allowed) and ended at once.
    fn attempt(
        limits: &mut RateLimits,
        from: &str,
        name: &str,
        verdict: Verdict,
        now: Instant,
    ) -> bool {
        let allowed = limits.begin_login(conn(0), from.parse().unwrap(), name, now);
        limits.end_login(conn(0), verdict, now);
        allowed
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
        assert!((0..50).all(|i| limits.begin_login(conn(i), ip(), &format!("user{i}"), now)));
        let mut buckets = limits.connection_buckets(now).unwrap();
        assert!((0..300).all(|_| buckets.messages.try_take(now)));
        assert!((0..20).all(|_| buckets.group_operations.try_take(now)));
        assert!(!buckets.group_operations.try_take(now));
    }

    #[test]
    fn one_password_attempt_per_account_is_in_flight() {
        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        assert!(limits.begin_login(conn(1), ip(), "alice", now));
        assert!(
            !limits.begin_login(conn(2), ip(), "alice", now),
            "a second guess waits"
        );
        assert!(
            !limits.begin_login(conn(3), "10.9.9.9".parse().unwrap(), "alice", now),
            "from anywhere"
        );
        assert!(
            limits.begin_login(conn(2), ip(), "bob", now),
            "only that account"
        );
        limits.end_login(conn(1), Verdict::Failed, now);
        assert!(limits.begin_login(conn(1), ip(), "alice", now));
    }

    #[test]
    fn five_failures_lock_the_account_and_lockouts_grow_but_stay_bounded() {
        let start = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        for _ in 0..4 {
            assert!(attempt(
                &mut limits,
                "10.0.0.1",
                "alice",
                Verdict::Failed,
                start
            ));
        }
        assert!(attempt(
            &mut limits,
            "10.0.0.1",
            "alice",
            Verdict::Failed,
            start
        ));
        assert!(!limits.begin_login(conn(1), ip(), "alice", start));
        assert!(
            limits.begin_login(conn(1), ip(), "bob", start),
            "only that account"
        );
        let after_first = start + LOCKOUT_FIRST;
        for _ in 0..5 {
            assert!(attempt(
                &mut limits,
                "10.0.0.2",
                "alice",
                Verdict::Failed,
                after_first
            ));
        }
        assert!(!limits.begin_login(conn(2), ip(), "alice", after_first + LOCKOUT_FIRST));
        assert!(limits.begin_login(conn(2), ip(), "alice", after_first + LOCKOUT_FIRST * 2));
        limits.end_login(conn(2), Verdict::NotTried, after_first + LOCKOUT_FIRST * 2);
        let mut later = after_first + LOCKOUT_FIRST * 2;
        for round in 0..20 {
            for _ in 0..5 {
                let from = format!("10.0.1.{round}");
                assert!(attempt(&mut limits, &from, "alice", Verdict::Failed, later));
            }
            later += LOCKOUT_MAX;
        }
        assert!(
            limits.begin_login(conn(3), ip(), "alice", later),
            "never longer than the maximum"
        );
    }

    #[test]
    fn a_trusted_address_is_not_locked_out_by_failures_elsewhere() {
        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        assert!(attempt(
            &mut limits,
            "10.0.0.1",
            "alice",
            Verdict::Succeeded,
            now
        ));
        for _ in 0..5 {
            assert!(attempt(
                &mut limits,
                "10.6.6.6",
                "alice",
                Verdict::Failed,
                now
            ));
        }
        assert!(!limits.begin_login(conn(1), "10.6.6.6".parse().unwrap(), "alice", now));
        assert!(!limits.begin_login(conn(1), "10.7.7.7".parse().unwrap(), "alice", now));
        assert!(
            limits.begin_login(conn(1), ip(), "alice", now),
            "the usual address"
        );
        limits.end_login(conn(1), Verdict::Succeeded, now);
        // The trusted address fails on its own record, and locks only itself.
        for _ in 0..5 {
            assert!(attempt(
                &mut limits,
                "10.0.0.1",
                "alice",
                Verdict::Failed,
                now
            ));
        }
        assert!(!limits.begin_login(conn(1), ip(), "alice", now));
        // Trust expires.
        let later = now + TRUSTED_ADDRESS_TTL + LOCKOUT_MAX;
        assert!(attempt(
            &mut limits,
            "10.6.6.6",
            "alice",
            Verdict::Failed,
            later
        ));
        assert!(limits.guesser("alice", ip(), later) == Guesser::Anyone);
    }

    #[test]
    fn an_account_trusts_a_bounded_number_of_addresses() {
        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        for i in 0..10 {
            let at = now + Duration::from_secs(i);
            assert!(attempt(
                &mut limits,
                &format!("10.0.0.{i}"),
                "alice",
                Verdict::Succeeded,
                at
            ));
        }
        let trusted = &limits.trusted["alice"];
        assert_eq!(trusted.len(), TRUSTED_ADDRESSES_PER_ACCOUNT);
        assert!(trusted
            .iter()
            .any(|t| t.address == "10.0.0.9".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn success_clears_an_accounts_failures() {
        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        for _ in 0..4 {
            attempt(&mut limits, "10.0.0.1", "alice", Verdict::Failed, now);
        }
        attempt(&mut limits, "10.0.0.9", "alice", Verdict::Succeeded, now);
        attempt(&mut limits, "10.0.0.1", "alice", Verdict::Failed, now);
        assert!(limits.begin_login(conn(1), ip(), "alice", now));
    }

    #[test]
    fn disabled_limits_allow_everything() {
        let now = Instant::now();
        let mut limits = RateLimits::new(None);
        assert!((0..10_000).all(|_| limits.allow_registration(ip(), now)));
        for _ in 0..100 {
            attempt(&mut limits, "10.0.0.1", "alice", Verdict::Failed, now);
        }
        assert!((0..10).all(|i| limits.begin_login(conn(i), ip(), "alice", now)));
        assert!(limits.connection_buckets(now).is_none());
    }

    #[test]
    fn idle_entries_are_pruned() {
        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        limits.allow_registration(ip(), now);
        attempt(&mut limits, "10.0.0.1", "alice", Verdict::Failed, now);
        attempt(&mut limits, "10.0.0.1", "bob", Verdict::Succeeded, now);
        limits.begin_login(conn(7), ip(), "carol", now);
        limits.prune(now + TRUSTED_ADDRESS_TTL + Duration::from_secs(3600));
        assert!(limits.registrations.is_empty());
        assert!(limits.account_failures.is_empty());
        assert!(limits.ip_failures.is_empty());
        assert!(limits.trusted.is_empty());
        assert!(limits.attempts.is_empty(), "a lost verdict is forgotten");
    }

    #[test]
    fn ipv6_addresses_are_keyed_by_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        assert_eq!(address_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), ip());
        assert_eq!(address_key(ip()), ip());

        let now = Instant::now();
        let mut limits = RateLimits::new(Some(RateConfig::default()));
        let burst = REGISTRATIONS_PER_ADDRESS.burst as usize;
        assert!((0..burst).all(|_| limits.allow_registration(a, now)));
        assert!(
            !limits.allow_registration(b, now),
            "one /64 shares one bucket"
        );
        assert!(limits.allow_registration(other, now));
    }
}
