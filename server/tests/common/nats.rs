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

/// Where to look for the `nats-server` binary when `CHAT_TEST_NATS_SERVER`
/// is unset (Debian's package installs it in `/usr/sbin`).
const NATS_SERVER_PATHS: [&str; 3] = [
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
    "/usr/local/bin/nats-server",
];

/// How long a started `nats-server` has to answer.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A `nats-server` process of one test's own, on a port of its own: the test
/// may kill it (SIGKILL) and start it again on the same port — a NATS
/// restart no other test sees. Killed on drop.
pub struct OwnNats {
    /// For `--nats`.
    pub url: String,
    /// For `--nats-prefix`.
    pub prefix: String,
    binary: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

/// Starts a NATS server of `test`'s own, or returns `None` (after saying
/// `SKIPPED test: …`) when no `nats-server` binary is found and `CI` is not
/// `true` (with `CI=true` it panics).
pub fn own_nats_for(test: &str) -> Option<OwnNats> {
    let Some(binary) = nats_server_binary() else {
        let why = "no nats-server binary (CHAT_TEST_NATS_SERVER, or Debian's package nats-server)";
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            panic!("{test}: {why} (CI=true needs one)");
        }
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port for nats-server")
        .port();
    let n = PREFIXES.fetch_add(1, Ordering::Relaxed);
    let mut nats = OwnNats {
        url: format!("nats://127.0.0.1:{port}"),
        prefix: format!("t{}x{n}", std::process::id()),
        binary,
        port,
        child: None,
    };
    nats.start();
    Some(nats)
}

fn nats_server_binary() -> Option<std::path::PathBuf> {
    if let Ok(path) = std::env::var("CHAT_TEST_NATS_SERVER") {
        return Some(path.into());
    }
    NATS_SERVER_PATHS
        .iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.is_file())
}

impl OwnNats {
    /// Starts the server (again) on its port and waits until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let child = std::process::Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", self.binary.display()));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + START_DEADLINE;
        while let Err(error) = say_hello(&self.url) {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server on {} never answered: {error}",
                self.url
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL and leaves it down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
    }
}
