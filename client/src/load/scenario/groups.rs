//! `groups`: fan-out. Users are logged in and split into groups of
//! `group_size`; each group is created by its first member, and setup waits
//! until every member has its GroupInfo. Then the first `senders` members of
//! each group send group messages, closed loop (a window of unacknowledged
//! messages per sender) or at a fixed aggregate rate, for a fixed time; then a
//! grace period for the last deliveries. Each message should reach the
//! other `group_size − 1` members. By default every connection logs in with
//! receipts (protocol 1.1) and confirms what it receives once per read batch.
//!
//! With `threads > 1` the groups are split over independent shards, each with
//! its own `Poll`; a group never spans shards.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier};

use serde::Serialize;

use super::messages::{join_shards, meet_after_setup, send_then_drain, Pace, Sending};
use super::Common;
use crate::load::fanout::{GroupExchange, GroupSpec, GroupTally, GroupTallySummary};
use crate::load::pool::{Pool, READ_BUFFER_BUSY_BYTES};
use crate::load::progress::{Printer, Progress};
use crate::load::report::{count, rate, Table};
use crate::load::setup::logged_in_users;
use crate::load::stats::LatencySummary;
use crate::load::{load_error, LoadError};

mod creation;
pub use creation::{create_groups, group_name, Creation, Wanted};

/// The `groups` scenario's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Users (rounded up to a multiple of `group_size`).
    pub users: usize,
    /// Members per group, the creator included (at least 2).
    pub group_size: usize,
    /// Members of each group that send (at most `group_size`).
    pub senders: usize,
    /// Pacing: a window per sender, or an aggregate rate over all senders.
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

/// How creating the groups went.
#[derive(Clone, Debug, Serialize)]
pub struct GroupSetup {
    /// Groups created.
    pub groups: usize,
    /// Wall time from the first CreateGroup to the last member's GroupInfo
    /// (the longest shard).
    pub elapsed_secs: f64,
    /// CreateGroup → the creator's GroupInfo.
    pub create_latency: LatencySummary,
    /// CreateGroup → the last member's GroupInfo.
    pub all_members_latency: LatencySummary,
}

/// The machine-readable result.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// `"groups"`.
    pub scenario: &'static str,
    /// The run id in usernames and group names.
    pub run_id: String,
    /// Users logged in.
    pub users: usize,
    /// Members per group.
    pub group_size: usize,
    /// Groups.
    pub groups: usize,
    /// Senders per group.
    pub senders_per_group: usize,
    /// How it sent.
    #[serde(flatten)]
    pub sending: Sending,
    /// Group creation.
    pub group_setup: GroupSetup,
    /// Counts and latency; `lost` counts lost deliveries.
    #[serde(flatten)]
    pub tally: GroupTallySummary,
    /// No delivery lost and no message left unanswered.
    pub passed: bool,
}

impl Outcome {
    /// The human table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "groups: {} users in {} groups of {}, {} sender(s) each, {}, run {}",
            self.users,
            self.groups,
            self.group_size,
            self.senders_per_group,
            self.sending.describe(),
            self.run_id
        ));
        let t = &self.tally;
        let setup = &self.group_setup;
        table
            .row(
                "groups created",
                format!(
                    "{} in {:.2} s (all members informed: p99 {:.1} ms)",
                    setup.groups, setup.elapsed_secs, setup.all_members_latency.p99_ms
                ),
            )
            .row("sent", count(t.sent))
            .row(
                "acked",
                format!("{:<14} {}", count(t.acked), rate(t.acked_per_sec)),
            )
            .row(
                "deliveries",
                format!(
                    "{:<14} {}  (expected {}, {} per message)",
                    count(t.delivered),
                    rate(t.delivered_per_sec),
                    count(t.expected_deliveries),
                    self.group_size - 1
                ),
            )
            .row(
                "errors",
                format!("{} {:?}", count(t.errors), t.errors_by_kind),
            )
            .row("unanswered", count(t.unanswered))
            .row(
                "lost deliveries",
                format!("{} (in {} messages)", count(t.lost), count(t.lost_messages)),
            )
            .row("reordered", count(t.reordered));
        self.sending.lag_row(&mut table);
        let receipts = if self.sending.receipts {
            format!(
                "on: {} Received sent; {} Delivered (they cover 1:1 messages only)",
                count(t.received_sent),
                count(t.delivered_receipts)
            )
        } else {
            format!(
                "off (--no-receipts); {} Delivered",
                count(t.delivered_receipts)
            )
        };
        table.row("receipts", receipts);
        table
            .latency_header()
            .latency("end-to-end", &t.end_to_end_latency)
            .latency("whole fan-out", &t.fanout_latency)
            .latency("ack", &t.ack_latency)
            .latency("create group", &setup.create_latency);
        table
    }
}

