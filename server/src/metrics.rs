//! What `GET /metrics` reports, kept off the hot path: plain `u64` counters
//! that the loop, the dispatcher and the effects already pass through
//! (bumped where the work happens, with no atomics, locks or allocation),
//! three histograms owned by the threads that time the work (the storage
//! thread's batch size and commit latency, the hashers' time per hash,
//! behind one cheap shared handle), read and encoded in the Prometheus text
//! format (0.0.4, by `prometheus-client`) only when scraped.
//!
//! The loop fills a [`Scrape`] from what it holds and calls [`encode`]; this
//! module knows nothing of the loop, the dispatcher or storage.

use std::fmt;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use protocol::server::{FailLogin, FailRegister, LoginError, RegisterError};
use protocol::{ClientTag, ErrorType, ServerMessage};

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every `error_type` an Error frame can carry, in the order counted.
const ERROR_TYPES: [ErrorType; 9] = [
    ErrorType::BadRequest,
    ErrorType::UnknownTag,
    ErrorType::NotLoggedIn,
    ErrorType::Forbidden,
    ErrorType::UnknownUser,
    ErrorType::UnknownGroup,
    ErrorType::TooLarge,
    ErrorType::RateLimited,
    ErrorType::ServerBusy,
];

fn error_index(kind: ErrorType) -> usize {
    match kind {
        ErrorType::BadRequest => 0,
        ErrorType::UnknownTag => 1,
        ErrorType::NotLoggedIn => 2,
        ErrorType::Forbidden => 3,
        ErrorType::UnknownUser => 4,
        ErrorType::UnknownGroup => 5,
        ErrorType::TooLarge => 6,
        ErrorType::RateLimited => 7,
        ErrorType::ServerBusy => 8,
    }
}

/// What a `rate_limited` answer refused, by the request it answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimited {
    /// A Message (tag 11).
    Message,
    /// A group change (tags 12–14).
    GroupChange,
    /// A Login (the account's lockout, a parallel guess, or a full hashing
    /// queue).
    Login,
    /// A Register.
    Registration,
    /// Any other request answered `rate_limited`.
    Other,
}

impl RateLimited {
    const ALL: [RateLimited; 5] = [
        RateLimited::Message,
        RateLimited::GroupChange,
        RateLimited::Login,
        RateLimited::Registration,
        RateLimited::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            RateLimited::Message => "message",
            RateLimited::GroupChange => "group_change",
            RateLimited::Login => "login",
            RateLimited::Registration => "register",
            RateLimited::Other => "other",
        }
    }

    /// The kind of a `rate_limited` Error frame answering request `ref_tag`.
    fn of_tag(ref_tag: Option<i64>) -> RateLimited {
        match ref_tag.and_then(ClientTag::from_number) {
            Some(ClientTag::Message) => RateLimited::Message,
            Some(ClientTag::CreateGroup | ClientTag::AddGroupMembers | ClientTag::LeaveGroup) => {
                RateLimited::GroupChange
            }
            Some(ClientTag::Login) => RateLimited::Login,
            Some(ClientTag::Register) => RateLimited::Registration,
            _ => RateLimited::Other,
        }
    }
}

/// Replies counted as they are queued (by `Effects::send`, the one funnel
/// every reply passes): Acks, Error frames by type, and `rate_limited`
/// answers by what they refused. The loop adds each turn's tally to its
/// [`LoopCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameTally {
    /// Ack frames.
    pub acks: u64,
    errors: [u64; ERROR_TYPES.len()],
    rate_limited: [u64; RateLimited::ALL.len()],
}

impl FrameTally {
    /// Counts `message` if it is an Ack, an Error or a `rate_limited` answer.
    pub fn note(&mut self, message: &ServerMessage) {
        match message {
            ServerMessage::Ack(_) => self.acks += 1,
            ServerMessage::Error(error) => {
                self.errors[error_index(error.error_type)] += 1;
                if error.error_type == ErrorType::RateLimited {
                    self.refused(RateLimited::of_tag(error.ref_tag));
                }
            }
            ServerMessage::FailLogin(FailLogin {
                error_type: LoginError::RateLimited,
            }) => self.refused(RateLimited::Login),
            ServerMessage::FailRegister(FailRegister {
                error_type: RegisterError::RateLimited,
            }) => self.refused(RateLimited::Registration),
            _ => {}
        }
    }

    fn refused(&mut self, kind: RateLimited) {
        self.rate_limited[kind as usize] += 1;
    }

