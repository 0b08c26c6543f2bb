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

/// A TCP relay in front of the NATS server, for one test's servers: the
/// test cuts it (every relayed connection closed, new ones refused) and
/// restores it, so one server loses NATS while the NATS server, shared
/// with other tests, runs on.
pub struct NatsRelay {
    /// For `--nats`: `nats://127.0.0.1:<relay port>`.
    pub url: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NatsRelay {
    /// A relay to the NATS server at `target` (`nats://HOST:PORT`), open.
    pub fn start(target: &str) -> NatsRelay {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let target = target
            .strip_prefix("nats://")
            .unwrap_or(target)
            .to_socket_addrs()
            .expect("the NATS address")
            .next()
            .expect("an address");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking relay");
        let url = format!("nats://{}", listener.local_addr().expect("its address"));
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (accept_open, accept_stop) = (Arc::clone(&open), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !accept_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if accept_open.load(Ordering::Relaxed) => {
                        relay(client, target, &accept_open, &accept_stop);
                    }
                    Ok(_) => {} // cut: dropped at once
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        NatsRelay { url, open, stop }
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Relaxed);
    }

    /// Accepts and relays again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Relaxed);
    }
}

impl Drop for NatsRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.open.store(false, Ordering::Relaxed);
    }
}

/// Copies bytes both ways between `client` and the NATS server at
/// `target` until either ends or the relay is cut.
fn relay(
    client: TcpStream,
    target: std::net::SocketAddr,
    open: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let Ok(server) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        return;
    };
    let _ = client.set_nonblocking(false);
    for (from, to) in [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ] {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        let (open, stop) = (std::sync::Arc::clone(open), std::sync::Arc::clone(stop));
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
            let mut buffer = [0u8; 16 * 1024];
            while open.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                match from.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}
