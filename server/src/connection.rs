//! One client connection: an explicit state machine around a non-blocking
//! tungstenite WebSocket over a mio `TcpStream`.
//!
//! ```text
//! Handshaking ──(upgrade done)──▶ Open ──(we or the peer close)──▶ Closing ──▶ Closed
//!      └──────────(error, timeout)──────────────────────────────────────────▶ Closed
//! ```
//!
//! The connection never blocks: a handshake that would block is kept as
//! tungstenite's `MidHandshake` and resumed on the next readiness event;
//! reads drain until `WouldBlock`; writes go into tungstenite's buffer and are
//! flushed by the loop once per turn, the rest on the next WRITABLE event.
//! It knows nothing of the protocol's messages: text frames go up to the loop.
//! Underneath is a [`Transport`]: the socket, or TLS over it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

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
use crate::tls::Transport;

type Handshake = MidHandshake<ServerHandshake<Transport, OriginCheck>>;

/// The handshake's one policy: with `--allowed-origin` given, a request that
/// carries an `Origin` header (browsers always do) must name one of them, so
/// other web pages cannot open sockets to the server with a user's cookies or
/// network position. Requests without `Origin` (non-browser clients) pass.
#[derive(Clone, Debug, Default)]
pub struct OriginCheck {
    allowed: Arc<[String]>,
}

impl OriginCheck {
    /// Allows exactly these origins (none given: any).
    pub fn new(allowed: Vec<String>) -> Self {
        OriginCheck {
            allowed: allowed.into(),
        }
    }

    fn permits(&self, origin: Option<&str>) -> bool {
        match origin {
            _ if self.allowed.is_empty() => true,
            None => true,
            Some(origin) => self.allowed.iter().any(|allowed| allowed == origin),
        }
    }
}

impl Callback for OriginCheck {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let origin = request
            .headers()
            .get("origin")
            .map(|value| value.to_str().unwrap_or("<not ascii>"));
        if self.permits(origin) {
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

/// Where a connection is in its life.
enum State {
    /// The HTTP upgrade is in progress (resumable).
    Handshaking(Handshake),
    /// Frames flow both ways.
    Open(WebSocket<Transport>),
    /// A close frame was sent or received; flushing and waiting for the
    /// peer's close until the loop's close deadline.
    Closing(WebSocket<Transport>),
    /// Done: the loop removes it.
    Closed,
}

/// What one read step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEvent {
    /// The WebSocket upgrade just completed.
    Opened,
    /// A text frame.
    Text(Utf8Bytes),
    /// A binary frame (the protocol refuses these).
    Binary,
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
    pub accepted_at: Instant,
    /// When anything last arrived from the client.
    pub last_received: Instant,
    /// When the loop started closing it, if it did.
    pub closing_since: Option<Instant>,
    /// Whether a heartbeat ping went out since the last thing received.
    pub ping_sent: bool,
    /// Whether frames were queued since the last flush.
    pub needs_flush: bool,
    /// The first message id written since the output was last fully
    /// flushed: what the client may not have received if dropped now.
    pub unflushed_from: Option<i64>,
    /// Frames were queued that the socket has not taken yet.
    pub output_pending: bool,
    /// Bytes of frames queued since the output was last fully flushed (an
    /// upper bound on what is unsent).
    pending_bytes: usize,
    /// The dispatcher was told the output is past
    /// [`crate::config::PUSH_BYTES_MAX`] and not yet that it drained.
    pub told_output_full: bool,
    /// Its place in its address's connection count, given back on drop.
    _address_ticket: AddressTicket,
}

impl Connection {
    /// Starts the server handshake on an accepted socket, which holds
    /// `ticket` (its address's place) for as long as it lives.
    pub fn accept(
        (id, peer, ticket): (ConnId, SocketAddr, AddressTicket),
        stream: Transport,
        config: WebSocketConfig,
        origins: OriginCheck,
    ) -> Self {
        let now = Instant::now();
        let state = match tungstenite::accept_hdr_with_config(stream, origins, Some(config)) {
            Ok(ws) => State::Open(ws),
            Err(HandshakeError::Interrupted(mid)) => State::Handshaking(mid),
            Err(HandshakeError::Failure(error)) => {
                log::debug!("{peer}: handshake failed: {error}");
                State::Closed
            }
        };
        Connection {
            id,
            peer,
            state,
            accepted_at: now,
            last_received: now,
            closing_since: None,
            ping_sent: false,
            needs_flush: false,
            unflushed_from: None,
            output_pending: false,
            pending_bytes: 0,
            told_output_full: false,
            _address_ticket: ticket,
        }
    }

