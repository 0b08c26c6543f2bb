//! One client connection: an explicit state machine around a non-blocking
//! tungstenite WebSocket over a mio `TcpStream`, with a plain HTTP exchange
//! as its other possible life.
//!
//! ```text
//! Head ──(Upgrade: websocket)──▶ Handshaking ──(upgrade done)──▶ Open ──(a close)──▶ Closing ──▶ Closed
//!  │                                  └──────(error, timeout)────────────────────────────────▶ Closed
//!  └──(any other request)──▶ Routing ──(the loop's answer)──▶ Answering ──(written)──▶ Draining ──▶ Closed
//! ```
//!
//! `Head` reads the request head (at most
//! [`config::REQUEST_HEAD_BYTES_MAX`] bytes) and parses it before tungstenite
//! is involved. An upgrade goes to tungstenite's handshake, which reads the
//! same bytes again from the [`Transport`] (so the handshake, its `Origin`
//! check and its errors are tungstenite's, as before); anything else is
//! handed up to the loop ([`ReadEvent::Request`]), whose answer
//! ([`crate::http`]) is written from memory, after which our side is shut
//! and the peer's remaining bytes are read and dropped until it closes (so
//! unread input never turns the close into a reset that could destroy the
//! answer). Head, Handshaking, Routing and Answering are all under the
//! handshake deadline; Draining under the close deadline.
//!
//! The connection never blocks: a handshake that would block is kept as
//! tungstenite's `MidHandshake` and resumed on the next readiness event;
//! reads drain until `WouldBlock`; writes go into tungstenite's buffer and are
//! flushed by the loop once per turn, the rest on the next WRITABLE event.
//! It knows nothing of the protocol's messages: text frames go up to the loop.
//! Underneath is a [`Transport`]: the socket, or TLS over it.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, Utf8Bytes, WebSocket};

use crate::address_cap::AddressTicket;
use crate::completion::ConnId;
use crate::config;
use crate::http::{self, Body, HeadError, Request as HttpRequest};
use crate::tls::Transport;

type Handshake = MidHandshake<ServerHandshake<Transport, OriginCheck>>;

/// The handshake's one policy: with `--allowed-origin` given, a request that
/// carries an `Origin` header (browsers always do) must name one of them, so
/// other web pages cannot open sockets to the server with a user's cookies or
/// network position. Requests without `Origin` (non-browser clients) pass,
/// and so does the page of the embedded web client when it is served: an
/// `Origin` equal to this server's scheme + the request's `Host`.
#[derive(Clone, Debug, Default)]
pub struct OriginCheck {
    allowed: Arc<[String]>,
    /// `Some("http")`/`Some("https")`: this server's own pages are allowed
    /// (it serves the web client, over TLS or not).
    own_scheme: Option<&'static str>,
}

impl OriginCheck {
    /// Allows exactly these origins (none given: any), and this server's
    /// own pages when it serves them (`own_scheme`).
    pub fn new(allowed: Vec<String>, own_scheme: Option<&'static str>) -> Self {
        OriginCheck {
            allowed: allowed.into(),
            own_scheme,
        }
    }

    fn permits(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        match origin {
            _ if self.allowed.is_empty() => true,
            None => true,
            Some(origin) => {
                self.allowed.iter().any(|allowed| allowed == origin) || self.is_own(origin, host)
            }
        }
    }

    /// Whether `origin` is `scheme://host` of a page this server served.
    fn is_own(&self, origin: &str, host: Option<&str>) -> bool {
        let (Some(scheme), Some(host)) = (self.own_scheme, host) else {
            return false;
        };
        origin
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host))
    }
}

impl Callback for OriginCheck {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let header = |name| {
            request
                .headers()
                .get(name)
                .map(|value| value.to_str().unwrap_or("<not ascii>"))
        };
        let origin = header("origin");
        if self.permits(origin, header("host")) {
            return Ok(response);
        }
        log::info!(
            "refused a handshake from origin {:?}",
            origin.unwrap_or_default()
        );
        let mut refusal = ErrorResponse::new(Some("origin not allowed".into()));
        *refusal.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
        Err(refusal)
    }
}

/// A request head being read, and what the handshake will need.
struct HeadReader {
    transport: Transport,
    /// The bytes read so far (at most [`config::REQUEST_HEAD_BYTES_MAX`]).
    bytes: Vec<u8>,
    config: WebSocketConfig,
    origins: OriginCheck,
}

