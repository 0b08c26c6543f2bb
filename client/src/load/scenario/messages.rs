//! `messages`: pairs of logged-in users exchanging 1:1 messages, closed loop
//! (a window of unacknowledged messages per sender) or at a fixed aggregate
//! rate, for a fixed time; then a grace period for the last deliveries.
//! By default every connection logs in with receipts (protocol 1.1) and
//! confirms what it receives once per read batch; `receipts: false` measures
//! the version-1 path.
//!
//! With `threads > 1` the pairs are split over independent shards, each with
//! its own `Poll`; tallies are merged at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde::Serialize;

use super::{secs_to_nanos, Common};
use crate::load::exchange::{Exchange, Tally, TallySummary};
use crate::load::pool::{Pool, READ_BUFFER_BUSY_BYTES};
use crate::load::progress::{Printer, Progress};
use crate::load::report::{count, rate, Table};
use crate::load::setup::logged_in_users;
use crate::load::traffic::Traffic;
use crate::load::{load_error, now_nanos, LoadError};

/// How senders pace themselves.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Closed loop: each sender keeps this many messages unacknowledged.
    Window(usize),
    /// Open loop: this many messages per second in total, round-robin.
    Rate(f64),
}

impl Pace {
    /// `window` or `rate`, as results name it.
    pub fn mode(&self) -> &'static str {
        match self {
            Pace::Window(_) => "window",
            Pace::Rate(_) => "rate",
        }
    }

    /// The window, in closed-loop mode.
    pub fn window(&self) -> Option<usize> {
        match *self {
            Pace::Window(window) => Some(window),
            Pace::Rate(_) => None,
        }
    }

    /// This pace for a shard with `part` of `whole` senders: a rate is
    /// split among shards, a window is each sender's own.
    pub fn share(self, part: usize, whole: usize) -> Pace {
        match self {
            Pace::Rate(total) => Pace::Rate(total * part as f64 / whole as f64),
            window => window,
        }
    }

    /// The total messages per second, in open-loop mode.
    pub fn target_rate(&self) -> Option<f64> {
        match *self {
            Pace::Rate(total) => Some(total),
            Pace::Window(_) => None,
        }
    }
}

/// Waits for every shard of a scenario; a shard that panicked is an error.
pub fn join_shards<T>(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<T, LoadError>>>,
) -> Vec<Result<T, LoadError>> {
    handles
        .into_iter()
        .map(|handle| {
            handle
                .join()
                .unwrap_or_else(|_| Err(load_error("shard panicked")))
        })
        .collect()
}

/// How a run sent, as every sending scenario reports it.
#[derive(Debug, Serialize)]
pub struct Sending {
    /// `"window"` or `"rate"`.
    pub mode: &'static str,
    /// Closed-loop window, if any.
    pub window: Option<usize>,
    /// Target rate, if any.
    pub target_rate: Option<f64>,
    /// Seconds of sending.
    pub duration_secs: f64,
    /// Shards.
    pub threads: usize,
    /// Connections logged in with receipts and confirmed with `Received`.
    pub receipts: bool,
    /// How late (ms) the most delayed send was against the rate schedule: a
    /// large value means the load generator itself could not keep up.
    pub max_send_lag_ms: f64,
}

impl Sending {
    /// What a run at `pace` for `duration_secs` on `threads` shards did.
    pub fn new(
        pace: Pace,
        duration_secs: f64,
        threads: usize,
        receipts: bool,
        lag_ms: f64,
    ) -> Self {
        Sending {
            mode: pace.mode(),
            window: pace.window(),
            target_rate: pace.target_rate(),
            duration_secs,
            threads,
            receipts,
            max_send_lag_ms: lag_ms,
        }
    }

    /// "closed loop, window 16, 10.0 s, 2 thread(s)" for a table's title.
    pub fn describe(&self) -> String {
        let pace = match (self.window, self.target_rate) {
            (Some(window), _) => format!("closed loop, window {window}"),
            (_, Some(target)) => format!("rate {}", rate(target)),
            _ => String::new(),
        };
        format!(
            "{pace}, {:.1} s, {} thread(s)",
            self.duration_secs, self.threads
        )
    }

    /// The send-lag row, in open-loop mode (where it means something).
    pub fn lag_row(&self, table: &mut Table) {
        if self.target_rate.is_some() {
            table.row("max send lag", format!("{:.3} ms", self.max_send_lag_ms));
        }
    }
}

