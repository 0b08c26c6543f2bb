//! The `chat-server` binary: parse the command line, set up logging, run —
//! or run one of the JSON-file subcommands and exit.

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use log::LevelFilter;
use simplelog::{CombinedLogger, ConfigBuilder, WriteLogger};

use server::config::{Cli, Config, JsonCommand};
use server::event_loop::Server;
use server::storage::json_files::{self, JsonDatabase};

fn main() -> ExitCode {
    let heap_kept = server::heap::keep_freed_memory();
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        return run_json_command(command, cli.database.as_deref(), &cli.data_dir);
    }
    let config = match Config::from_cli(&cli) {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("chat-server: {problem}");
            return ExitCode::from(2);
        }
    };
    if let Err(problem) = init_logging(&cli) {
        eprintln!(
            "chat-server: cannot open log file {}: {problem}",
            cli.log_file.display()
        );
        return ExitCode::from(2);
    }
    if !heap_kept {
        log::warn!(
            "the allocator refused its thresholds (heap.rs): freed memory goes back at once"
        );
    }
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(error) => {
            log::error!("cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(address) => {
            if server.is_tls() {
                log::info!("listening on wss://{address}/ (TLS)");
            } else {
                log::info!("listening on ws://{address}/ (plain WebSocket, no TLS)");
            }
            // The one line on stdout: scripts and tests read the address here.
            println!("chat-server listening on {address}");
            let _ = std::io::stdout().flush();
        }
        Err(error) => log::warn!("cannot read the bound address: {error}"),
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("event loop failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `export-json` or `import-json` on the `--database` PostgreSQL
/// database or else the `--data-dir` one: the report on stdout and exit 0,
/// or the error on stderr and exit 2.
fn run_json_command(command: &JsonCommand, database: Option<&str>, data_dir: &Path) -> ExitCode {
    let result = match command {
        JsonCommand::ExportJson { dir } => JsonDatabase::open(database, data_dir, false)
            .and_then(|mut db| warn_if_running(&mut db).map(|()| db))
            .and_then(|mut db| db.export(dir))
            .map(|report| report.to_string()),
        // The files first: a bad directory must not leave a new database behind.
        JsonCommand::ImportJson { dir } => json_files::load(dir).and_then(|loaded| {
            let mut db = JsonDatabase::open(database, data_dir, true)?;
            warn_if_running(&mut db)?;
            db.import_loaded(&loaded).map(|report| report.to_string())
        }),
        JsonCommand::GenCert { dir, names } => {
            return match server::tls::generate_dev_certificates(dir, names) {
                Ok(()) => {
                    println!(
                        "wrote {0}/ca.pem, {0}/cert.pem and {0}/key.pem for {1}",
                        dir.display(),
                        names.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("chat-server: {error}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("chat-server: {error}");
            ExitCode::from(2)
        }
    }
}

/// A server running on the database (or one that crashed: they look alike)
/// deserves a word before the files are touched.
fn warn_if_running(db: &mut JsonDatabase) -> Result<(), json_files::JsonFileError> {
    if db.marked_running()? {
        eprintln!(
            "chat-server: warning: the database is marked as in use: a server is \
             running on it or the last one crashed; stop any server before this"
        );
    }
    Ok(())
}

/// Logs to stderr and appends to the log file (mode 0600).
fn init_logging(cli: &Cli) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let level = if cli.debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let config = ConfigBuilder::new()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .add_filter_allow_str("server")
        .add_filter_allow_str("chat_server")
        .build();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&cli.log_file)?;
    // simplelog writes a line in several pieces; a LineWriter turns them
    // into one write(2) per line (it was 12-17% of the loop's time at
    // thousands of logins per second).
    CombinedLogger::init(vec![
        WriteLogger::new(level, config.clone(), LineWriter::new(std::io::stderr())),
        WriteLogger::new(level, config, LineWriter::new(file)),
    ])
    .map_err(std::io::Error::other)
}