/// A plain HTTP answer being written.
struct Answer {
    transport: Transport,
    head: Vec<u8>,
    body: Body,
    /// Bytes of `head` then `body` written so far.
    written: usize,
}

/// Where a connection is in its life.
enum State {
    /// Reading the request head, before knowing what it asks for.
    Head(HeadReader),
    /// The request is a plain HTTP one: the loop is choosing the answer.
    Routing(Transport),
    /// Writing the answer to a plain HTTP request.
    Answering(Answer),
    /// The answer is written and our side shut; reading what the peer still
    /// sends until it closes (or the close deadline, counted from `since`).
    Draining {
        /// The connection.
        transport: Transport,
        /// When the answer was written out.
        since: Instant,
    },
    /// The HTTP upgrade is in progress (resumable). Boxed, like `Closing`'s
    /// WebSocket: both are brief, and inline they would make every
    /// connection's state larger than an open WebSocket.
    Handshaking(Box<Handshake>),
    /// Frames flow both ways.
    Open(WebSocket<Transport>),
    /// A close frame was sent or received; flushing and waiting for the
    /// peer's close until the close deadline, counted from `since`.
    Closing {
        /// The WebSocket.
        ws: Box<WebSocket<Transport>>,
        /// When the close began.
        since: Instant,
    },
    /// Done: the loop removes it.
    Closed,
}

/// What one read step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEvent {
    /// A plain HTTP request (or a head that could not be parsed): the loop
    /// answers it with [`Connection::answer`], or drops the connection.
    Request(Result<HttpRequest, HeadError>),
    /// The WebSocket upgrade just completed.
    Opened,
    /// A text frame.
    Text(Utf8Bytes),
    /// A binary frame of this many bytes (the protocol refuses these).
    Binary(usize),
    /// A frame over the size limit: the connection is now closing (1009).
    TooLarge,
    /// A text frame that is not UTF-8: the connection is now closing (1007).
    NotUtf8,
    /// Nothing more to read now.
    WouldBlock,
    /// The connection is closed (by the peer, an error, or after our close).
    Closed,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The peer does not read fast enough: unsent output passed the cap.
    SlowConsumer,
    /// The connection is closing or gone.
    Closed,
}

/// A client connection.
pub struct Connection {
    /// Identity for the dispatcher and late replies.
    pub id: ConnId,
    /// The remote address.
    pub peer: SocketAddr,
    state: State,
    /// When the TCP connection was accepted.
    accepted_at: Instant,
    /// When anything last arrived from the client.
    last_received: Instant,
    /// Whether a heartbeat ping went out since the last thing received.
    ping_sent: bool,
    /// Whether frames were queued since the last flush.
    needs_flush: bool,
    /// The first message id written since the output was last fully
    /// flushed: what the client may not have received if dropped now.
    unflushed_from: Option<i64>,
    /// Frames were queued that the socket has not taken yet.
    output_pending: bool,
    /// Bytes of frames queued since the output was last fully flushed (an
    /// upper bound on what is unsent).
    pending_bytes: usize,
    /// The dispatcher was told the output is past
    /// [`crate::config::PUSH_BYTES_MAX`] and not yet that it drained.
    told_output_full: bool,
    /// Its place in its address's connection count, given back on drop.
    _address_ticket: AddressTicket,
}

/// Bytes of a request head read per `read` call (the buffer grows by this
/// much at a time, up to [`config::REQUEST_HEAD_BYTES_MAX`]).
const HEAD_READ_BYTES: usize = 2048;

impl Connection {
    /// Takes an accepted socket, which holds `ticket` (its address's place)
    /// for as long as it lives; its request head is read on the first
    /// readiness event.
    pub fn accept(
        (id, peer, ticket): (ConnId, SocketAddr, AddressTicket),
        transport: Transport,
        config: WebSocketConfig,
        origins: OriginCheck,
    ) -> Self {
        let now = Instant::now();
        let state = State::Head(HeadReader {
            transport,
            bytes: Vec::new(),
            config,
            origins,
        });
        Connection {
            id,
            peer,
            state,
            accepted_at: now,
            last_received: now,
            ping_sent: false,
            needs_flush: false,
            unflushed_from: None,
            output_pending: false,
            pending_bytes: 0,
            told_output_full: false,
            _address_ticket: ticket,
        }
    }