/// Runs the scenario.
pub fn run(common: &Common, config: &Config) -> Result<Outcome, LoadError> {
    let group_size = config.group_size.max(2);
    let senders = config.senders.clamp(1, group_size);
    let groups = config.users.max(group_size).div_ceil(group_size);
    let users = groups * group_size;
    let threads = config.threads.clamp(1, groups);
    let progress = Arc::new(Progress::default());
    let _printer = Printer::start("groups", progress.clone(), common.progress_secs);
    let barrier = Barrier::new(threads);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<ShardOutcome, LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|shard| {
                let first_group = groups * shard / threads;
                let last_group = groups * (shard + 1) / threads;
                let pace = config.pace.share(last_group - first_group, groups);
                let shard = Shard {
                    common,
                    config,
                    group_size,
                    senders,
                    pace,
                    groups: first_group..last_group,
                    barrier: &barrier,
                    failed: &failed,
                    progress: &progress,
                };
                scope.spawn(move || shard.run())
            })
            .collect();
        join_shards(handles)
    });
    let mut tally = GroupTally::default();
    let mut max_send_lag_ms: f64 = 0.0;
    let mut created = Creation::default();
    for result in results {
        let shard = result?;
        tally.merge(&shard.tally);
        created.merge(&shard.created);
        max_send_lag_ms = max_send_lag_ms.max(shard.max_send_lag_ms);
    }
    let summary = tally.summary(config.duration_secs);
    Ok(Outcome {
        scenario: "groups",
        run_id: common.run_id.clone(),
        users,
        group_size,
        groups,
        senders_per_group: senders,
        sending: Sending::new(
            config.pace,
            config.duration_secs,
            threads,
            config.receipts,
            max_send_lag_ms,
        ),
        group_setup: GroupSetup {
            groups,
            elapsed_secs: created.elapsed_secs,
            create_latency: created.create.summary(),
            all_members_latency: created.all_members.summary(),
        },
        passed: summary.lost == 0 && summary.unanswered == 0,
        tally: summary,
    })
}

struct ShardOutcome {
    tally: GroupTally,
    created: Creation,
    max_send_lag_ms: f64,
}

/// One thread's share of the groups.
struct Shard<'a> {
    common: &'a Common,
    config: &'a Config,
    group_size: usize,
    senders: usize,
    pace: Pace,
    groups: std::ops::Range<usize>,
    barrier: &'a Barrier,
    failed: &'a AtomicBool,
    progress: &'a Progress,
}

impl Shard<'_> {
    fn run(self) -> Result<ShardOutcome, LoadError> {
        let setup = self.set_up();
        let (mut pool, specs, created) = meet_after_setup(setup, self.barrier, self.failed)?;
        let mut exchange = GroupExchange::new(
            specs,
            self.senders,
            self.config.content_bytes,
            self.config.receipts,
        );
        let phases = (self.pace, self.config.duration_secs, self.config.grace_secs);
        let max_send_lag_ms = send_then_drain(&mut pool, &mut exchange, phases, self.progress)?;
        Ok(ShardOutcome {
            tally: exchange.finish(),
            created,
            max_send_lag_ms,
        })
    }

    /// Logs the shard's users in and creates its groups.
    fn set_up(&self) -> Result<(Pool, Vec<GroupSpec>, Creation), LoadError> {
        let mut pool = Pool::new(&self.common.addrs, READ_BUFFER_BUSY_BYTES)
            .map_err(|error| load_error(format!("poll: {error}")))?;
        let deadline = self.common.setup_deadline();
        let size = self.group_size;
        let names = self
            .common
            .names('l', self.groups.start * size..self.groups.end * size);
        let conns = logged_in_users(
            &mut pool,
            &names,
            self.config.receipts,
            self.common.setup_concurrency,
            deadline,
            self.progress,
        )?;
        let wanted: Vec<Wanted> = self
            .groups
            .clone()
            .enumerate()
            .map(|(local, group)| Wanted {
                name: group_name(&self.common.run_id, group),
                members: (local * size..(local + 1) * size)
                    .map(|i| (names[i].clone(), conns[i]))
                    .collect(),
            })
            .collect();
        let (ids, created) =
            create_groups(&mut pool, &wanted, self.common.setup_concurrency, deadline)?;
        let specs = wanted
            .into_iter()
            .zip(ids)
            .map(|(wanted, group_id)| GroupSpec {
                group_id,
                members: wanted.members,
            })
            .collect();
        Ok((pool, specs, created))
    }
}
