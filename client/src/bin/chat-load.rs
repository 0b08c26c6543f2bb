//! `chat-load`: load scenarios against a running chat-server.
//!
//! Each scenario prints a table to stdout, progress lines to stderr, and with
//! `--json FILE` writes a machine-readable result. Exit status: 0 when the
//! scenario passed, 1 when it could not run (server absent, setup failed), 2
//! when it ran and found a failure (lost or unanswered messages, failed
//! logins).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use client::load::cpu::{self, CpuClock, CpuShare};
use client::load::report::{write_json, Table};
use client::load::scenario::{groups, idle, logins, messages, storm, Common};
use client::load::setup::random_run_id;
use client::load::summary;
use client::load::LoadError;
use serde::Serialize;

#[derive(Parser)]
#[command(name = "chat-load", about = "Load generator for chat-server")]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    scenario: Scenario,
    /// chat-load's own CPU, from the start.
    #[arg(skip = CpuClock::start())]
    cpu: CpuClock,
}

/// Where the server is and how to reach it (every scenario).
#[derive(Args)]
struct ServerArgs {
    /// The server's address; several, comma-separated (servers of one
    /// cluster), take the connections in turn.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:8765",
        value_delimiter = ','
    )]
    addr: Vec<SocketAddr>,
    /// Connect with TLS (`wss://`), trusting the system's trust store (which
    /// honours SSL_CERT_FILE and SSL_CERT_DIR) and any --ca-file.
    #[arg(long, global = true)]
    tls: bool,
    /// Connect with TLS, trusting also the certificates in this PEM file: the
    /// CA that signed the server's certificate (e.g. the ca.pem of
    /// `chat-server gen-cert`), or the server's own self-signed certificate,
    /// which is then accepted exactly as it is. Implies --tls.
    #[arg(long, global = true, value_name = "PATH")]
    ca_file: Option<PathBuf>,
}

/// How a run is named, set up and reported (every scenario).
#[derive(Args)]
struct RunArgs {
    /// Also write the result as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Id embedded in every username (default: random), e.g. `l<id>_<i>`.
    #[arg(long, global = true)]
    run_id: Option<String>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, global = true, default_value_t = 5.0)]
    progress_secs: f64,
    /// Requests in flight while registering and logging users in.
    #[arg(long, global = true, default_value_t = 64)]
    setup_concurrency: usize,
    /// Give up if registering and logging users in takes longer.
    #[arg(long, global = true, default_value_t = 300.0)]
    setup_timeout_secs: f64,
}

/// How messages are sent, shared by the 1:1 (`messages`) and group
/// (`groups`) scenarios.
#[derive(Args)]
struct TrafficArgs {
    /// Closed loop: unacknowledged messages per sender (default 16 for
    /// `messages`; 1 for `groups`, where each message is multiplied by the
    /// group size on the way out).
    #[arg(long, conflicts_with = "rate")]
    window: Option<usize>,
    /// Open loop: aggregate messages per second over all senders.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Seconds to wait afterwards for the last acks and deliveries.
    #[arg(long, default_value_t = 5.0)]
    grace_secs: f64,
    /// Threads, each driving its share of the senders on its own poll loop.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pad each message's content to at least this many bytes.
    #[arg(long, default_value_t = 0)]
    content_bytes: usize,
    /// Log in without receipts (protocol 1.1) and send no `Received`: the
    /// version-1 delivery path.
    #[arg(long)]
    no_receipts: bool,
}

