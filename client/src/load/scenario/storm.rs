//! `storm`: a steady message stream at a fixed rate, and part-way through a
//! burst of password logins on new connections. Message latency is reported
//! for messages sent before, during and after the burst: if the server hashes
//! passwords on its event loop, the "during" latency shows the stall.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::messages::drain;
use super::{secs_to_nanos, Common};
use crate::load::exchange::{Exchange, TallySummary};
use crate::load::pool::{Pool, READ_BUFFER_BUSY_BYTES};
use crate::load::progress::{Printer, Progress};
use crate::load::report::{count, rate, Table};
use crate::load::setup::{
    logged_in_users, password_logins, register_users, FlowSummary, LoginDriver,
};
use crate::load::stats::LatencySummary;
use crate::load::traffic::Traffic;
use crate::load::{load_error, now_nanos, LoadError};

/// The `storm` scenario's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Users in the message stream (rounded up to even).
    pub users: usize,
    /// Messages per second in the stream.
    pub rate: f64,
    /// Seconds of streaming.
    pub duration_secs: f64,
    /// Seconds into the stream when the burst starts.
    pub burst_at_secs: f64,
    /// Password logins in the burst.
    pub burst_logins: usize,
    /// Distinct burst users (logins cycle over them).
    pub burst_users: usize,
    /// Burst logins in flight.
    pub burst_concurrency: usize,
    /// Seconds to wait for the last deliveries.
    pub grace_secs: f64,
}

/// The machine-readable result.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// `"storm"`.
    pub scenario: &'static str,
    /// The run id in usernames.
    pub run_id: String,
    /// Users in the stream.
    pub users: usize,
    /// Stream rate.
    pub target_rate: f64,
    /// Seconds of streaming.
    pub duration_secs: f64,
    /// The burst's logins.
    pub burst: FlowSummary,
    /// Every burst login was answered before the stream ended.
    pub burst_completed: bool,
    /// Seconds from stream start to burst start and to burst end.
    pub burst_window_secs: (f64, f64),
    /// End-to-end latency of messages sent before the burst.
    pub latency_before: LatencySummary,
    /// … sent while the burst ran.
    pub latency_during: LatencySummary,
    /// … sent after it.
    pub latency_after: LatencySummary,
    /// p99 during / p99 before (target ≤ 2).
    pub p99_ratio: f64,
    /// The whole stream.
    #[serde(flatten)]
    pub tally: TallySummary,
    /// No message lost or unanswered, and the burst finished.
    pub passed: bool,
}

impl Outcome {
    /// The human table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "storm: {} users at {}, {:.0} s; {} password logins from {:.1} s, run {}",
            self.users,
            rate(self.target_rate),
            self.duration_secs,
            self.burst.ok + self.burst.failed,
            self.burst_window_secs.0,
            self.run_id
        ));
        let t = &self.tally;
        table
            .row(
                "burst logins",
                format!(
                    "{:<10} {:<12} failed {} in {:.2} s{}",
                    count(self.burst.ok),
                    rate(self.burst.per_sec),
                    count(self.burst.failed),
                    self.burst_window_secs.1 - self.burst_window_secs.0,
                    if self.burst_completed {
                        ""
                    } else {
                        " (INCOMPLETE)"
                    }
                ),
            )
            .row(
                "messages acked",
                format!("{:<10} {}", count(t.acked), rate(t.acked_per_sec)),
            )
            .row(
                "errors",
                format!("{} {:?}", count(t.errors), t.errors_by_kind),
            )
            .row("unanswered", count(t.unanswered))
            .row("lost", count(t.lost))
            .row("p99 during / before", format!("{:.2}", self.p99_ratio))
            .latency_header()
            .latency("before burst", &self.latency_before)
            .latency("during burst", &self.latency_during)
            .latency("after burst", &self.latency_after)
            .latency("login (burst)", &self.burst.latency);
        table
    }
}

/// Runs the scenario.
pub fn run(common: &Common, config: &Config) -> Result<Outcome, LoadError> {
    let progress = Arc::new(Progress::default());
    let _printer = Printer::start("storm", progress.clone(), common.progress_secs);
    let mut pool = Pool::new(&common.addrs, READ_BUFFER_BUSY_BYTES)
        .map_err(|error| load_error(format!("poll: {error}")))?;
    let users = config.users.max(2).div_ceil(2) * 2;
    let names = common.names('l', 0..users);
    let burst_names = common.names('b', 0..config.burst_users.max(1));
    let registered = register_users(
        &mut pool,
        &burst_names,
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
    // The stream measures the login burst's effect; it runs without
    // receipts, like a version-1 client.
    let conns = logged_in_users(
        &mut pool,
        &names,
        false,
        common.setup_concurrency,
        common.setup_deadline(),
        &progress,
    )?;
    let mut exchange = Exchange::new(names.into_iter().zip(conns).collect(), 0, false);
    let burst_specs = (0..config.burst_logins)
        .map(|i| password_logins(&burst_names[i % burst_names.len()..][..1]).remove(0))
        .collect();
    let mut burst = LoginDriver::new(burst_specs, config.burst_concurrency, false);

    let start = now_nanos();
    let end = start + secs_to_nanos(config.duration_secs);
    let burst_start = start + secs_to_nanos(config.burst_at_secs);
    let mut burst_end = None;
    exchange.set_window(start, end);
    let mut events = Vec::new();
    loop {
        let now = now_nanos();
        if now >= end {
            break;
        }
        let due = ((now - start) as f64 * config.rate / 1e9) as u64;
        exchange.send_due(&mut pool, due, now);
        if now >= burst_start && burst_end.is_none() {
            if exchange.phase_count() == 0 {
                exchange.mark_phase(now);
            }
            burst.start_more(&mut pool)?;
            if burst.is_done() {
                burst_end = Some(now);
                exchange.mark_phase(now);
            }
        }
        events.clear();
        pool.poll(Duration::from_millis(1), &mut events)
            .map_err(|error| load_error(format!("poll: {error}")))?;
        let now = now_nanos();
        for event in &events {
            if !exchange.on_event(event, now, &progress) {
                burst.on_event(&mut pool, event, &progress);
            }
        }
        exchange.after_batch(&mut pool);
    }
    drain(&mut pool, &mut exchange, config.grace_secs, &progress)?;
    let burst_completed = burst.is_done();
    let burst_outcome = burst.finish();
    let tally = exchange.finish();
    let phase = |i: usize| {
        tally
            .end_to_end
            .get(i)
            .map(|l| l.summary())
            .unwrap_or_default()
    };
    let (before, during, after) = (phase(0), phase(1), phase(2));
    let secs = |nanos: u64| (nanos.saturating_sub(start)) as f64 / 1e9;
    let summary = tally.summary(config.duration_secs);
    Ok(Outcome {
        scenario: "storm",
        run_id: common.run_id.clone(),
        users,
        target_rate: config.rate,
        duration_secs: config.duration_secs,
        burst: burst_outcome.report.summary(),
        burst_completed,
        burst_window_secs: (secs(burst_start), secs(burst_end.unwrap_or(end))),
        p99_ratio: if before.p99_ms > 0.0 {
            during.p99_ms / before.p99_ms
        } else {
            0.0
        },
        latency_before: before,
        latency_during: during,
        latency_after: after,
        passed: summary.lost == 0 && summary.unanswered == 0 && burst_completed,
        tally: summary,
    })
}