    /// Error frames of this type counted.
    pub fn errors(&self, kind: ErrorType) -> u64 {
        self.errors[error_index(kind)]
    }

    /// `rate_limited` answers of this kind counted.
    pub fn rate_limited(&self, kind: RateLimited) -> u64 {
        self.rate_limited[kind as usize]
    }

    /// Adds `other` to this tally and zeroes it.
    pub fn absorb(&mut self, other: &mut FrameTally) {
        self.acks += other.acks;
        for (mine, theirs) in self.errors.iter_mut().zip(&other.errors) {
            *mine += theirs;
        }
        for (mine, theirs) in self.rate_limited.iter_mut().zip(&other.rate_limited) {
            *mine += theirs;
        }
        *other = FrameTally::default();
    }
}

/// Why the server closed a connection (each counted once, when decided).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// Its unsent output passed the slow-consumer cap.
    SlowConsumer,
    /// It kept sending bad frames.
    Abuse,
    /// Silent past `--timeout`.
    Idle,
    /// Its request head or handshake did not finish in time.
    HandshakeTimeout,
    /// It logged out.
    Logout,
}

impl CloseKind {
    const ALL: [CloseKind; 5] = [
        CloseKind::SlowConsumer,
        CloseKind::Abuse,
        CloseKind::Idle,
        CloseKind::HandshakeTimeout,
        CloseKind::Logout,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::Abuse => "abuse",
            CloseKind::Idle => "idle",
            CloseKind::HandshakeTimeout => "handshake_timeout",
            CloseKind::Logout => "logout",
        }
    }
}

/// Why a new connection was refused at accept (HTTP 503).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` reached.
    MaxConnections,
    /// `--max-connections-per-address` reached for its address.
    PerAddress,
}

/// Counters the event loop keeps: plain integers, bumped where the loop
/// already does the work (a frame read, a frame queued, a close decided).
#[derive(Clone, Debug, Default)]
pub struct LoopCounters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused at accept, by [`Refusal`].
    pub refused: [u64; 2],
    /// WebSocket data frames read (text and binary).
    pub frames_received: u64,
    /// Their payload bytes.
    pub bytes_received: u64,
    /// Text frames queued to connections.
    pub frames_sent: u64,
    /// Their payload bytes.
    pub bytes_sent: u64,
    /// Message frames (tag 11) queued to recipient connections: live,
    /// held through a login, or from the offline queue.
    pub deliveries: u64,
    /// Closes decided by the server, by [`CloseKind`].
    closes: [u64; CloseKind::ALL.len()],
    /// Plain HTTP answers by status code, as `(code, count)`.
    http: Vec<(u16, u64)>,
    /// Replies counted on their way out.
    pub tally: FrameTally,
}

impl LoopCounters {
    /// Counts a close the server decided.
    pub fn closed(&mut self, kind: CloseKind) {
        self.closes[kind as usize] += 1;
    }

    /// Counts a connection refused at accept.
    pub fn refused(&mut self, why: Refusal) {
        self.refused[why as usize] += 1;
    }

    /// Closes of this kind counted.
    pub fn closes(&self, kind: CloseKind) -> u64 {
        self.closes[kind as usize]
    }

    /// Counts a plain HTTP answer.
    pub fn http_answered(&mut self, status: u16) {
        match self.http.iter_mut().find(|(code, _)| *code == status) {
            Some((_, count)) => *count += 1,
            None => self.http.push((status, 1)),
        }
    }
}

/// The histograms, owned by the threads that observe them: cloning shares
/// them (a `prometheus-client` histogram is an `Arc` around a small mutex,
/// taken once per observation: once per storage batch, once per hash).
#[derive(Clone, Debug)]
pub struct Histograms {
    /// Commands per storage batch (one transaction, one commit).
    pub batch_commands: Histogram,
    /// Seconds a storage batch took to execute and commit.
    pub commit_seconds: Histogram,
    /// Seconds one index pass took (SQLite; a batch arriving meanwhile
    /// waits for it).
    pub index_pass_seconds: Histogram,
    /// Seconds one password hash (derive or verify) took.
    pub hash_seconds: Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            // 1 to 4,096 commands (STORAGE_BATCH_MAX), by powers of two.
            batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 100 µs to ~6.5 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            // 50 µs to ~3 s.
            index_pass_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
            // 1 ms to ~8 s (PBKDF2 at 600,000 iterations is ~0.3 s).
            hash_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        }
    }
}

