//! Shared helpers for the `chat` integration tests: a real `chat-server` on an
//! ephemeral port with a temporary data directory, and the `chat` binary run
//! with piped stdin (one-shot scripts, or a long-lived process to talk with).

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single step may take before the test fails instead of hanging.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// `<target>/debug/chat-server`, next to the `chat` binary under test.
pub fn server_binary() -> PathBuf {
    let chat = Path::new(env!("CARGO_BIN_EXE_chat"));
    let server = chat
        .parent()
        .expect("the chat binary lives in a directory")
        .join("chat-server");
    assert!(
        server.exists(),
        "{} is missing: run `cargo build -p server` first \
         (`cargo test --workspace` builds it automatically)",
        server.display()
    );
    server
}

/// A running chat-server that is killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts a server on an ephemeral port with its data under `dir`.
    pub fn start(dir: &Path) -> Server {
        Server::start_on(dir, 0)
    }

    /// Starts a server on `port` (0 for any) with its data under `dir`.
    pub fn start_on(dir: &Path, port: u16) -> Server {
        let data_dir = dir.join("data");
        let mut child = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--log-file")
            .arg(dir.join("server.log"))
            .args(["--pbkdf2-iterations", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chat-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(STEP_TIMEOUT)
            .expect("chat-server prints its listening line");
        let port = line
            .trim()
            .strip_prefix("chat-server listening on 127.0.0.1:")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from chat-server: {line:?}"));
        Server {
            child,
            port,
            data_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (like a crash) and waits for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (for restarting a server on the same port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The `chat` command for `url`, with its session in `session_file`.
pub fn chat_command(url: &str, session_file: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat"));
    command
        .arg("--url")
        .arg(url)
        .arg("--session-file")
        .arg(session_file)
        .env("TZ", "UTC");
    command
}

/// What a finished `chat` run printed, and how it exited.
#[derive(Debug)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// Runs `chat` with `script` on stdin and waits for it to exit.
pub fn run_script(mut command: Command, script: &str) -> Finished {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat");
    // A chat that exits before reading everything (it could not connect)
    // closes the pipe; what it printed still tells the test why.
    let written = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes());
    if let Err(error) = written {
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write the script"
        );
    }
    let stdout = read_all_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_all_in_background(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + STEP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chat") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chat did not finish the script {script:?} in time");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Finished {
        stdout: stdout.recv().unwrap_or_default(),
        stderr: stderr.recv().unwrap_or_default(),
        code: status.code().unwrap_or(-1),
    }
}

fn read_all_in_background(mut stream: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let _ = sender.send(text);
    });
    receiver
}

/// A long-lived `chat` process fed line by line, whose stdout is read as it
/// comes.
pub struct Live {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Everything read so far, for failure messages.
    pub seen: Vec<String>,
}

impl Live {
    pub fn start(mut command: Command) -> Live {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chat");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Live {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to chat");
        stdin.flush().expect("flush to chat");
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn expect_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; chat printed {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Collects stdout lines until `quiet` passes with none, returning them.
    pub fn drain_for(&mut self, quiet: Duration) -> Vec<String> {
        let mut drained = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            self.seen.push(line.clone());
            drained.push(line);
        }
        drained
    }

    /// Kills the process with SIGKILL (no clean shutdown) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin and waits for the exit code.
    pub fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for chat") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                panic!("chat did not exit after its stdin closed");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers each `(name, password)` through one `chat` script.
pub fn register_all(server: &Server, dir: &Path, users: &[(&str, &str)]) {
    let script: String = users
        .iter()
        .map(|(name, password)| format!("/register {name} {name}@example.com {password}\n"))
        .collect();
    let finished = run_script(
        chat_command(&server.url(), &dir.join("registrar.json")),
        &script,
    );
    assert_eq!(finished.code, 0, "registering failed: {finished:?}");
}

/// A TCP forwarder between a client and the server whose connections the test
/// can cut, to drop one client's connection while everyone else stays.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    refusing: std::sync::atomic::AtomicBool,
    streams: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl Proxy {
    /// Forwards connections on a fresh local port to `target_port`.
    pub fn start(target_port: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = std::sync::Arc::new(ProxyState::default());
        let shared = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if shared.refusing.load(Ordering::SeqCst) {
                    continue; // dropped at once: the client sees a failed handshake
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let mut streams = shared.streams.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                streams.push(client);
                streams.push(server);
            }
        });
        Proxy { port, state }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Cuts every forwarded connection and refuses new ones until `resume`.
    pub fn cut(&self) {
        self.state
            .refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.state.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn resume(&self) {
        self.state
            .refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits until `path` exists (a `chat` run saves its session file once it
/// is logged in), failing the test after [`STEP_TIMEOUT`].
pub fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A WebSocket forwarder that holds back the server's frames of one tag for
/// a while and forwards every other frame at once, so replies sent after a
/// held one overtake it: the client sees answers out of order, however fast
/// or slow the machine is.
pub struct DelayProxy {
    pub port: u16,
}

impl DelayProxy {
    /// Forwards connections on a fresh local port to the server on
    /// `target_port`, holding each server frame with `tag` for `delay`.
    pub fn start(target_port: u16, tag: i64, delay: Duration) -> DelayProxy {
        let filter = Filter {
            hold: Some((tag, delay)),
            drop_from_client: None,
        };
        DelayProxy {
            port: start_relay(target_port, filter),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

/// A WebSocket forwarder that drops the client's frames of one tag while
/// told to (for example every `Received`, so the server never hears what
/// the client confirmed), and forwards everything else.
pub struct DropProxy {
    pub port: u16,
    dropping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DropProxy {
    /// Forwards connections on a fresh local port to the server on
    /// `target_port`, dropping the client's frames with `tag` (at first).
    pub fn start(target_port: u16, tag: i64) -> DropProxy {
        let dropping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let filter = Filter {
            hold: None,
            drop_from_client: Some((tag, dropping.clone())),
        };
        DropProxy {
            port: start_relay(target_port, filter),
            dropping,
        }
    }

    /// Drops the frames (`true`) or forwards them (`false`) from now on.
    pub fn set_dropping(&self, dropping: bool) {
        self.dropping
            .store(dropping, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

/// What a relay does besides forwarding.
#[derive(Clone)]
struct Filter {
    /// Hold the server's frames with this tag for this long.
    hold: Option<(i64, Duration)>,
    /// Drop the client's frames with this tag while the flag is set.
    drop_from_client: Option<(i64, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
}

impl Filter {
    fn drops(&self, frame: &tungstenite::Message) -> bool {
        self.drop_from_client
            .as_ref()
            .is_some_and(|(tag, dropping)| {
                dropping.load(std::sync::atomic::Ordering::SeqCst) && has_tag(frame, *tag)
            })
    }
}

/// Listens on a fresh local port and relays each connection to the server
/// on `target_port` through `filter`; returns the port.
fn start_relay(target_port: u16, filter: Filter) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = listener.local_addr().expect("proxy address").port();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let filter = filter.clone();
            thread::spawn(move || relay(client, target_port, filter));
        }
    });
    port
}

type WebSocket = tungstenite::WebSocket<std::net::TcpStream>;

/// How long one read on either side of a [`DelayProxy`] connection waits.
const RELAY_POLL: Duration = Duration::from_millis(5);

/// One proxied connection: both handshakes, then frames both ways on this
/// thread, reading each side in turn with a short timeout. Ends when either
/// side closes (frames still held are dropped with the connection).
fn relay(client: std::net::TcpStream, target_port: u16, filter: Filter) {
    let Ok(mut client) = tungstenite::accept(client) else {
        return;
    };
    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
        return;
    };
    let Ok((mut server, _)) = tungstenite::client(format!("ws://127.0.0.1:{target_port}/"), server)
    else {
        return;
    };
    for socket in [client.get_ref(), server.get_ref()] {
        socket
            .set_read_timeout(Some(RELAY_POLL))
            .expect("set a read timeout");
    }
    let mut held = std::collections::VecDeque::new();
    loop {
        let (Ok(from_client), Ok(from_server)) = (read_data(&mut client), read_data(&mut server))
        else {
            return;
        };
        let mut to_client = take_due(&mut held);
        match (from_server, filter.hold) {
            (Some(frame), Some((tag, delay))) if has_tag(&frame, tag) => {
                held.push_back((Instant::now() + delay, frame))
            }
            (Some(frame), _) => to_client.push(frame),
            (None, _) => {}
        }
        let forwarded = from_client
            .filter(|frame| !filter.drops(frame))
            .map_or(Ok(()), |frame| server.send(frame))
            .and_then(|()| {
                to_client
                    .into_iter()
                    .try_for_each(|frame| client.send(frame))
            });
        if forwarded.is_err() {
            return;
        }
    }
}

/// Takes the held frames whose time has come, oldest first.
fn take_due(
    held: &mut std::collections::VecDeque<(Instant, tungstenite::Message)>,
) -> Vec<tungstenite::Message> {
    let mut due = Vec::new();
    while held.front().is_some_and(|(at, _)| *at <= Instant::now()) {
        due.extend(held.pop_front().map(|(_, frame)| frame));
    }
    due
}

/// One read: a data frame, `None` when nothing (or only a control frame,
/// which tungstenite answers itself) arrived in time, `Err` once closed.
fn read_data(socket: &mut WebSocket) -> Result<Option<tungstenite::Message>, ()> {
    use tungstenite::Message;
    match socket.read() {
        Ok(frame @ (Message::Text(_) | Message::Binary(_))) => Ok(Some(frame)),
        Ok(Message::Close(_)) => Err(()),
        Ok(_) => Ok(None),
        Err(tungstenite::Error::Io(error))
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(_) => Err(()),
    }
}

/// True when `frame` is a JSON text frame with this `tag`.
fn has_tag(frame: &tungstenite::Message, tag: i64) -> bool {
    let Ok(text) = frame.to_text() else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|value| value["tag"].as_i64() == Some(tag))
}