    /// Whether the connection is still in its first exchange — reading the
    /// request head, upgrading, or answering a plain HTTP request — which
    /// must finish within [`config::HANDSHAKE_TIMEOUT`] of the accept.
    pub fn is_handshaking(&self) -> bool {
        matches!(
            self.state,
            State::Head(_) | State::Handshaking(_) | State::Routing(_) | State::Answering(_)
        )
    }

    /// Whether frames can be exchanged.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Whether the loop should remove it.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The socket, for (de)registration with mio.
    pub fn stream_mut(&mut self) -> Option<&mut TcpStream> {
        self.transport_mut().map(Transport::socket_mut)
    }

    /// The socket reported ready: what it holds is read again, even past a
    /// short read ([`Transport::readable`]); `peer_closed` if the event said
    /// the peer shut its side.
    pub fn readable(&mut self, peer_closed: bool) {
        if let Some(transport) = self.transport_mut() {
            transport.readable(peer_closed);
        }
    }

    fn transport_mut(&mut self) -> Option<&mut Transport> {
        match &mut self.state {
            State::Head(head) => Some(&mut head.transport),
            State::Routing(transport) | State::Draining { transport, .. } => Some(transport),
            State::Answering(answer) => Some(&mut answer.transport),
            State::Handshaking(mid) => Some(mid.get_mut().get_mut()),
            State::Open(ws) => Some(ws.get_mut()),
            State::Closing { ws, .. } => Some(ws.get_mut()),
            State::Closed => None,
        }
    }