/// Everything one scrape reports, gathered by the loop.
#[derive(Debug)]
pub struct Scrape<'a> {
    /// Connections in the slab (any state).
    pub connections: usize,
    /// Users with at least one logged-in connection.
    pub users_online: usize,
    /// Storage commands submitted and not yet answered.
    pub storage_queue: usize,
    /// Hashing jobs submitted and not yet finished.
    pub hash_jobs: usize,
    /// Messages accepted for storage (the dispatcher's count).
    pub messages_accepted: u64,
    /// Messages committed (resends aside).
    pub messages_stored: u64,
    /// Storage commands that failed (disk errors).
    pub storage_failures: u64,
    /// Successful logins.
    pub logins: u64,
    /// The loop's counters.
    pub counters: &'a LoopCounters,
    /// The histograms.
    pub histograms: &'a Histograms,
}

/// The scrape in the Prometheus text format, every name prefixed `chat_`.
pub fn encode(scrape: &Scrape) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("chat");
    register_gauges(&mut registry, scrape);
    register_traffic(&mut registry, scrape);
    register_work(&mut registry, scrape);
    register_refusals(&mut registry, scrape.counters);
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

fn gauge(value: usize) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

fn register_gauges(registry: &mut Registry, scrape: &Scrape) {
    let gauges = [
        (
            "connections",
            "Open connections, in any state",
            scrape.connections,
        ),
        (
            "users_online",
            "Users with a logged-in connection",
            scrape.users_online,
        ),
        (
            "storage_queue",
            "Storage commands waiting or executing",
            scrape.storage_queue,
        ),
        (
            "hash_queue",
            "Password hashing jobs waiting or running",
            scrape.hash_jobs,
        ),
    ];
    for (name, help, value) in gauges {
        registry.register(name, help, gauge(value));
    }
}

fn register_traffic(registry: &mut Registry, scrape: &Scrape) {
    let counters = scrape.counters;
    let counted = [
        (
            "connections_accepted",
            "Connections accepted",
            counters.accepted,
        ),
        (
            "frames_received",
            "WebSocket data frames read",
            counters.frames_received,
        ),
        (
            "frames_sent",
            "WebSocket text frames queued",
            counters.frames_sent,
        ),
    ];
    for (name, help, value) in counted {
        registry.register(name, help, ConstCounter::new(value));
    }
    let bytes = [
        (
            "received",
            "Payload bytes of the frames read",
            counters.bytes_received,
        ),
        (
            "sent",
            "Payload bytes of the frames queued",
            counters.bytes_sent,
        ),
    ];
    for (name, help, value) in bytes {
        registry.register_with_unit(name, help, Unit::Bytes, ConstCounter::new(value));
    }
}

fn register_work(registry: &mut Registry, scrape: &Scrape) {
    let counters = scrape.counters;
    let counted = [
        (
            "messages_accepted",
            "Messages accepted and sent to storage",
            scrape.messages_accepted,
        ),
        (
            "messages_stored",
            "Messages committed (resends aside)",
            scrape.messages_stored,
        ),
        ("acks", "Ack frames sent", counters.tally.acks),
        (
            "deliveries",
            "Message frames queued to recipient connections",
            counters.deliveries,
        ),
        ("logins", "Successful logins", scrape.logins),
        (
            "storage_failures",
            "Storage commands that failed",
            scrape.storage_failures,
        ),
    ];
    for (name, help, value) in counted {
        registry.register(name, help, ConstCounter::new(value));
    }
    let histograms = scrape.histograms;
    registry.register(
        "storage_batch_commands",
        "Commands per storage batch (one commit)",
        histograms.batch_commands.clone(),
    );
    registry.register_with_unit(
        "storage_commit",
        "Time to execute and commit one storage batch",
        Unit::Seconds,
        histograms.commit_seconds.clone(),
    );
    registry.register_with_unit(
        "storage_index_pass",
        "Time of one pass writing the per-user indexes behind the messages",
        Unit::Seconds,
        histograms.index_pass_seconds.clone(),
    );
    registry.register_with_unit(
        "hash",
        "Time of one password hash",
        Unit::Seconds,
        histograms.hash_seconds.clone(),
    );
}

type Labelled = Family<Vec<(&'static str, &'static str)>, Counter>;

