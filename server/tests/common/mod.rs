//! The shared harness of the integration tests: a real `chat-server` process on
//! an ephemeral port with its own temporary data directory ([`TestServer`]), and a
//! blocking WebSocket client that speaks the typed protocol ([`Client`]).
//!
//! Every test binary compiles this module and uses only part of it, hence the
//! `dead_code` allowance below.
#![allow(dead_code)]

pub mod nats;
pub mod postgres_db;
pub mod relay;

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use protocol::client::{Login, Register};
use protocol::server::{
    Ack, Delivered, Directory, Error, FailLogin, FailRegister, History, Key, Presence,
    SuccessLogin, Synced,
};
use protocol::{
    decode_reply, decode_server, encode_client, encode_request, ClientMessage, ErrorType,
    RequestId, ServerMessage,
};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long a server may take to print its listening line.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before the harness gives up.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// How long [`Client::recv`] waits for the next frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// The password every test account uses unless a test says otherwise.
pub const SECRET: &str = "correct-horse-42";

/// A running `chat-server` child process; killed on drop.
pub struct TestServer {
    /// The port it listens on (changes on [`TestServer::restart`]).
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// RLIMIT_FSIZE for the process (simulates a full disk), if any.
    file_size_limit: Option<u64>,
    stderr: Arc<Mutex<String>>,
    data_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` with a fresh data dir, cheap PBKDF2 and
    /// `extra_args`, and waits for its listening line.
    pub fn start(extra_args: &[&str]) -> TestServer {
        Self::start_with_file_size_limit(extra_args, None)
    }

    /// Like [`TestServer::start`], but no file the process writes may grow past
    /// `limit` bytes (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with
    /// EFBIG instead of killing it): a disk that fills up.
    pub fn start_with_file_size_limit(extra_args: &[&str], limit: Option<u64>) -> TestServer {
        let mut server = TestServer {
            port: 0,
            child: None,
            file_size_limit: limit,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            stderr: Arc::new(Mutex::new(String::new())),
            data_dir: tempfile::Builder::new()
                .prefix("chat-server-test-")
                .tempdir()
                .expect("create a temporary data dir"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let dir = self.data_dir.path();
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        command
            .args(["--port", "0", "--host", "127.0.0.1", "--data-dir"])
            .arg(dir)
            .arg("--log-file")
            .arg(dir.join("server.log"))
            .args(["--pbkdf2-iterations", "1000"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let limit = self.file_size_limit;
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec.
            // SIGXFSZ is ignored in every test server, so a file size limit
            // set later (`set_file_size_limit`) fails writes with EFBIG
            // rather than killing the process.
            unsafe {
                command.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let Some(limit) = limit else {
                        return Ok(());
                    };
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawn chat-server");

        // Both pipes are drained by threads for the whole life of the child, so
        // a chatty server never blocks on a full pipe.
        let stderr = child.stderr.take().expect("stderr is piped");
        let captured = Arc::clone(&self.stderr);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut text = captured.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines_tx, lines_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });

        let deadline = Instant::now() + STARTUP_DEADLINE;
        let prefix = "chat-server listening on 127.0.0.1:";
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(port) = line.trim().strip_prefix(prefix) {
                        break port.parse::<u16>().expect("port in the listening line");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    thread::sleep(Duration::from_millis(100)); // let stderr drain
                    panic!(
                        "chat-server printed no `{prefix}PORT` line within {STARTUP_DEADLINE:?} \
                         (exit: {status:?}); stderr:\n{}",
                        self.stderr.lock().unwrap()
                    );
                }
            }
        };
        self.port = port;
        self.child = Some(child);
    }

    /// Sends SIGTERM, waits for the process to exit and returns its status.
    pub fn stop_gracefully(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.wait_for_exit()
    }

    /// Waits for the process to exit (after a signal the test sent) and
    /// returns its status.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let deadline = Instant::now() + SHUTDOWN_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for chat-server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chat-server did not exit within {SHUTDOWN_DEADLINE:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM (asserting a clean exit) and starts it
    /// again on the same data dir; `port` is updated.
    pub fn restart(&mut self) {
        let status = self.stop_gracefully();
        assert!(status.success(), "exit status after SIGTERM: {status}");
        self.spawn();
    }

    /// Like [`TestServer::restart`], running `between` on the data directory
    /// while the server is stopped (to change its files behind its back).
    pub fn restart_with(&mut self, between: impl FnOnce(&Path)) {
        let status = self.stop_gracefully();
        assert!(status.success(), "exit status after SIGTERM: {status}");
        between(self.data_dir.path());
        self.spawn();
    }

    /// Stops the server with SIGTERM (whatever its exit status: a server on a
    /// full disk may fail to record its clean stop) and starts it again
    /// without a file size limit: the disk has been freed.
    pub fn restart_with_free_disk(&mut self) {
        self.stop_gracefully();
        self.start_again_with_free_disk();
    }

    /// Starts a stopped server again on the same data dir, without a file
    /// size limit.
    pub fn start_again_with_free_disk(&mut self) {
        self.file_size_limit = None;
        self.spawn();
    }

    /// Caps (or, with `None`, uncaps) the size of every file the running
    /// server writes: its disk fills up, or is freed, without a restart.
    pub fn set_file_size_limit(&self, limit: Option<u64>) {
        let rlimit = libc::rlimit {
            rlim_cur: limit.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: libc::RLIM_INFINITY,
        };
        let pid = self.pid() as libc::pid_t;
        // SAFETY: plain system call on a child process we own.
        let result =
            unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &rlimit, std::ptr::null_mut()) };
        assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// Kills the server with SIGKILL and starts it again with `limit` as
    /// RLIMIT_FSIZE (`None`: no limit): a crash into, or out of, a full disk.
    pub fn crash_and_restart_with_file_size_limit(&mut self, limit: Option<u64>) {
        self.kill();
        self.file_size_limit = limit;
        self.spawn();
    }

    /// Kills the server with SIGKILL and leaves it down (until
    /// [`TestServer::start_again_with_free_disk`] or a drop).
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("server is running");
        child.kill().expect("SIGKILL chat-server");
        child.wait().expect("wait for chat-server");
    }

    /// Whether the process is running (not killed and left down).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server with SIGKILL (no chance to clean up, like a crash) and
    /// starts it again on the same data dir; `port` is updated.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Everything in `--log-file` so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The data directory (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Every message in the database (`id → content`); read it once the
    /// server has stopped, or accept a snapshot of a moment.
    pub fn stored_messages(&self) -> std::collections::BTreeMap<i64, String> {
        let db = rusqlite::Connection::open(self.data_dir().join("chat.db")).expect("open chat.db");
        let mut statement = db
            .prepare("SELECT message_id, content FROM messages")
            .expect("prepare");
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query");
        rows.map(|row| row.expect("row")).collect()
    }

    /// A new client connected to this server.
    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a connection ended, as seen by [`Client::expect_close`].
#[derive(Debug)]
pub enum Closed {
    /// The server sent a close frame (with its code, if any).
    Frame(Option<CloseFrame>),
    /// The TCP connection ended without a close frame.
    Dropped(String),
}

impl Closed {
    /// The close code, if a close frame with one arrived.
    pub fn code(&self) -> Option<u16> {
        match self {
            Closed::Frame(Some(frame)) => Some(frame.code.into()),
            _ => None,
        }
    }
}

/// Generates `recv_*` methods that expect one variant of [`ServerMessage`].
macro_rules! recv_variant {
    ($($name:ident => $variant:ident($body:ty);)*) => {
        $(
            /// Receives the next frame and panics unless it is this variant.
            #[track_caller]
            pub fn $name(&mut self) -> $body {
                match self.recv() {
                    ServerMessage::$variant(body) => body,
                    other => panic!("expected {}, got {other:?}", stringify!($variant)),
                }
            }
        )*
    };
}

/// What [`Client::poll`] saw.
pub enum Polled {
    /// A text frame, decoded, with the request id it echoes.
    Frame(ServerMessage, Option<RequestId>),
    /// Nothing within the wait.
    Quiet,
    /// The connection ended (close frame, reset, or an undecodable frame).
    Ended,
}

/// A blocking WebSocket client with a read timeout.
pub struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    /// Connects to `ws://127.0.0.1:port/`, panicking if that fails.
    pub fn connect(port: u16) -> Client {
        Client::try_connect(port).unwrap_or_else(|e| panic!("connect to port {port}: {e}"))
    }