    /// Advances the connection by one step of reading.
    pub fn read(&mut self) -> ReadEvent {
        // An open WebSocket is read where it lies: moving it out of `state`
        // and back for every read was ~600 instructions per message, ~2 % of
        // the loop's (`scripts/callgrind.sh`).
        if matches!(self.state, State::Open(_)) {
            return self.read_open();
        }
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Head(head) => self.read_head(head),
            State::Routing(transport) => {
                // The answer comes from the loop; reading waits for it.
                self.state = State::Routing(transport);
                ReadEvent::WouldBlock
            }
            State::Answering(answer) => {
                self.state = State::Answering(answer);
                ReadEvent::WouldBlock
            }
            State::Draining { transport, since } => self.read_draining(transport, since),
            State::Handshaking(mid) => self.resume_handshake(*mid),
            State::Open(ws) => {
                self.state = State::Open(ws);
                self.read_open()
            }
            State::Closing { ws, since } => self.read_closing(ws, since),
            State::Closed => ReadEvent::Closed,
        }
    }

    /// Reads the request head until it is complete, then routes it: an
    /// upgrade to tungstenite (with the bytes read given back), anything
    /// else up to the loop.
    fn read_head(&mut self, mut head: HeadReader) -> ReadEvent {
        loop {
            let filled = head.bytes.len();
            let room = HEAD_READ_BYTES.min(config::REQUEST_HEAD_BYTES_MAX - filled);
            head.bytes.resize(filled + room, 0);
            let read = head.transport.read(&mut head.bytes[filled..]);
            head.bytes.truncate(filled + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return ReadEvent::Closed, // gone before a whole head
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.state = State::Head(head);
                    return ReadEvent::WouldBlock;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    log::debug!("{}: read error before a request: {error}", self.peer);
                    return ReadEvent::Closed;
                }
            }
            self.last_received = Instant::now();
            match http::parse_head(&head.bytes) {
                Ok(None) => continue,
                Ok(Some(request)) if request.is_websocket_upgrade() => {
                    return self.start_handshake(head);
                }
                Ok(Some(request)) => {
                    self.state = State::Routing(head.transport);
                    return ReadEvent::Request(Ok(request));
                }
                Err(error) => {
                    self.state = State::Routing(head.transport);
                    return ReadEvent::Request(Err(error));
                }
            }
        }
    }

    /// Hands the connection to tungstenite's handshake, which reads the
    /// head again from the bytes given back.
    fn start_handshake(&mut self, head: HeadReader) -> ReadEvent {
        let HeadReader {
            mut transport,
            bytes,
            config,
            origins,
        } = head;
        transport.unread(bytes);
        match tungstenite::accept_hdr_with_config(transport, origins, Some(config)) {
            Ok(ws) => {
                self.state = State::Open(ws);
                ReadEvent::Opened
            }
            Err(HandshakeError::Interrupted(mid)) => self.resume_handshake(mid),
            Err(HandshakeError::Failure(error)) => {
                log::debug!("{}: handshake failed: {error}", self.peer);
                ReadEvent::Closed
            }
        }
    }

    /// Starts writing the answer to the request [`ReadEvent::Request`]
    /// handed up: `head` (status line and headers), then `body`.
    pub fn answer(&mut self, head: Vec<u8>, body: Body) {
        let State::Routing(transport) = std::mem::replace(&mut self.state, State::Closed) else {
            return; // closed meanwhile
        };
        self.state = State::Answering(Answer {
            transport,
            head,
            body,
            written: 0,
        });
        self.write_answer();
    }

    /// Writes what the socket takes of the answer; once it is all written,
    /// shuts our side and starts draining.
    fn write_answer(&mut self) {
        let State::Answering(mut answer) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        loop {
            let head_len = answer.head.len();
            let rest = match answer.written < head_len {
                true => &answer.head[answer.written..],
                false => &answer.body.as_bytes()[answer.written - head_len..],
            };
            if rest.is_empty() {
                break;
            }
            match answer.transport.write(rest) {
                Ok(0) => return, // the peer is gone: stays Closed
                Ok(count) => answer.written += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.state = State::Answering(answer);
                    return; // the rest on the next WRITABLE event
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    log::debug!("{}: write error answering HTTP: {error}", self.peer);
                    return;
                }
            }
        }
        match answer.transport.flush() {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                self.state = State::Answering(answer); // TLS records still queued
            }
            Err(_) => {}
            Ok(()) => {
                answer.transport.close_write();
                self.state = State::Draining {
                    transport: answer.transport,
                    since: Instant::now(),
                };
            }
        }
    }

    /// Reads and drops what the peer still sends after the answer, until it
    /// closes (then the connection is done).
    fn read_draining(&mut self, mut transport: Transport, since: Instant) -> ReadEvent {
        let mut sink = [0u8; 1024];
        loop {
            match transport.read(&mut sink) {
                Ok(0) => return ReadEvent::Closed,
                Ok(_) => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.state = State::Draining { transport, since };
                    return ReadEvent::WouldBlock;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return ReadEvent::Closed,
            }
        }
    }

    fn resume_handshake(&mut self, mid: Handshake) -> ReadEvent {
        match mid.handshake() {
            Ok(ws) => {
                self.state = State::Open(ws);
                ReadEvent::Opened
            }
            Err(HandshakeError::Interrupted(mid)) => {
                self.state = State::Handshaking(Box::new(mid));
                ReadEvent::WouldBlock
            }
            Err(HandshakeError::Failure(error)) => {
                log::debug!("{}: handshake failed: {error}", self.peer);
                ReadEvent::Closed
            }
        }
    }

    /// Reads an open WebSocket in place, up to the next data frame.
    fn read_open(&mut self) -> ReadEvent {
        loop {
            let State::Open(ws) = &mut self.state else {
                return ReadEvent::Closed;
            };
            let result = ws.read();
            match result {
                Ok(message) => {
                    self.last_received = Instant::now();
                    self.ping_sent = false;
                    match message {
                        Message::Text(text) => return ReadEvent::Text(text),
                        Message::Binary(bytes) => return ReadEvent::Binary(bytes.len()),
                        Message::Close(_) => {
                            // tungstenite queued the reply; send it and finish.
                            if let State::Open(ws) = &mut self.state {
                                let _ = ws.flush();
                            }
                            self.state = State::Closed;
                            return ReadEvent::Closed;
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                            self.needs_flush = true; // a pong may be queued
                        }
                    }
                }
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    return ReadEvent::WouldBlock;
                }
                Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                    log::info!(
                        "{}: frame of {size} bytes over the {max_size}-byte limit; closing",
                        self.peer
                    );
                    self.close(CloseCode::Size, "frame too large");
                    return ReadEvent::TooLarge;
                }
                Err(WsError::Utf8(_)) => {
                    log::info!("{}: a text frame is not UTF-8; closing", self.peer);
                    self.close(CloseCode::Invalid, "text frame is not UTF-8");
                    return ReadEvent::NotUtf8;
                }
                Err(error) => {
                    log::debug!("{}: read error: {error}", self.peer);
                    self.state = State::Closed;
                    return ReadEvent::Closed;
                }
            }
        }
    }

    fn read_closing(&mut self, mut ws: Box<WebSocket<Transport>>, since: Instant) -> ReadEvent {
        loop {
            match ws.read() {
                Ok(_) => continue, // frames after our close are discarded
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.state = State::Closing { ws, since };
                    return ReadEvent::WouldBlock;
                }
                Err(_) => return ReadEvent::Closed,
            }
        }
    }

    /// Queues a text frame; the loop flushes later.
    pub fn send_text(&mut self, frame: String) -> Result<(), WriteError> {
        let State::Open(ws) = &mut self.state else {
            return Err(WriteError::Closed);
        };
        self.needs_flush = true;
        self.output_pending = true;
        self.pending_bytes += frame.len();
        match ws.write(Message::text(frame)) {
            Ok(()) => Ok(()),
            // Written into the buffer; the socket is just full for now.
            Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(WsError::WriteBufferFull(_)) => Err(WriteError::SlowConsumer),
            Err(error) => {
                log::debug!("{}: write error: {error}", self.peer);
                self.state = State::Closed;
                Err(WriteError::Closed)
            }
        }
    }

    /// Whether the unsent output is past `limit` bytes (an upper bound: what
    /// was queued since the last complete flush).
    pub fn output_past(&self, limit: usize) -> bool {
        self.pending_bytes >= limit
    }

    /// Notes that a frame holding message `message_id` was just queued.
    pub fn note_delivery(&mut self, message_id: i64) {
        self.unflushed_from.get_or_insert(message_id);
    }

    /// Sends a heartbeat ping.
    pub fn ping(&mut self) {
        if let State::Open(ws) = &mut self.state {
            self.needs_flush = true;
            self.ping_sent = true;
            let _ = ws.write(Message::Ping(Default::default()));
        }
    }

    /// Starts the closing handshake with `code`.
    pub fn close(&mut self, code: CloseCode, reason: &'static str) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        self.state = match state {
            State::Open(mut ws) => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let since = Instant::now();
                match ws.close(Some(frame)) {
                    Ok(()) => State::Closing {
                        ws: Box::new(ws),
                        since,
                    },
                    Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                        State::Closing {
                            ws: Box::new(ws),
                            since,
                        }
                    }
                    Err(_) => State::Closed,
                }
            }
            closing @ State::Closing { .. } => closing,
            State::Head(_)
            | State::Routing(_)
            | State::Answering(_)
            | State::Draining { .. }
            | State::Handshaking(_)
            | State::Closed => State::Closed,
        };
        self.needs_flush = true;
    }

    /// Writes out what is buffered; what would block waits for WRITABLE.
    pub fn flush(&mut self) {
        self.needs_flush = false;
        let result = match &mut self.state {
            State::Open(ws) => ws.flush(),
            State::Closing { ws, .. } => ws.flush(),
            State::Answering(_) => return self.write_answer(),
            State::Head(_)
            | State::Routing(_)
            | State::Draining { .. }
            | State::Handshaking(_)
            | State::Closed => return,
        };
        match result {
            Ok(()) => {
                self.unflushed_from = None;
                self.output_pending = false;
                self.pending_bytes = 0;
            }
            Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => {
                if !matches!(error, WsError::ConnectionClosed) {
                    log::debug!("{}: flush error: {error}", self.peer);
                }
                self.state = State::Closed;
            }
        }
    }

    /// Drops the connection at once (handshake timeout, close deadline).
    pub fn abort(&mut self) {
        self.state = State::Closed;
    }

    /// Its timers, once per loop tick: a close past its deadline or a first
    /// exchange past the handshake deadline is dropped; a connection silent
    /// for `timeout` starts closing (1001); one silent for `heartbeat` is
    /// pinged once.
    pub fn on_tick(&mut self, now: Instant, timers: Timers) -> TickAction {
        if self.is_closed() {
            return TickAction::Nothing; // the loop removes it
        }
        if let State::Closing { since, .. } | State::Draining { since, .. } = self.state {
            if now.duration_since(since) < timers.close_deadline {
                return TickAction::Nothing;
            }
            self.abort();
            return TickAction::Dropped;
        }
        if self.is_handshaking() {
            if now.duration_since(self.accepted_at) < timers.handshake_timeout {
                return TickAction::Nothing;
            }
            log::debug!("{}: handshake timed out", self.peer);
            self.abort();
            return TickAction::HandshakeTimedOut;
        }
        let silent = now.duration_since(self.last_received);
        if silent >= timers.timeout {
            log::info!("{}: idle for {}s, closing", self.peer, silent.as_secs());
            self.close(CloseCode::Away, "idle timeout");
            TickAction::IdleClosed
        } else if silent >= timers.heartbeat && !self.ping_sent {
            self.ping();
            TickAction::Pinged
        } else {
            TickAction::Nothing
        }
    }

    /// Whether frames were queued since the last flush.
    pub fn needs_flush(&self) -> bool {
        self.needs_flush
    }

    /// The first message id written since the output was last fully
    /// flushed: what the client may not have received if dropped now.
    pub fn unflushed_from(&self) -> Option<i64> {
        self.unflushed_from
    }

    /// Whether frames are queued that the socket has not taken yet.
    pub fn has_output_pending(&self) -> bool {
        self.output_pending
    }

    /// Whether it is closing or closed (nothing more to start).
    pub fn is_closing(&self) -> bool {
        matches!(
            self.state,
            State::Closing { .. } | State::Draining { .. } | State::Closed
        )
    }

    /// Whether its unsent output just passed `limit` (true once, until it
    /// drains: see [`Connection::take_drained`]).
    pub fn newly_past(&mut self, limit: usize) -> bool {
        if self.told_output_full || !self.output_past(limit) {
            return false;
        }
        self.told_output_full = true;
        true
    }

    /// Whether output that was past the limit has all been written out
    /// since (true once).
    pub fn take_drained(&mut self) -> bool {
        if !self.told_output_full || self.output_pending {
            return false;
        }
        self.told_output_full = false;
        true
    }
}