/// The `messages` scenario's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Users (rounded up to an even number).
    pub users: usize,
    /// Pacing.
    pub pace: Pace,
    /// Seconds of sending.
    pub duration_secs: f64,
    /// Seconds to wait after sending for the last acks and deliveries.
    pub grace_secs: f64,
    /// Shards, each a thread with its own `Poll`.
    pub threads: usize,
    /// Minimum content length of each message.
    pub content_bytes: usize,
    /// Log in with receipts and confirm with `Received` (protocol 1.1).
    pub receipts: bool,
}

/// The machine-readable result.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// `"messages"`.
    pub scenario: &'static str,
    /// The run id in usernames.
    pub run_id: String,
    /// Users exchanging messages.
    pub users: usize,
    /// Over TLS (`wss://`).
    pub tls: bool,
    /// How it sent.
    #[serde(flatten)]
    pub sending: Sending,
    /// Counts and latency.
    #[serde(flatten)]
    pub tally: TallySummary,
    /// No message lost or left unanswered.
    pub passed: bool,
}

impl Outcome {
    /// The human table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "messages: {} users, {}, run {}",
            self.users,
            self.sending.describe(),
            self.run_id
        ));
        let t = &self.tally;
        table
            .row("sent", count(t.sent))
            .row(
                "acked",
                format!("{:<14} {}", count(t.acked), rate(t.acked_per_sec)),
            )
            .row(
                "delivered",
                format!("{:<14} {}", count(t.delivered), rate(t.delivered_per_sec)),
            )
            .row(
                "errors",
                format!("{} {:?}", count(t.errors), t.errors_by_kind),
            )
            .row("unanswered", count(t.unanswered))
            .row("lost", count(t.lost));
        self.sending.lag_row(&mut table);
        table.row("receipts", receipts_row(self.sending.receipts, t));
        table
            .latency_header()
            .latency("end-to-end", &t.end_to_end_latency)
            .latency("ack", &t.ack_latency);
        if self.sending.receipts {
            table.latency("receipt", &t.receipt_latency);
        }
        table
    }
}

/// The table's receipts line (a line of its own, so the lines before it
/// keep their format).
fn receipts_row(on: bool, t: &TallySummary) -> String {
    if !on {
        return format!(
            "off (--no-receipts); {} Delivered",
            count(t.delivered_receipts)
        );
    }
    format!(
        "{:<14} Delivered covering {} of {} acked ({} never); {} Received sent",
        count(t.delivered_receipts),
        count(t.receipted),
        count(t.acked),
        count(t.unreceipted),
        count(t.received_sent)
    )
}

/// Runs the scenario.
pub fn run(common: &Common, config: &Config) -> Result<Outcome, LoadError> {
    let users = config.users.max(2).div_ceil(2) * 2;
    let pairs = users / 2;
    let threads = config.threads.clamp(1, pairs);
    let progress = Arc::new(Progress::default());
    let _printer = Printer::start("messages", progress.clone(), common.progress_secs);
    let barrier = Barrier::new(threads);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<ShardOutcome, LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|shard| {
                // Pairs split as evenly as possible; a pair never spans shards.
                let first = pairs * shard / threads * 2;
                let last = pairs * (shard + 1) / threads * 2;
                let names = common.names('l', first..last);
                let pace = config.pace.share(last - first, users);
                let shard = Shard {
                    common,
                    config,
                    pace,
                    names,
                    barrier: &barrier,
                    failed: &failed,
                    progress: &progress,
                };
                scope.spawn(move || shard.run())
            })
            .collect();
        join_shards(handles)
    });
    let mut tally = Tally::default();
    let mut max_send_lag_ms: f64 = 0.0;
    for result in results {
        let shard = result?;
        tally.merge(&shard.tally);
        max_send_lag_ms = max_send_lag_ms.max(shard.max_send_lag_ms);
    }
    let summary = tally.summary(config.duration_secs);
    Ok(Outcome {
        scenario: "messages",
        run_id: common.run_id.clone(),
        users,
        tls: crate::load::conn::tls_in_use(),
        sending: Sending::new(
            config.pace,
            config.duration_secs,
            threads,
            config.receipts,
            max_send_lag_ms,
        ),
        passed: summary.lost == 0 && summary.unanswered == 0,
        tally: summary,
    })
}

struct ShardOutcome {
    tally: Tally,
    max_send_lag_ms: f64,
}

/// One thread's share of the pairs.
struct Shard<'a> {
    common: &'a Common,
    config: &'a Config,
    pace: Pace,
    names: Vec<String>,
    barrier: &'a Barrier,
    failed: &'a AtomicBool,
    progress: &'a Progress,
}