    /// Connects to `ws://127.0.0.1:port/`, or says why the TCP connect or the
    /// WebSocket handshake failed.
    pub fn try_connect(port: u16) -> Result<Client, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        Client::handshake(stream, port)
    }

    /// Connects to `ws://127.0.0.1:port/` from the loopback address `source`
    /// (any 127.x.y.z: the server sees another client address), or says why
    /// it failed.
    pub fn try_connect_from(source: Ipv4Addr, port: u16) -> Result<Client, String> {
        let stream = tcp_connect_from(source, port, None).map_err(|e| e.to_string())?;
        Client::handshake(stream, port)
    }

    /// Completes the WebSocket handshake on a connected socket.
    pub fn handshake(stream: TcpStream, port: u16) -> Result<Client, String> {
        stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(RECV_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let url = format!("ws://127.0.0.1:{port}/");
        match tungstenite::client(url, stream) {
            Ok((ws, _response)) => Ok(Client { ws }),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Wraps a WebSocket taken out with [`Client::into_inner`], restoring the
    /// default read timeout.
    pub fn from_websocket(ws: WebSocket<TcpStream>) -> Client {
        ws.get_ref().set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        Client { ws }
    }

    /// The WebSocket, for tests that need to go below this wrapper.
    pub fn into_inner(self) -> WebSocket<TcpStream> {
        self.ws
    }

    /// Sends one text frame as is.
    #[track_caller]
    pub fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
    }

    /// Sends a typed message.
    #[track_caller]
    pub fn send(&mut self, message: &ClientMessage) {
        self.send_raw(&encode_client(message));
    }

    /// Sends a message, or says why the connection cannot take it.
    pub fn try_send(&mut self, message: &ClientMessage) -> Result<(), String> {
        self.ws
            .send(Message::text(encode_client(message)))
            .map_err(|e| e.to_string())
    }

    /// Sends a raw text frame, or says why the connection cannot take it.
    pub fn try_send_raw(&mut self, text: &str) -> Result<(), String> {
        self.ws
            .send(Message::text(text.to_owned()))
            .map_err(|e| e.to_string())
    }

    /// Sends a binary frame, or says why the connection cannot take it.
    pub fn try_send_binary(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .map_err(|e| e.to_string())
    }

    /// The next server message, or `None` once the connection is closed,
    /// broken, or silent for [`RECV_TIMEOUT`].
    pub fn try_recv(&mut self) -> Option<ServerMessage> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return decode_server(text.as_str()).ok(),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Binary(_) | Message::Close(_)) | Err(_) => return None,
            }
        }
    }

    /// Sends one binary frame.
    #[track_caller]
    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .expect("send binary frame");
    }

    /// The next text frame, answering pings meanwhile; panics on a close, a
    /// non-text frame, or after [`RECV_TIMEOUT`] of silence.
    #[track_caller]
    pub fn recv_text(&mut self) -> String {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return text.as_str().to_owned(),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Binary(bytes)) => panic!("unexpected binary frame {bytes:?}"),
                Ok(Message::Close(frame)) => {
                    panic!(
                        "the server closed the connection ({frame:?}) while a frame was expected"
                    )
                }
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
                    panic!("no frame from the server within {RECV_TIMEOUT:?}")
                }
                Err(e) => panic!("connection failed while a frame was expected: {e}"),
            }
        }
    }

    /// The next frame, decoded.
    #[track_caller]
    pub fn recv(&mut self) -> ServerMessage {
        let text = self.recv_text();
        decode_server(&text).unwrap_or_else(|e| panic!("undecodable server frame {text}: {e}"))
    }

    /// Sends `message` carrying `request_id` (protocol 1.1).
    #[track_caller]
    pub fn send_with_id(&mut self, message: &ClientMessage, request_id: impl Into<RequestId>) {
        self.send_raw(&encode_request(message, Some(&request_id.into())));
    }

    /// The next frame, decoded, with the `request_id` it echoes.
    #[track_caller]
    pub fn recv_with_id(&mut self) -> (ServerMessage, Option<RequestId>) {
        let text = self.recv_text();
        decode_reply(&text).unwrap_or_else(|e| panic!("undecodable server frame {text}: {e}"))
    }

    /// The next frame as JSON.
    #[track_caller]
    pub fn recv_json(&mut self) -> serde_json::Value {
        let text = self.recv_text();
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("server frame {text} is not JSON: {e}"))
    }

    /// Every frame that arrives within `window`, decoded.
    #[track_caller]
    pub fn drain(&mut self, window: Duration) -> Vec<ServerMessage> {
        self.drain_up_to(usize::MAX, window)
    }

    /// The frames that arrive within `window`, decoded, stopping early once
    /// there are `max` of them.
    #[track_caller]
    pub fn drain_up_to(&mut self, max: usize, window: Duration) -> Vec<ServerMessage> {
        let deadline = Instant::now() + window;
        let mut frames = Vec::new();
        while frames.len() < max {
            let Some(text) = self.next_text_before(deadline) else {
                break;
            };
            match decode_server(&text) {
                Ok(frame) => frames.push(frame),
                Err(e) => panic!("undecodable server frame {text}: {e}"),
            }
        }
        frames
    }

    /// Asserts that no text frame arrives within `window` (pings are answered).
    #[track_caller]
    pub fn expect_silence(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        if let Some(text) = self.next_text_before(deadline) {
            panic!("expected silence for {window:?}, got {text}");
        }
    }

    #[track_caller]
    fn next_text_before(&mut self, deadline: Instant) -> Option<String> {
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            self.ws.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(Message::Text(text)) => break Some(text.as_str().to_owned()),
                Ok(Message::Close(frame)) => panic!("connection closed unexpectedly: {frame:?}"),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => break None,
                Err(e) => panic!("connection failed unexpectedly: {e}"),
            }
        };
        self.ws
            .get_ref()
            .set_read_timeout(Some(RECV_TIMEOUT))
            .unwrap();
        result
    }

    /// Waits for the server to end the connection; panics if a text frame comes
    /// first or nothing happens within [`RECV_TIMEOUT`].
    #[track_caller]
    pub fn expect_close(&mut self) -> Closed {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return Closed::Frame(frame),
                Ok(Message::Text(text)) => panic!("expected the connection to close, got {text}"),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
                    panic!("the server did not close the connection within {RECV_TIMEOUT:?}")
                }
                Err(e) => return Closed::Dropped(e.to_string()),
            }
        }
    }

    /// The next frame if one arrives within `wait`; never panics.
    pub fn poll(&mut self, wait: Duration) -> Polled {
        if self.ws.get_ref().set_read_timeout(Some(wait)).is_err() {
            return Polled::Ended;
        }
        let polled = loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => match decode_reply(text.as_str()) {
                    Ok((message, id)) => break Polled::Frame(message, id),
                    Err(_) => break Polled::Ended,
                },
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => break Polled::Quiet,
                Ok(_) | Err(_) => break Polled::Ended,
            }
        };
        let _ = self.ws.get_ref().set_read_timeout(Some(RECV_TIMEOUT));
        polled
    }

    /// Sends `message` with `request_id`; an error if the connection is gone.
    pub fn try_send_with_id(
        &mut self,
        message: &ClientMessage,
        request_id: impl Into<RequestId>,
    ) -> Result<(), String> {
        self.try_send_raw(&encode_request(message, Some(&request_id.into())))
    }

    /// Every message frame until the server closes the connection (or drops
    /// it), and how it ended; fails if it stays open past `deadline`.
    #[track_caller]
    pub fn read_until_closed(&mut self, deadline: Duration) -> (Vec<ServerMessage>, Closed) {
        let end = Instant::now() + deadline;
        let mut frames = Vec::new();
        loop {
            assert!(Instant::now() < end, "still open after {deadline:?}");
            match self.ws.read() {
                Ok(Message::Text(text)) => frames.push(
                    decode_server(text.as_str())
                        .unwrap_or_else(|e| panic!("undecodable server frame {text}: {e}")),
                ),
                Ok(Message::Close(frame)) => return (frames, Closed::Frame(frame)),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => continue,
                Err(e) => return (frames, Closed::Dropped(e.to_string())),
            }
        }
    }

    /// Logs in with a password and `receipts: true`; asserts SuccessLogin.
    #[track_caller]
    pub fn login_with_receipts(&mut self, name: &str) -> SuccessLogin {
        self.send(&ClientMessage::Login(Login {
            username: name.into(),
            secret: Some(SECRET.into()),
            session_id: None,
            receipts: true,
        }));
        self.recv_success_login()
    }

    /// Resumes a session with `receipts: true`; asserts SuccessLogin.
    #[track_caller]
    pub fn resume_with_receipts(&mut self, name: &str, session_id: &str) -> SuccessLogin {
        self.send(&ClientMessage::Login(Login {
            username: name.into(),
            secret: None,
            session_id: Some(session_id.into()),
            receipts: true,
        }));
        self.recv_success_login()
    }

    /// Confirms holding everything up to `through` (Received, tag 17).
    #[track_caller]
    pub fn confirm(&mut self, through: i64) {
        self.send(&ClientMessage::Received(protocol::client::Received {
            through,
        }));
    }

    /// Closes the connection from this side and waits for the server's answer.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + RECV_TIMEOUT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }

    /// Whether the server has sent bytes this client has not read from its
    /// socket yet (without waiting; only for a client that has not read
    /// ahead, as tungstenite's own buffer is not looked at).
    pub fn has_unread_bytes(&self) -> bool {
        let stream = self.ws.get_ref();
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let unread = matches!(stream.peek(&mut byte), Ok(n) if n > 0);
        stream.set_nonblocking(false).unwrap();
        unread
    }

    /// Sends Ping and asserts the next frame is Pong.
    #[track_caller]
    pub fn ping_pong(&mut self) {
        self.send(&ClientMessage::Ping);
        match self.recv() {
            ServerMessage::Pong => {}
            other => panic!("expected Pong, got {other:?}"),
        }
    }

    /// Receives the next frame and asserts it is `Error{error_type, ref_tag}`.
    #[track_caller]
    pub fn expect_error(&mut self, error_type: ErrorType, ref_tag: Option<i64>) -> Error {
        let error = self.recv_error();
        assert_eq!(
            (error.error_type, error.ref_tag),
            (error_type, ref_tag),
            "unexpected Error {error:?}"
        );
        error
    }

    recv_variant! {
        recv_delivered => Message(Delivered);
        recv_success_login => SuccessLogin(SuccessLogin);
        recv_ack => Ack(Ack);
        recv_history => History(History);
        recv_directory => Directory(Directory);
        recv_presence => Presence(Presence);
        recv_fail_register => FailRegister(FailRegister);
        recv_fail_login => FailLogin(FailLogin);
        recv_error => Error(Error);
        recv_key => Key(Key);
        recv_synced => Synced(Synced);
    }

    /// Registers `name` with `secret` and `name@example.com`; returns the user id.
    #[track_caller]
    pub fn register(&mut self, name: &str, secret: &str) -> i64 {
        self.send(&register_message(
            name,
            secret,
            &format!("{name}@example.com"),
        ));
        match self.recv() {
            ServerMessage::SuccessRegister(ok) => {
                assert_eq!(ok.username, name);
                ok.user_id
            }
            other => panic!("Register {name}: expected SuccessRegister, got {other:?}"),
        }
    }

    /// Logs in with a password and asserts SuccessLogin.
    #[track_caller]
    pub fn login(&mut self, name: &str, secret: &str) -> SuccessLogin {
        self.send(&login_with_secret(name, secret));
        let ok = self.recv_success_login();
        assert_eq!(ok.username, name);
        ok
    }

    /// Resumes a session and asserts SuccessLogin.
    #[track_caller]
    pub fn resume(&mut self, name: &str, session_id: &str) -> SuccessLogin {
        self.send(&login_with_session(name, session_id));
        let ok = self.recv_success_login();
        assert_eq!(ok.username, name);
        ok
    }

    /// Registers `name` with [`SECRET`] and logs this connection in as `name`.
    #[track_caller]
    pub fn register_and_login(&mut self, name: &str) -> SuccessLogin {
        self.register(name, SECRET);
        self.login(name, SECRET)
    }
}

