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

use protocol::client::Register;
use protocol::{ClientMessage, ServerMessage};
use serde::Serialize;

use super::pool::{ConnId, Pool, PoolEvent};
use super::progress::Progress;
use super::stats::{Latency, LatencySummary};
use super::{load_error, now_nanos, LoadError};

mod logins;
pub use logins::*;

/// The password of every load-test user.
pub const SECRET: &str = "load-test-secret";

/// How long one `poll` waits during setup; short so deadlines are honoured.
pub(super) const SETUP_POLL: Duration = Duration::from_millis(20);

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

/// How a frame on a connection waiting for the answer to request `index`
/// relates to that request.
pub(super) enum Answer {
    /// It echoes the request's id: the answer.
    Ours,
    /// A push (no request id, not an answer): not about the request.
    Push,
    /// An answer that is not to the request, with the failure kind: the
    /// request can never be answered now.
    Stray(&'static str),
}

pub(super) fn answer_to(index: usize, message: &ServerMessage, request_id: Option<u64>) -> Answer {
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

/// Groups close reasons into a few kinds for the failure table.
pub(super) fn closed_kind(reason: &str) -> String {
    if reason.starts_with("connect") {
        "connect failed".to_string()
    } else if reason.starts_with("handshake") {
        "handshake failed".to_string()
    } else {
        "connection closed".to_string()
    }
}

/// Opens one more connection; running out of files says how to fix it.
pub(super) fn connect(pool: &mut Pool) -> Result<ConnId, LoadError> {
    pool.connect().map_err(|error| {
        let hint = if error.raw_os_error() == Some(24) {
            " (too many open files: raise `ulimit -n`)"
        } else {
            ""
        };
        load_error(format!("connect: {error}{hint}"))
    })
}

/// A failed `poll` as the flow's error.
pub(super) fn poll_error(error: std::io::Error) -> LoadError {
    load_error(format!("poll: {error}"))
}