fn labelled(
    label: &'static str,
    values: impl IntoIterator<Item = (&'static str, u64)>,
) -> Labelled {
    let family = Labelled::default();
    for (value, count) in values {
        family.get_or_create(&vec![(label, value)]).inc_by(count);
    }
    family
}

fn register_refusals(registry: &mut Registry, counters: &LoopCounters) {
    let tally = &counters.tally;
    let rate_limited = RateLimited::ALL.map(|kind| (kind.label(), tally.rate_limited(kind)));
    registry.register(
        "rate_limited",
        "Requests answered rate_limited, by what they asked",
        labelled("kind", rate_limited),
    );
    let errors = ERROR_TYPES.map(|kind| (kind.as_str(), tally.errors(kind)));
    registry.register(
        "errors",
        "Error frames sent, by error_type",
        labelled("type", errors),
    );
    let closes = CloseKind::ALL.map(|kind| (kind.label(), counters.closes(kind)));
    registry.register(
        "closes",
        "Connections closed by the server, by reason",
        labelled("reason", closes),
    );
    let refused = [
        (
            "max_connections",
            counters.refused[Refusal::MaxConnections as usize],
        ),
        (
            "per_address",
            counters.refused[Refusal::PerAddress as usize],
        ),
    ];
    registry.register(
        "connections_refused",
        "Connections refused at accept (HTTP 503), by limit",
        labelled("limit", refused),
    );
    let http = counters
        .http
        .iter()
        .map(|(code, count)| (status_label(*code), *count));
    registry.register(
        "http_responses",
        "Plain HTTP answers, by status",
        labelled("code", http),
    );
}

/// A status code as a label value (`&'static`, as the family's labels are).
fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        304 => "304",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        431 => "431",
        503 => "503",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::server::{Ack, Error};

    fn error(kind: ErrorType, ref_tag: Option<i64>) -> ServerMessage {
        ServerMessage::Error(Error {
            error_type: kind,
            detail: String::new(),
            ref_tag,
        })
    }

    #[test]
    fn the_tally_counts_acks_errors_and_refusals_by_kind() {
        let mut tally = FrameTally::default();
        tally.note(&ServerMessage::Ack(Ack {
            message_id: 1,
            client_message_id: None,
        }));
        tally.note(&error(ErrorType::RateLimited, Some(11)));
        tally.note(&error(ErrorType::RateLimited, Some(13)));
        tally.note(&error(ErrorType::BadRequest, None));
        tally.note(&ServerMessage::FailLogin(FailLogin {
            error_type: LoginError::RateLimited,
        }));
        tally.note(&ServerMessage::FailLogin(FailLogin {
            error_type: LoginError::InvalidCredentials,
        }));
        assert_eq!(tally.acks, 1);
        assert_eq!(tally.errors(ErrorType::RateLimited), 2);
        assert_eq!(tally.errors(ErrorType::BadRequest), 1);
        assert_eq!(tally.rate_limited(RateLimited::Message), 1);
        assert_eq!(tally.rate_limited(RateLimited::GroupChange), 1);
        assert_eq!(tally.rate_limited(RateLimited::Login), 1);
        let mut total = FrameTally::default();
        total.absorb(&mut tally);
        assert_eq!(tally, FrameTally::default(), "absorbing empties the source");
        assert_eq!(total.acks, 1);
    }

    #[test]
    fn a_scrape_encodes_every_family_in_the_text_format() {
        let mut counters = LoopCounters {
            frames_received: 7,
            bytes_received: 700,
            ..LoopCounters::default()
        };
        counters.closed(CloseKind::SlowConsumer);
        counters.http_answered(404);
        counters.tally.note(&error(ErrorType::ServerBusy, Some(11)));
        let histograms = Histograms::default();
        histograms.commit_seconds.observe(0.002);
        histograms.index_pass_seconds.observe(0.0003);
        histograms.batch_commands.observe(3.0);
        let scrape = Scrape {
            connections: 3,
            users_online: 2,
            storage_queue: 1,
            hash_jobs: 0,
            messages_accepted: 5,
            messages_stored: 4,
            storage_failures: 0,
            logins: 2,
            counters: &counters,
            histograms: &histograms,
        };
        let text = encode(&scrape).unwrap();
        for line in [
            "# TYPE chat_connections gauge",
            "chat_connections 3",
            "chat_users_online 2",
            "chat_frames_received_total 7",
            "chat_received_bytes_total 700",
            "chat_messages_stored_total 4",
            "chat_closes_total{reason=\"slow_consumer\"} 1",
            "chat_errors_total{type=\"server_busy\"} 1",
            "chat_http_responses_total{code=\"404\"} 1",
            "chat_storage_commit_seconds_count 1",
            "chat_storage_index_pass_seconds_count 1",
            "chat_storage_batch_commands_bucket{le=\"4\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
    }
}