/// A Register message.
pub fn register_message(name: &str, secret: &str, email: &str) -> ClientMessage {
    ClientMessage::Register(Register {
        username: name.into(),
        secret: secret.into(),
        email: email.into(),
    })
}

/// Sends `count` registrations of new users `{prefix}0`, `{prefix}1`, …
/// without reading the answers.
pub fn send_registrations(client: &mut Client, prefix: &str, count: usize) {
    for n in 0..count {
        let email = format!("{prefix}@example.com");
        client.send(&register_message(&format!("{prefix}{n}"), SECRET, &email));
    }
}

/// A Login with a password.
pub fn login_with_secret(name: &str, secret: &str) -> ClientMessage {
    ClientMessage::Login(Login {
        username: name.into(),
        secret: Some(secret.into()),
        session_id: None,
        receipts: false,
    })
}

/// A Login that resumes a session.
pub fn login_with_session(name: &str, session_id: &str) -> ClientMessage {
    ClientMessage::Login(Login {
        username: name.into(),
        secret: None,
        session_id: Some(session_id.into()),
        receipts: false,
    })
}

/// A 1:1 Message to `dest` with an optional client id.
pub fn message_to(dest: &str, content: &str, client_id: Option<&str>) -> ClientMessage {
    ClientMessage::Message(protocol::client::SendMessage {
        dest_id: Some(dest.into()),
        group_id: None,
        content: content.into(),
        message_id: client_id.map(str::to_owned),
        source_id: None,
        is_encrypted: false,
    })
}

