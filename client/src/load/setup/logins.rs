//! Opening logged-in connections: password logins and session resumes,
//! each request's id the index of its spec.

use std::collections::HashMap;
use std::time::Instant;

use protocol::client::Login;
use protocol::{ClientMessage, ServerMessage};

use super::super::pool::{ConnId, Pool, PoolEvent};
use super::super::progress::Progress;
use super::super::{load_error, now_nanos, LoadError};
use super::{
    answer_to, closed_kind, connect, poll_error, register_users, Answer, FlowReport, SECRET,
    SETUP_POLL,
};

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
