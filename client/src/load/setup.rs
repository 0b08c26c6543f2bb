//! The request flows scenarios start with: registering users and opening
//! logged-in connections, each with at most `concurrency` requests in flight
//! and a deadline.
//!
//! Usernames carry a random run id (`l<run>_<i>`), so reruns against the same
//! database never collide.
//!
//! Each request's id is the index of the name (registration) or the spec
//! (login) it is for, and its answer is the reply echoing that id; frames
//! without one (Presence, offline messages after a login) are pushes. A
//! success, failure or Error echoing no id (a server before protocol 1.1) or
//! another id fails the request at once rather than leave it to time out.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::client::{Login, Register};
use protocol::{ClientMessage, ServerMessage};
use serde::Serialize;

use super::pool::{ConnId, Pool, PoolEvent};
use super::progress::Progress;
use super::stats::{Latency, LatencySummary};
use super::{load_error, now_nanos, LoadError};

/// The password of every load-test user.
pub const SECRET: &str = "load-test-secret";

/// How long one `poll` waits during setup; short so deadlines are honoured.
const SETUP_POLL: Duration = Duration::from_millis(20);

/// A connection that breaks during registration is replaced at most this many
/// times in one flow, so a server that refuses everyone ends the flow.
const RECONNECTS_MAX: u64 = 1000;

/// A short random id for this run: 6 base-36 characters from the clock and pid.
pub fn random_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // A multiplicative hash spreads nearby clock values over all 6 characters.
    let mut x = (nanos ^ ((std::process::id() as u64) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut id = String::new();
    for _ in 0..6 {
        id.push(char::from_digit((x % 36) as u32, 36).expect("digit below 36"));
        x /= 36;
    }
    id
}

/// The username of user `index` of kind `kind` (`l` for scenario users, `b`
/// for storm burst users) in run `run_id`.
pub fn username(kind: char, run_id: &str, index: usize) -> String {
    format!("{kind}{run_id}_{index}")
}

/// The email registered for a load-test user.
pub fn email(username: &str) -> String {
    format!("{username}@load.test")
}

/// How one flow of requests went.
#[derive(Default)]
pub struct FlowReport {
    /// Requests answered with success.
    pub ok: u64,
    /// Failures by kind (`username_taken`, `closed`, …).
    pub failures: BTreeMap<String, u64>,
    /// Wall time of the whole flow.
    pub elapsed_secs: f64,
    /// Per-request latency (for logins: from starting the TCP connect).
    pub latency: Latency,
}

impl FlowReport {
    /// Total failures.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn fail(&mut self, kind: impl Into<String>, progress: &Progress) {
        *self.failures.entry(kind.into()).or_default() += 1;
        Progress::add(&progress.errors, 1);
    }

    /// The serialisable part.
    pub fn summary(&self) -> FlowSummary {
        FlowSummary {
            ok: self.ok,
            failed: self.failed(),
            failures: self.failures.clone(),
            elapsed_secs: self.elapsed_secs,
            per_sec: super::stats::per_sec(self.ok, self.elapsed_secs),
            latency: self.latency.summary(),
        }
    }
}

/// [`FlowReport`] as it appears in the JSON result.
#[derive(Clone, Debug, Serialize)]
pub struct FlowSummary {
    /// Successes.
    pub ok: u64,
    /// Failures.
    pub failed: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed_secs: f64,
    /// Successes per second of wall time.
    pub per_sec: f64,
    /// Per-request latency.
    pub latency: LatencySummary,
}