/// A Message to group `group_id`, without a client id.
pub fn group_message(group_id: i64, content: &str) -> ClientMessage {
    ClientMessage::Message(protocol::client::SendMessage {
        dest_id: None,
        group_id: Some(group_id),
        content: content.into(),
        message_id: None,
        source_id: None,
        is_encrypted: false,
    })
}

/// Receives frames until one matches `want` (others are skipped), or
/// panics after the harness's receive timeout.
#[track_caller]
pub fn recv_until<T>(client: &mut Client, mut want: impl FnMut(ServerMessage) -> Option<T>) -> T {
    loop {
        if let Some(found) = want(client.recv()) {
            return found;
        }
    }
}

/// Registers every name in `names` over one throwaway connection.
pub fn register_all(server: &TestServer, names: &[&str]) {
    let mut client = server.client();
    for name in names {
        client.register(name, SECRET);
    }
    client.close();
}

/// A new connection logged in as `name` (already registered) with [`SECRET`].
pub fn logged_in(server: &TestServer, name: &str) -> Client {
    let mut client = server.client();
    client.login(name, SECRET);
    client
}

/// A TCP connection to `127.0.0.1:port` from the loopback address `source`,
/// with its receive buffer fixed at about `receive_buffer` bytes if given (a
/// client that reads slowly without the kernel absorbing megabytes for it).
pub fn tcp_connect_from(
    source: Ipv4Addr,
    port: u16,
    receive_buffer: Option<usize>,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let address = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let check = |result: libc::c_int| match result {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    };
    // SAFETY: plain socket calls on a descriptor this function owns (the
    // TcpStream closes it on every path), with correctly sized arguments.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if let Some(bytes) = receive_buffer {
            let bytes = bytes as libc::c_int;
            check(libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ))?;
        }
        let from = address(source, 0);
        check(libc::bind(
            fd,
            (&from as *const libc::sockaddr_in).cast(),
            length,
        ))?;
        let to = address(Ipv4Addr::LOCALHOST, port);
        check(libc::connect(
            fd,
            (&to as *const libc::sockaddr_in).cast(),
            length,
        ))?;
        Ok(stream)
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Runs the server with `args` expecting it to refuse to start: its
/// stderr, after it exited unsuccessfully.
pub fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--port", "0", "--data-dir"])
        .arg(dir.path())
        .arg("--log-file")
        .arg(dir.path().join("server.log"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chat-server");
    assert!(!output.status.success(), "it started: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