/// The deadlines [`Connection::on_tick`] applies.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    /// Silence after which a ping goes out.
    pub heartbeat: Duration,
    /// Silence after which the connection is closed.
    pub timeout: Duration,
    /// How long a close may take before the connection is dropped.
    pub close_deadline: Duration,
    /// How long the first exchange (head, upgrade, HTTP answer) may take.
    pub handshake_timeout: Duration,
}

/// What a tick did to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickAction {
    /// Nothing was due.
    Nothing,
    /// A heartbeat ping was queued.
    Pinged,
    /// Silent too long: it is now closing (a departure).
    IdleClosed,
    /// Its first exchange took too long: dropped.
    HandshakeTimedOut,
    /// Its close took too long: dropped.
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::OriginCheck;

    #[test]
    fn origins_are_checked_only_when_configured() {
        let any = OriginCheck::default();
        assert!(any.permits(Some("https://evil.example"), None));
        let strict = OriginCheck::new(vec!["https://chat.example".into()], None);
        assert!(strict.permits(Some("https://chat.example"), None));
        assert!(!strict.permits(Some("https://evil.example"), None));
        assert!(
            strict.permits(None, None),
            "non-browser clients send no Origin"
        );
        let host = Some("127.0.0.1:8765");
        assert!(
            !strict.permits(Some("http://127.0.0.1:8765"), host),
            "no web client served"
        );
    }

    #[test]
    fn the_page_this_server_served_is_its_own_origin() {
        let check = OriginCheck::new(vec!["https://chat.example".into()], Some("http"));
        let host = Some("127.0.0.1:8765");
        assert!(check.permits(Some("http://127.0.0.1:8765"), host));
        assert!(check.permits(Some("http://LOCALHOST:8765"), Some("localhost:8765")));
        assert!(
            !check.permits(Some("https://127.0.0.1:8765"), host),
            "another scheme"
        );
        assert!(
            !check.permits(Some("http://127.0.0.1:9999"), host),
            "another port"
        );
        assert!(!check.permits(Some("http://evil.example"), host));
        assert!(
            !check.permits(Some("http://127.0.0.1:8765"), None),
            "no Host"
        );
        let tls = OriginCheck::new(vec!["https://chat.example".into()], Some("https"));
        assert!(tls.permits(Some("https://127.0.0.1:8765"), host));
        assert!(!tls.permits(Some("http://127.0.0.1:8765"), host));
    }
}
