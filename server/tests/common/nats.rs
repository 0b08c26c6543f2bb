//! The NATS server the cluster tests use: `CHAT_TEST_NATS` (default
//! `nats://127.0.0.1:4222`), and a subject prefix of each test's own so
//! tests running at once on one NATS never see each other's events.
//!
//! Where no NATS answers, [`nats_for`] prints `SKIPPED <test>: no NATS at
//! <url>` and returns `None`, so the test returns early — unless
//! `CI=true`, where it panics: CI must run them (as `postgres_db.rs`).

use std::io::{BufRead, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The NATS server's URL when `CHAT_TEST_NATS` is unset.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How long the harness waits for NATS to say hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Prefixes handed out by this test process so far.
static PREFIXES: AtomicUsize = AtomicUsize::new(0);

/// A NATS server for one test: its URL and a subject prefix of its own.
pub struct TestNats {
    /// For `--nats`.
    pub url: String,
    /// For `--nats-prefix`: `t<pid>x<n>`.
    pub prefix: String,
}

/// The NATS to use, or `None` (after saying `SKIPPED test: …` on stderr)
/// when none answers and `CI` is not `true`.
pub fn nats_for(test: &str) -> Option<TestNats> {
    let url = std::env::var("CHAT_TEST_NATS").unwrap_or_else(|_| DEFAULT_URL.into());
    if let Err(error) = say_hello(&url) {
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            panic!("{test}: no NATS at {url} (CI=true needs one): {error}");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: no NATS at {url} ({error})"
        );
        return None;
    }
    let n = PREFIXES.fetch_add(1, Ordering::Relaxed);
    Some(TestNats {
        url,
        prefix: format!("t{}x{n}", std::process::id()),
    })
}

/// Connects and reads the server's `INFO` line: a NATS server is there.
fn say_hello(url: &str) -> Result<(), String> {
    let host_port = url.strip_prefix("nats://").unwrap_or(url);
    let address = host_port
        .to_socket_addrs()
        .map_err(|error| error.to_string())?
        .next()
        .ok_or("no address")?;
    let stream =
        TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.starts_with("INFO") {
        Ok(())
    } else {
        Err(format!("not a NATS server: {line:?}"))
    }
}