impl Shard<'_> {
    fn run(self) -> Result<ShardOutcome, LoadError> {
        let pool = Pool::new(&self.common.addrs, READ_BUFFER_BUSY_BYTES)
            .map_err(|error| load_error(format!("poll: {error}")));
        let setup = pool.and_then(|mut pool| {
            let deadline = self.common.setup_deadline();
            let conns = logged_in_users(
                &mut pool,
                &self.names,
                self.config.receipts,
                self.common.setup_concurrency,
                deadline,
                self.progress,
            )?;
            Ok((pool, conns))
        });
        let (mut pool, conns) = meet_after_setup(setup, self.barrier, self.failed)?;
        let users = self.names.iter().cloned().zip(conns).collect();
        let mut exchange = Exchange::new(users, self.config.content_bytes, self.config.receipts);
        let phases = (self.pace, self.config.duration_secs, self.config.grace_secs);
        let max_send_lag_ms = send_then_drain(&mut pool, &mut exchange, phases, self.progress)?;
        Ok(ShardOutcome {
            tally: exchange.finish(),
            max_send_lag_ms,
        })
    }
}

/// Every shard reaches the barrier after its setup, so one that failed
/// cannot strand the others; then all of them stop.
pub fn meet_after_setup<T>(
    setup: Result<T, LoadError>,
    barrier: &Barrier,
    failed: &AtomicBool,
) -> Result<T, LoadError> {
    if setup.is_err() {
        failed.store(true, Ordering::SeqCst);
    }
    barrier.wait();
    let ready = setup?;
    if failed.load(Ordering::SeqCst) {
        return Err(load_error("another shard failed to set up"));
    }
    Ok(ready)
}

/// The measured phase then the drain: `(pace, duration_secs, grace_secs)`;
/// returns the largest send lag (rate mode), in milliseconds.
pub fn send_then_drain(
    pool: &mut Pool,
    traffic: &mut impl Traffic,
    (pace, duration_secs, grace_secs): (Pace, f64, f64),
    progress: &Progress,
) -> Result<f64, LoadError> {
    let max_send_lag_ms = send_for_duration(pool, traffic, pace, duration_secs, progress)?;
    drain(pool, traffic, grace_secs, progress)?;
    Ok(max_send_lag_ms)
}

/// The measured phase: sends at `pace` for `duration_secs`, accounting for
/// every event; returns the largest send lag (rate mode), in milliseconds.
pub fn send_for_duration(
    pool: &mut Pool,
    traffic: &mut impl Traffic,
    pace: Pace,
    duration_secs: f64,
    progress: &Progress,
) -> Result<f64, LoadError> {
    let start = now_nanos();
    let end = start + secs_to_nanos(duration_secs);
    traffic.set_window(start, end);
    let mut events = Vec::new();
    let mut max_lag_nanos = 0;
    loop {
        let now = now_nanos();
        if now >= end {
            break;
        }
        let timeout = match pace {
            Pace::Window(window) => {
                traffic.fill_windows(pool, window, now);
                Duration::from_nanos((end - now).min(10_000_000))
            }
            Pace::Rate(per_sec) => {
                let due = ((now - start) as f64 * per_sec / 1e9) as u64;
                if due > traffic.sent() {
                    let scheduled = start + (traffic.sent() as f64 * 1e9 / per_sec) as u64;
                    max_lag_nanos = max_lag_nanos.max(now.saturating_sub(scheduled));
                    traffic.send_due(pool, due, now);
                }
                // epoll waits in whole milliseconds; 1 ms is the finest
                // pacing that does not spin a core.
                Duration::from_millis(1)
            }
        };
        events.clear();
        pool.poll(timeout, &mut events)
            .map_err(|error| load_error(format!("poll: {error}")))?;
        let now = now_nanos();
        for event in &events {
            traffic.on_event(event, now, progress);
        }
        traffic.after_batch(pool);
    }
    Ok(max_lag_nanos as f64 / 1e6)
}

/// After sending stops: waits up to `grace_secs` for every in-flight message
/// to be acked and delivered, and (receipts on) covered by a `Delivered`.
pub fn drain(
    pool: &mut Pool,
    traffic: &mut impl Traffic,
    grace_secs: f64,
    progress: &Progress,
) -> Result<(), LoadError> {
    let deadline = now_nanos() + secs_to_nanos(grace_secs);
    let mut events = Vec::new();
    while traffic.outstanding() > 0 && now_nanos() < deadline {
        events.clear();
        pool.poll(Duration::from_millis(10), &mut events)
            .map_err(|error| load_error(format!("poll: {error}")))?;
        let now = now_nanos();
        for event in &events {
            traffic.on_event(event, now, progress);
        }
        traffic.after_batch(pool);
    }
    Ok(())
}