/// Registers `names` over up to `concurrency` connections, one request in
/// flight per connection; the connections are closed at the end.
pub fn register_users(
    pool: &mut Pool,
    names: &[String],
    concurrency: usize,
    deadline: Instant,
    progress: &Progress,
) -> Result<FlowReport, LoadError> {
    let started = Instant::now();
    let mut report = FlowReport::default();
    // Connection → the request it waits for (name index = request id, send
    // time), if any.
    let mut waiting: HashMap<ConnId, Option<(usize, u64)>> = HashMap::new();
    let mut next = 0;
    let mut answered = 0;
    let mut reconnects = 0;
    for _ in 0..concurrency.min(names.len()) {
        waiting.insert(connect(pool)?, None);
    }
    let mut events = Vec::new();
    while answered < names.len() {
        if Instant::now() >= deadline {
            return Err(load_error(format!(
                "registration timed out: {answered} of {} answered",
                names.len()
            )));
        }
        events.clear();
        pool.poll(SETUP_POLL, &mut events).map_err(poll_error)?;
        for event in events.drain(..) {
            let id = event.conn();
            let Some(&pending) = waiting.get(&id) else {
                continue;
            };
            match event {
                PoolEvent::Opened(_) => {}
                PoolEvent::Frame(_, message, request_id) => {
                    let Some((index, sent)) = pending else {
                        continue; // nothing asked yet: a push
                    };
                    let failure = match answer_to(index, &message, request_id) {
                        Answer::Push => continue,
                        Answer::Stray(kind) => Some(kind.to_string()),
                        Answer::Ours => match message {
                            ServerMessage::SuccessRegister(_) => None,
                            ServerMessage::FailRegister(fail) => {
                                Some(format!("{:?}", fail.error_type))
                            }
                            ServerMessage::Error(error) => {
                                Some(error.error_type.as_str().to_string())
                            }
                            other => Some(format!("unexpected tag {}", other.tag())),
                        },
                    };
                    waiting.insert(id, None);
                    answered += 1;
                    match failure {
                        None => {
                            report.ok += 1;
                            report.latency.record_nanos(now_nanos() - sent);
                            Progress::add(&progress.logins, 1);
                        }
                        Some(kind) => report.fail(kind, progress),
                    }
                }
                PoolEvent::Undecodable(_, _) => report.fail("undecodable", progress),
                PoolEvent::Closed(_, reason) => {
                    if waiting.remove(&id).flatten().is_some() {
                        answered += 1;
                        report.fail(closed_kind(&reason), progress);
                    }
                    if next < names.len() {
                        reconnects += 1;
                        if reconnects > RECONNECTS_MAX {
                            return Err(load_error(format!("registration: {reason}")));
                        }
                        waiting.insert(connect(pool)?, None);
                    }
                    continue;
                }
            }
            // Whatever happened, an idle open connection takes the next name.
            if waiting.get(&id) == Some(&None) && next < names.len() {
                let name = &names[next];
                let message = ClientMessage::Register(Register {
                    username: name.clone(),
                    secret: SECRET.to_string(),
                    email: email(name),
                });
                if pool.send(id, &message, next as u64) {
                    waiting.insert(id, Some((next, now_nanos())));
                    next += 1;
                }
            }
        }
    }
    for id in waiting.into_keys() {
        pool.close(id);
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// How a connection logs in.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A password login.
    Secret(String),
    /// A session resume.
    Session(String),
}

/// One login to perform.
#[derive(Clone, Debug)]
pub struct LoginSpec {
    /// Who.
    pub username: String,
    /// How.
    pub credential: Credential,
    /// Log in with receipts (protocol 1.1): the connection confirms what it
    /// receives with `Received`, and gets `Delivered` for what it sent.
    pub receipts: bool,
}

/// The outcome of [`login_connections`].
pub struct Logins {
    /// Counts and latency.
    pub report: FlowReport,
    /// Per spec: the session id, when the login succeeded.
    pub sessions: Vec<Option<String>>,
    /// Per spec: the logged-in connection, when kept open.
    pub connections: Vec<Option<ConnId>>,
}

/// Drives logins, each on a new connection, at most `concurrency` at a time,
/// inside a loop the caller owns (storm runs it beside a message stream).
pub struct LoginDriver {
    specs: Vec<LoginSpec>,
    concurrency: usize,
    keep_open: bool,
    /// Set by the first [`LoginDriver::start_more`].
    started: Option<Instant>,
    /// Set when the last login is answered.
    finished: Option<Instant>,
    /// Connection → (spec index, connect start).
    in_flight: HashMap<ConnId, (usize, u64)>,
    next: usize,
    answered: usize,
    logins: Logins,
}

impl LoginDriver {
    /// A driver for `specs`. With `keep_open` the logged-in connections stay
    /// in the pool; otherwise each is closed as soon as its SuccessLogin
    /// arrives.
    pub fn new(specs: Vec<LoginSpec>, concurrency: usize, keep_open: bool) -> LoginDriver {
        let count = specs.len();
        LoginDriver {
            specs,
            concurrency: concurrency.max(1),
            keep_open,
            started: None,
            finished: None,
            in_flight: HashMap::new(),
            next: 0,
            answered: 0,
            logins: Logins {
                report: FlowReport::default(),
                sessions: vec![None; count],
                connections: vec![None; count],
            },
        }
    }

    /// Opens connections up to the concurrency limit.
    pub fn start_more(&mut self, pool: &mut Pool) -> Result<(), LoadError> {
        self.started.get_or_insert_with(Instant::now);
        while self.in_flight.len() < self.concurrency && self.next < self.specs.len() {
            self.in_flight
                .insert(connect(pool)?, (self.next, now_nanos()));
            self.next += 1;
        }
        Ok(())
    }

    /// True when every login was answered.
    pub fn is_done(&self) -> bool {
        self.answered == self.specs.len()
    }

    /// Logins answered so far.
    pub fn answered(&self) -> usize {
        self.answered
    }

    /// Accounts for one pool event; false if it is not about these logins.
    pub fn on_event(&mut self, pool: &mut Pool, event: &PoolEvent, progress: &Progress) -> bool {
        let id = event.conn();
        let Some(&(index, started_nanos)) = self.in_flight.get(&id) else {
            return false;
        };
        let outcome = match event {
            PoolEvent::Opened(_) => {
                if pool.send(id, &login_message(&self.specs[index]), index as u64) {
                    return true;
                }
                Err("send failed".to_string())
            }
            PoolEvent::Frame(_, message, request_id) => {
                match answer_to(index, message, *request_id) {
                    // Offline-queue messages or presence after a login.
                    Answer::Push => return true,
                    Answer::Stray(kind) => Err(kind.to_string()),
                    Answer::Ours => match message {
                        ServerMessage::SuccessLogin(success) => Ok(success.session_id.clone()),
                        ServerMessage::FailLogin(fail) => Err(format!("{:?}", fail.error_type)),
                        ServerMessage::Error(error) => Err(error.error_type.as_str().to_string()),
                        other => Err(format!("unexpected tag {}", other.tag())),
                    },
                }
            }
            PoolEvent::Undecodable(_, _) => Err("undecodable".to_string()),
            PoolEvent::Closed(_, reason) => Err(closed_kind(reason)),
        };
        self.in_flight.remove(&id);
        self.answered += 1;
        if self.is_done() {
            self.finished = Some(Instant::now());
        }
        let closed = matches!(event, PoolEvent::Closed(..));
        let logins = &mut self.logins;
        match outcome {
            Ok(session) => {
                logins.report.ok += 1;
                logins
                    .report
                    .latency
                    .record_nanos(now_nanos() - started_nanos);
                Progress::add(&progress.logins, 1);
                logins.sessions[index] = session;
                if self.keep_open {
                    logins.connections[index] = Some(id);
                    Progress::add(&progress.connections, 1);
                } else {
                    pool.close(id);
                }
            }
            Err(kind) => {
                logins.report.fail(kind, progress);
                if !closed {
                    pool.close(id);
                }
            }
        }
        true
    }

    /// The outcome; the elapsed time runs from the first connect to the last
    /// answer (or to now, if unfinished).
    pub fn finish(mut self) -> Logins {
        let end = self.finished.unwrap_or_else(Instant::now);
        self.logins.report.elapsed_secs = self
            .started
            .map_or(0.0, |started| (end - started).as_secs_f64());
        self.logins
    }
}

/// How a frame on a connection waiting for the answer to request `index`
/// relates to that request.
enum Answer {
    /// It echoes the request's id: the answer.
    Ours,
    /// A push (no request id, not an answer): not about the request.
    Push,
    /// An answer that is not to the request, with the failure kind: the
    /// request can never be answered now.
    Stray(&'static str),
}

fn answer_to(index: usize, message: &ServerMessage, request_id: Option<u64>) -> Answer {
    let answer_kind = matches!(
        message,
        ServerMessage::SuccessRegister(_)
            | ServerMessage::FailRegister(_)
            | ServerMessage::SuccessLogin(_)
            | ServerMessage::FailLogin(_)
            | ServerMessage::Error(_)
    );
    match request_id {
        Some(id) if id == index as u64 => Answer::Ours,
        // One request is in flight per connection, so this is a server bug.
        Some(_) => Answer::Stray("reply to another request_id"),
        None if answer_kind => {
            Answer::Stray("reply without request_id (server before protocol 1.1?)")
        }
        None => Answer::Push,
    }
}

fn login_message(spec: &LoginSpec) -> ClientMessage {
    let (secret, session_id) = match &spec.credential {
        Credential::Secret(secret) => (Some(secret.clone()), None),
        Credential::Session(session) => (None, Some(session.clone())),
    };
    ClientMessage::Login(Login {
        username: spec.username.clone(),
        secret,
        session_id,
        receipts: spec.receipts,
    })
}

/// Performs each login on a new connection, at most `concurrency` at a time
/// (see [`LoginDriver`]), until all are answered or `deadline` passes.
pub fn login_connections(
    pool: &mut Pool,
    specs: &[LoginSpec],
    concurrency: usize,
    keep_open: bool,
    deadline: Instant,
    progress: &Progress,
) -> Result<Logins, LoadError> {
    let mut driver = LoginDriver::new(specs.to_vec(), concurrency, keep_open);
    let mut events = Vec::new();
    while !driver.is_done() {
        driver.start_more(pool)?;
        if Instant::now() >= deadline {
            return Err(load_error(format!(
                "logins timed out: {} of {} answered",
                driver.answered(),
                specs.len()
            )));
        }
        events.clear();
        pool.poll(SETUP_POLL, &mut events).map_err(poll_error)?;
        for event in &events {
            driver.on_event(pool, event, progress);
        }
    }
    Ok(driver.finish())
}

/// Groups close reasons into a few kinds for the failure table.
fn closed_kind(reason: &str) -> String {
    if reason.starts_with("connect") {
        "connect failed".to_string()
    } else if reason.starts_with("handshake") {
        "handshake failed".to_string()
    } else {
        "connection closed".to_string()
    }
}

fn connect(pool: &mut Pool) -> Result<ConnId, LoadError> {
    pool.connect().map_err(|error| {
        let hint = if error.raw_os_error() == Some(24) {
            " (too many open files: raise `ulimit -n`)"
        } else {
            ""
        };
        load_error(format!("connect: {error}{hint}"))
    })
}

fn poll_error(error: std::io::Error) -> LoadError {
    load_error(format!("poll: {error}"))
}

/// Password-login specs for `names` (without receipts).
pub fn password_logins(names: &[String]) -> Vec<LoginSpec> {
    names
        .iter()
        .map(|name| LoginSpec {
            username: name.clone(),
            credential: Credential::Secret(SECRET.to_string()),
            receipts: false,
        })
        .collect()
}

/// Registers `names` and opens one logged-in connection per name, with
/// `receipts` or without; fails unless every step succeeded. Returns the
/// connections in `names` order.
pub fn logged_in_users(
    pool: &mut Pool,
    names: &[String],
    receipts: bool,
    concurrency: usize,
    deadline: Instant,
    progress: &Progress,
) -> Result<Vec<ConnId>, LoadError> {
    let registered = register_users(pool, names, concurrency, deadline, progress)?;
    if registered.failed() > 0 {
        return Err(load_error(format!(
            "registration failed: {:?} (is the server rate limiting? see --no-rate-limits)",
            registered.failures
        )));
    }
    let mut specs = password_logins(names);
    for spec in &mut specs {
        spec.receipts = receipts;
    }
    let logins = login_connections(pool, &specs, concurrency, true, deadline, progress)?;
    if logins.report.failed() > 0 {
        return Err(load_error(format!(
            "login failed: {:?}",
            logins.report.failures
        )));
    }
    Ok(logins
        .connections
        .into_iter()
        .map(|id| id.expect("every login succeeded"))
        .collect())
}