impl TrafficArgs {
    /// The pace asked for: a rate, or a window (`default_window` if none).
    fn pace(&self, default_window: usize) -> messages::Pace {
        match (self.window, self.rate) {
            (_, Some(rate)) => messages::Pace::Rate(rate),
            (Some(window), None) => messages::Pace::Window(window.max(1)),
            (None, None) => messages::Pace::Window(default_window),
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Register and log in users: registrations/s, password logins/s,
    /// session resumes/s.
    Logins(LoginsArgs),
    /// Pairs of users exchanging 1:1 messages (closed loop or fixed rate).
    Messages(MessagesArgs),
    /// Groups of users sending group messages: fan-out deliveries/s, latency
    /// to each member, lost deliveries.
    Groups(GroupsArgs),
    /// Hold many logged-in connections; with --server-pid, server RSS growth.
    Idle(IdleArgs),
    /// A message stream with a burst of password logins part-way through.
    Storm(StormArgs),
    /// Print one Markdown table over JSON results, with the targets checked.
    Summary(SummaryArgs),
}

#[derive(Args)]
struct SummaryArgs {
    /// JSON result files (from --json).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct LoginsArgs {
    /// Users to register and log in.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Session resumes (default: one per user).
    #[arg(long)]
    resumes: Option<usize>,
}

#[derive(Args)]
struct MessagesArgs {
    /// Users (pairs: user 2k and 2k+1 talk to each other).
    #[arg(long, default_value_t = 100)]
    users: usize,
    #[command(flatten)]
    traffic: TrafficArgs,
}

#[derive(Args)]
struct GroupsArgs {
    /// Users (rounded up to a multiple of --group-size).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Members per group, the creator included.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Members of each group that send (default: all).
    #[arg(long)]
    senders: Option<usize>,
    #[command(flatten)]
    traffic: TrafficArgs,
}

#[derive(Args)]
struct IdleArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Distinct users (default: one per connection).
    #[arg(long)]
    users: Option<usize>,
    /// Seconds to hold the connections.
    #[arg(long, default_value_t = 10.0)]
    hold_secs: f64,
    /// Connections opening at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// The server's pid, to read its VmRSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct StormArgs {
    /// Users in the message stream.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Stream messages per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of streaming.
    #[arg(long, default_value_t = 15.0)]
    duration_secs: f64,
    /// Seconds into the stream when the burst starts.
    #[arg(long, default_value_t = 5.0)]
    burst_at_secs: f64,
    /// Password logins in the burst.
    #[arg(long, default_value_t = 100)]
    burst_logins: usize,
    /// Distinct burst users (logins cycle over them).
    #[arg(long, default_value_t = 4)]
    burst_users: usize,
    /// Burst logins in flight.
    #[arg(long, default_value_t = 32)]
    burst_concurrency: usize,
    /// Seconds to wait afterwards for the last deliveries.
    #[arg(long, default_value_t = 5.0)]
    grace_secs: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.server.tls || cli.server.ca_file.is_some() {
        if let Err(error) = client::load::conn::use_tls(cli.server.ca_file.as_deref()) {
            eprintln!("chat-load: {error}");
            return ExitCode::from(1);
        }
    }
    let run_args = &cli.run;
    let common = Common {
        addrs: cli.server.addr.clone(),
        run_id: run_args.run_id.clone().unwrap_or_else(random_run_id),
        progress_secs: run_args.progress_secs,
        setup_concurrency: run_args.setup_concurrency.max(1),
        setup_timeout_secs: run_args.setup_timeout_secs,
    };
    match run(&cli, &common) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chat-load: {error}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli, common: &Common) -> Result<ExitCode, LoadError> {
    match &cli.scenario {
        Scenario::Summary(args) => {
            let rows = summary::summarise_all(&args.files)?;
            summary::print(&rows);
            let failed = rows.iter().any(|row| row.met == "FAILED");
            Ok(if failed {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Scenario::Logins(args) => {
            let config = logins::Config {
                users: args.users.max(1),
                concurrency: args.concurrency,
                resumes: args.resumes.unwrap_or(args.users),
            };
            let outcome = logins::run(common, &config)?;
            finish(
                cli,
                &outcome,
                outcome.table(),
                outcome.passed,
                "failed logins",
            )
        }
        Scenario::Messages(args) => {
            let traffic = &args.traffic;
            let config = messages::Config {
                users: args.users,
                pace: traffic.pace(16),
                duration_secs: traffic.duration_secs,
                grace_secs: traffic.grace_secs,
                threads: traffic.threads,
                content_bytes: traffic.content_bytes,
                receipts: !traffic.no_receipts,
            };
            let outcome = messages::run(common, &config)?;
            let failure = format!(
                "{} LOST and {} UNANSWERED messages",
                outcome.tally.lost, outcome.tally.unanswered
            );
            finish(cli, &outcome, outcome.table(), outcome.passed, &failure)
        }
        Scenario::Groups(args) => {
            let traffic = &args.traffic;
            let config = groups::Config {
                users: args.users,
                group_size: args.group_size,
                senders: args.senders.unwrap_or(args.group_size),
                pace: traffic.pace(1),
                duration_secs: traffic.duration_secs,
                grace_secs: traffic.grace_secs,
                threads: traffic.threads,
                content_bytes: traffic.content_bytes,
                receipts: !traffic.no_receipts,
            };
            let outcome = groups::run(common, &config)?;
            let failure = format!(
                "{} LOST DELIVERIES (in {} messages) and {} UNANSWERED messages",
                outcome.tally.lost, outcome.tally.lost_messages, outcome.tally.unanswered
            );
            finish(cli, &outcome, outcome.table(), outcome.passed, &failure)
        }
        Scenario::Idle(args) => {
            let config = idle::Config {
                connections: args.connections,
                users: args.users.unwrap_or(args.connections),
                hold_secs: args.hold_secs,
                concurrency: args.concurrency,
                server_pid: args.server_pid,
            };
            let outcome = idle::run(common, &config)?;
            finish(
                cli,
                &outcome,
                outcome.table(),
                outcome.passed,
                "connections failed or dropped",
            )
        }
        Scenario::Storm(args) => {
            let config = storm::Config {
                users: args.users,
                rate: args.rate,
                duration_secs: args.duration_secs,
                burst_at_secs: args.burst_at_secs,
                burst_logins: args.burst_logins,
                burst_users: args.burst_users,
                burst_concurrency: args.burst_concurrency,
                grace_secs: args.grace_secs,
            };
            let outcome = storm::run(common, &config)?;
            let failure = format!(
                "{} LOST and {} UNANSWERED messages, burst completed: {}",
                outcome.tally.lost, outcome.tally.unanswered, outcome.burst_completed
            );
            finish(cli, &outcome, outcome.table(), outcome.passed, &failure)
        }
    }
}

/// Prints the table, writes the JSON, and turns the verdict into the exit code.
/// A result as written to `--json`: the scenario's own fields and
/// chat-load's CPU.
#[derive(Serialize)]
struct WithLoadCpu<'a, T: Serialize> {
    #[serde(flatten)]
    outcome: &'a T,
    load_cpu: Option<CpuShare>,
}

fn finish(
    cli: &Cli,
    outcome: &impl Serialize,
    mut table: Table,
    passed: bool,
    failure: &str,
) -> Result<ExitCode, LoadError> {
    let load_cpu = cli.cpu.share();
    if let Some(cpu) = &load_cpu {
        table.row("chat-load CPU", cpu.describe());
    }
    table.print();
    if let Some(cpu) = load_cpu.as_ref().filter(|cpu| cpu.maybe_the_bottleneck()) {
        eprintln!(
            "chat-load: a thread of chat-load itself was busy {:.0}% of the run (over {:.0}%): \
             it may have limited the rate; run again with more --threads",
            cpu.busiest_thread_share * 100.0,
            cpu::BUSY_THREAD_SHARE * 100.0
        );
    }
    if let Some(path) = &cli.run.json {
        write_json(path, &WithLoadCpu { outcome, load_cpu })?;
    }
    if passed {
        Ok(ExitCode::SUCCESS)
    } else {
        // Loud on purpose: a failed run must not scroll by unnoticed.
        eprintln!("\n!!!!!!!! chat-load: FAILED: {failure} !!!!!!!!\n");
        Ok(ExitCode::from(2))
    }
}
