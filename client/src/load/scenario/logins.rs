//! `logins`: register U users, log each in by password on a new connection,
//! then resume sessions on new connections — each phase with C requests in
//! flight. Every login connection is closed as soon as it is logged in.

use std::sync::Arc;

use serde::Serialize;

use super::Common;
use crate::load::pool::{Pool, READ_BUFFER_IDLE_BYTES};
use crate::load::progress::{Printer, Progress};
use crate::load::report::{count, rate, Table};
use crate::load::setup::{
    login_connections, password_logins, register_users, Credential, FlowSummary, LoginSpec,
};
use crate::load::{load_error, LoadError};

/// The `logins` scenario's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Users to register and log in.
    pub users: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Session resumes (cycling over the sessions of the password logins).
    pub resumes: usize,
}

/// The machine-readable result.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// `"logins"`.
    pub scenario: &'static str,
    /// The run id in usernames.
    pub run_id: String,
    /// Users.
    pub users: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Register requests (pipelined one at a time per connection).
    pub registrations: FlowSummary,
    /// Password logins, each on a new connection (latency includes connect
    /// and handshake).
    pub password_logins: FlowSummary,
    /// Session resumes, each on a new connection.
    pub resume_logins: FlowSummary,
    /// Every request succeeded.
    pub passed: bool,
}

impl Outcome {
    /// The human table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "logins: {} users, concurrency {}, run {}",
            self.users, self.concurrency, self.run_id
        ));
        for (label, flow) in [
            ("registrations", &self.registrations),
            ("password logins", &self.password_logins),
            ("session resumes", &self.resume_logins),
        ] {
            table.row(
                label,
                format!(
                    "{:<10} {:<12} failed {} {:?}",
                    count(flow.ok),
                    rate(flow.per_sec),
                    count(flow.failed),
                    flow.failures
                ),
            );
        }
        table
            .latency_header()
            .latency("register", &self.registrations.latency)
            .latency("password login", &self.password_logins.latency)
            .latency("session resume", &self.resume_logins.latency);
        table
    }
}

/// Runs the scenario.
pub fn run(common: &Common, config: &Config) -> Result<Outcome, LoadError> {
    let progress = Arc::new(Progress::default());
    let _printer = Printer::start("logins", progress.clone(), common.progress_secs);
    let mut pool = Pool::new(&common.addrs, READ_BUFFER_IDLE_BYTES)
        .map_err(|error| load_error(format!("poll: {error}")))?;
    let names = common.names('l', 0..config.users);
    let concurrency = config.concurrency.max(1);
    let registrations = register_users(
        &mut pool,
        &names,
        concurrency,
        common.setup_deadline(),
        &progress,
    )?;
    let password = login_connections(
        &mut pool,
        &password_logins(&names),
        concurrency,
        false,
        common.setup_deadline(),
        &progress,
    )?;
    let sessions: Vec<(String, String)> = names
        .iter()
        .zip(&password.sessions)
        .filter_map(|(name, session)| Some((name.clone(), session.clone()?)))
        .collect();
    if sessions.is_empty() {
        return Err(load_error("no password login succeeded, nothing to resume"));
    }
    let resume_specs: Vec<LoginSpec> = (0..config.resumes)
        .map(|i| {
            let (username, session) = &sessions[i % sessions.len()];
            LoginSpec {
                username: username.clone(),
                credential: Credential::Session(session.clone()),
                receipts: false,
            }
        })
        .collect();
    let resumed = login_connections(
        &mut pool,
        &resume_specs,
        concurrency,
        false,
        common.setup_deadline(),
        &progress,
    )?;
    let passed = registrations.failed() == 0
        && password.report.failed() == 0
        && resumed.report.failed() == 0;
    Ok(Outcome {
        scenario: "logins",
        run_id: common.run_id.clone(),
        users: config.users,
        concurrency,
        registrations: registrations.summary(),
        password_logins: password.report.summary(),
        resume_logins: resumed.report.summary(),
        passed,
    })
}