    /// Whether the WebSocket upgrade is still in progress.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshaking(_))
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
        match &mut self.state {
            State::Handshaking(mid) => Some(mid.get_mut().get_mut().socket_mut()),
            State::Open(ws) | State::Closing(ws) => Some(ws.get_mut().socket_mut()),
            State::Closed => None,
        }
    }

    /// Advances the connection by one step of reading.
    pub fn read(&mut self) -> ReadEvent {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Handshaking(mid) => self.resume_handshake(mid),
            State::Open(ws) => self.read_open(ws),
            State::Closing(ws) => self.read_closing(ws),
            State::Closed => ReadEvent::Closed,
        }
    }

    fn resume_handshake(&mut self, mid: Handshake) -> ReadEvent {
        match mid.handshake() {
            Ok(ws) => {
                self.state = State::Open(ws);
                ReadEvent::Opened
            }
            Err(HandshakeError::Interrupted(mid)) => {
                self.state = State::Handshaking(mid);
                ReadEvent::WouldBlock
            }
            Err(HandshakeError::Failure(error)) => {
                log::debug!("{}: handshake failed: {error}", self.peer);
                ReadEvent::Closed
            }
        }
    }

    fn read_open(&mut self, mut ws: WebSocket<Transport>) -> ReadEvent {
        loop {
            match ws.read() {
                Ok(message) => {
                    self.last_received = Instant::now();
                    self.ping_sent = false;
                    match message {
                        Message::Text(text) => {
                            self.state = State::Open(ws);
                            return ReadEvent::Text(text);
                        }
                        Message::Binary(_) => {
                            self.state = State::Open(ws);
                            return ReadEvent::Binary;
                        }
                        Message::Close(_) => {
                            // tungstenite queued the reply; send it and finish.
                            let _ = ws.flush();
                            return ReadEvent::Closed;
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                            self.needs_flush = true; // a pong may be queued
                        }
                    }
                }
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.state = State::Open(ws);
                    return ReadEvent::WouldBlock;
                }
                Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                    log::info!(
                        "{}: frame of {size} bytes over the {max_size}-byte limit; closing",
                        self.peer
                    );
                    self.state = State::Open(ws);
                    self.close(CloseCode::Size, "frame too large");
                    return ReadEvent::TooLarge;
                }
                Err(WsError::Utf8(_)) => {
                    log::info!("{}: a text frame is not UTF-8; closing", self.peer);
                    self.state = State::Open(ws);
                    self.close(CloseCode::Invalid, "text frame is not UTF-8");
                    return ReadEvent::NotUtf8;
                }
                Err(error) => {
                    log::debug!("{}: read error: {error}", self.peer);
                    return ReadEvent::Closed;
                }
            }
        }
    }

    fn read_closing(&mut self, mut ws: WebSocket<Transport>) -> ReadEvent {
        loop {
            match ws.read() {
                Ok(_) => continue, // frames after our close are discarded
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.state = State::Closing(ws);
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
                match ws.close(Some(frame)) {
                    Ok(()) => State::Closing(ws),
                    Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                        State::Closing(ws)
                    }
                    Err(_) => State::Closed,
                }
            }
            State::Closing(ws) => State::Closing(ws),
            State::Handshaking(_) | State::Closed => State::Closed,
        };
        self.needs_flush = true;
        self.closing_since.get_or_insert_with(Instant::now);
    }

    /// Writes out what is buffered; what would block waits for WRITABLE.
    pub fn flush(&mut self) {
        self.needs_flush = false;
        let result = match &mut self.state {
            State::Open(ws) | State::Closing(ws) => ws.flush(),
            State::Handshaking(_) | State::Closed => return,
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
}

#[cfg(test)]
mod tests {
    use super::OriginCheck;

    #[test]
    fn origins_are_checked_only_when_configured() {
        let any = OriginCheck::default();
        assert!(any.permits(Some("https://evil.example")));
        let strict = OriginCheck::new(vec!["https://chat.example".into()]);
        assert!(strict.permits(Some("https://chat.example")));
        assert!(!strict.permits(Some("https://evil.example")));
        assert!(strict.permits(None), "non-browser clients send no Origin");
    }
}
