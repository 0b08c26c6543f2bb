//! `idle`: N logged-in connections held open for S seconds. With the server's
//! pid, the server's resident memory before and after, and the growth per
//! connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Common;
use crate::load::pool::{Pool, PoolEvent, READ_BUFFER_IDLE_BYTES};
use crate::load::progress::{Printer, Progress};
use crate::load::report::{count, rate, Table};
use crate::load::setup::{login_connections, password_logins, register_users, FlowSummary};
use crate::load::{load_error, LoadError};

/// The `idle` scenario's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Connections to hold.
    pub connections: usize,
    /// Distinct users; connections cycle over them (a user may be logged in on
    /// many connections).
    pub users: usize,
    /// Seconds to hold them.
    pub hold_secs: f64,
    /// Connections opening at once.
    pub concurrency: usize,
    /// The server's pid, for VmRSS from /proc.
    pub server_pid: Option<u32>,
}

/// The machine-readable result.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// `"idle"`.
    pub scenario: &'static str,
    /// The run id in usernames.
    pub run_id: String,
    /// Connections asked for.
    pub connections: usize,
    /// Distinct users.
    pub users: usize,
    /// Opening and logging in the connections.
    pub logins: FlowSummary,
    /// Seconds held.
    pub hold_secs: f64,
    /// Connections the server closed while they were held.
    pub closed_while_held: u64,
    /// Server RSS (KiB) after registering users, before opening connections.
    pub rss_before_kib: Option<u64>,
    /// Server RSS (KiB) once every connection is logged in.
    pub rss_open_kib: Option<u64>,
    /// Server RSS (KiB) at the end of the hold.
    pub rss_after_kib: Option<u64>,
    /// (rss_after − rss_before) / connections logged in.
    pub bytes_per_connection: Option<f64>,
    /// Every connection opened, logged in and stayed.
    pub passed: bool,
}

impl Outcome {
    /// The human table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "idle: {} connections ({} users), held {:.0} s, run {}",
            self.connections, self.users, self.hold_secs, self.run_id
        ));
        let kib = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{} KiB", count(v)));
        table
            .row(
                "logged in",
                format!(
                    "{:<10} {:<12} failed {} {:?}",
                    count(self.logins.ok),
                    rate(self.logins.per_sec),
                    count(self.logins.failed),
                    self.logins.failures
                ),
            )
            .row("closed while held", count(self.closed_while_held))
            .row("server RSS before", kib(self.rss_before_kib))
            .row("server RSS open", kib(self.rss_open_kib))
            .row("server RSS after hold", kib(self.rss_after_kib))
            .row(
                "bytes per connection",
                self.bytes_per_connection.map_or("-".to_string(), |b| {
                    format!("{b:.0} ({:.2} KiB)", b / 1024.0)
                }),
            )
            .latency_header()
            .latency("connect+login", &self.logins.latency);
        table
    }
}

/// The VmRSS line of /proc/PID/status, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the scenario.
pub fn run(common: &Common, config: &Config) -> Result<Outcome, LoadError> {
    let progress = Arc::new(Progress::default());
    let _printer = Printer::start("idle", progress.clone(), common.progress_secs);
    let mut pool = Pool::new(&common.addrs, READ_BUFFER_IDLE_BYTES)
        .map_err(|error| load_error(format!("poll: {error}")))?;
    let users = config.users.clamp(1, config.connections.max(1));
    let names = common.names('l', 0..users);
    let registered = register_users(
        &mut pool,
        &names,
        common.setup_concurrency,
        common.setup_deadline(),
        &progress,
    )?;
    if registered.failed() > 0 {
        return Err(load_error(format!(
            "registration failed: {:?}",
            registered.failures
        )));
    }
    let rss = |pid: Option<u32>| pid.and_then(rss_kib);
    // Let the registration connections' teardown settle before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let rss_before_kib = rss(config.server_pid);
    let specs: Vec<_> = (0..config.connections)
        .map(|i| password_logins(&names[i % users..i % users + 1]).remove(0))
        .collect();
    let logins = login_connections(
        &mut pool,
        &specs,
        config.concurrency,
        true,
        common.setup_deadline(),
        &progress,
    )?;
    let rss_open_kib = rss(config.server_pid);
    let closed_while_held = hold(&mut pool, config.hold_secs, &progress)?;
    let rss_after_kib = rss(config.server_pid);
    let opened = logins.report.ok;
    let bytes_per_connection = match (rss_before_kib, rss_after_kib) {
        (Some(before), Some(after)) if opened > 0 => {
            Some((after as f64 - before as f64) * 1024.0 / opened as f64)
        }
        _ => None,
    };
    Ok(Outcome {
        scenario: "idle",
        run_id: common.run_id.clone(),
        connections: config.connections,
        users,
        passed: logins.report.failed() == 0 && closed_while_held == 0,
        logins: logins.report.summary(),
        hold_secs: config.hold_secs,
        closed_while_held,
        rss_before_kib,
        rss_open_kib,
        rss_after_kib,
        bytes_per_connection,
    })
}

/// Keeps the connections serviced (pings answered) for `hold_secs`; returns
/// how many the server closed meanwhile.
fn hold(pool: &mut Pool, hold_secs: f64, progress: &Progress) -> Result<u64, LoadError> {
    let end = Instant::now() + Duration::from_secs_f64(hold_secs);
    let mut closed = 0;
    let mut events = Vec::new();
    while Instant::now() < end {
        events.clear();
        let left = end.saturating_duration_since(Instant::now());
        pool.poll(left.min(Duration::from_millis(200)), &mut events)
            .map_err(|error| load_error(format!("poll: {error}")))?;
        for event in &events {
            if let PoolEvent::Closed(_, _) = event {
                closed += 1;
                Progress::sub(&progress.connections, 1);
            }
        }
    }
    Ok(closed)
}
