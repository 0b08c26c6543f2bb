//! One WebSocket client connection over a non-blocking mio `TcpStream`
//! (wrapped in a [`DrainAwareSocket`], which skips the read that would only
//! return `EAGAIN`).
//!
//! The connection is an explicit state machine driven by readiness events:
//! `Connecting` (non-blocking TCP connect issued) → `Handshaking` (tungstenite's
//! `MidHandshake`, resumed on every event until it stops returning WouldBlock)
//! → `Open` → `Closed`. [`Conn::on_ready`] advances it and collects what
//! happened; it never blocks. Every event, whatever the state, first tells
//! the socket that a new edge came ([`DrainAwareSocket::new_event`]), so
//! reads ask the kernel again. With [`use_tls`] every connection speaks
//! `wss://`: a rustls client session under tungstenite, whose handshake also
//! resumes on WouldBlock; whom it trusts is [`crate::tls`]'s business.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use mio::net::TcpStream;
use protocol::{decode_reply, RequestId, ServerMessage};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tungstenite::client::client_with_config;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::socket::DrainAwareSocket;
use crate::tls::{self, TrustError};

/// The TLS settings when connecting with `wss://` (set once by [`use_tls`]).
static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Makes every later connection use TLS, trusting the system's trust store
/// and the certificates in `ca_file` (PEM; see [`crate::tls`]).
pub fn use_tls(ca_file: Option<&Path>) -> Result<(), TrustError> {
    let _ = TLS.set(tls::client_config(ca_file)?);
    Ok(())
}

/// Whether connections use TLS ([`use_tls`] was called).
pub fn tls_in_use() -> bool {
    TLS.get().is_some()
}

/// The byte stream under a connection's WebSocket.
pub type Stream = crate::stream::Stream<DrainAwareSocket>;

/// Where a connection is in its life.
pub enum State {
    /// TCP connect in progress; writable means it finished (or failed).
    Connecting(DrainAwareSocket),
    /// HTTP upgrade in progress.
    Handshaking(Box<MidHandshake<ClientHandshake<Stream>>>),
    /// Frames flow.
    Open(Box<WebSocket<Stream>>),
    /// Finished; the socket is dropped.
    Closed,
}

impl State {
    /// True once frames may be sent.
    pub fn is_open(&self) -> bool {
        matches!(self, State::Open(_))
    }

    /// True after the connection ended (for any reason).
    pub fn is_closed(&self) -> bool {
        matches!(self, State::Closed)
    }
}

/// What one readiness event produced.
#[derive(Debug)]
pub enum Happened {
    /// The handshake completed.
    Opened,
    /// A text frame from the server, decoded, with the request id it echoes
    /// (see [`request_number`]).
    Frame(ServerMessage, Option<u64>),
    /// A frame that did not decode (counted as a protocol error by scenarios).
    Undecodable(String),
    /// The connection ended; the string says why.
    Closed(String),
}

/// One client connection.
pub struct Conn {
    state: State,
    url: String,
    config: WebSocketConfig,
    /// Frames were written into tungstenite's buffer but not yet flushed.
    unflushed: bool,
}

impl Conn {
    /// Starts a non-blocking connect; the caller registers [`Conn::stream_mut`].
    pub fn connect(addr: SocketAddr, config: WebSocketConfig) -> io::Result<Conn> {
        let stream = DrainAwareSocket::new(TcpStream::connect(addr)?);
        let scheme = if TLS.get().is_some() { "wss" } else { "ws" };
        Ok(Conn {
            state: State::Connecting(stream),
            url: format!("{scheme}://{addr}/"),
            config,
            unflushed: false,
        })
    }

    /// The server's address as this connection names it (`127.0.0.1:8765`).
    fn server(&self) -> &str {
        let without_scheme = self.url.split_once("://").map_or("", |(_, rest)| rest);
        without_scheme.trim_end_matches('/')
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The socket, for (de)registration; None once closed.
    pub fn stream_mut(&mut self) -> Option<&mut TcpStream> {
        self.socket_mut().map(DrainAwareSocket::get_mut)
    }

    /// The wrapped socket, whatever the state; None once closed.
    fn socket_mut(&mut self) -> Option<&mut DrainAwareSocket> {
        match &mut self.state {
            State::Connecting(socket) => Some(socket),
            State::Handshaking(mid) => Some(mid.get_mut().get_mut().socket_mut()),
            State::Open(ws) => Some(ws.get_mut().socket_mut()),
            State::Closed => None,
        }
    }

    /// True when written frames wait for a flush.
    pub fn is_unflushed(&self) -> bool {
        self.unflushed
    }

    /// Queues one text frame (sent by the next [`Conn::flush`]). Returns false
    /// when the connection is not open.
    pub fn write_text(&mut self, text: String) -> bool {
        let State::Open(ws) = &mut self.state else {
            return false;
        };
        match ws.write(Message::text(text)) {
            Ok(()) => {
                self.unflushed = true;
                true
            }
            // The frame sits in tungstenite's buffer; a flush retries it.
            Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                self.unflushed = true;
                true
            }
            Err(_) => false,
        }
    }

    /// Writes out buffered frames; WouldBlock leaves them for the next
    /// writable event. Returns the close reason if the connection broke.
    pub fn flush(&mut self) -> Option<String> {
        let State::Open(ws) = &mut self.state else {
            self.unflushed = false;
            return None;
        };
        match ws.flush() {
            Ok(()) => {
                self.unflushed = false;
                None
            }
            Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => None,
            Err(error) => Some(self.close(format!("write: {error}"))),
        }
    }

    /// Drops the socket. Returns the reason, for reporting.
    pub fn close(&mut self, reason: String) -> String {
        self.state = State::Closed;
        self.unflushed = false;
        reason
    }

    /// Advances the machine after a readiness event, appending what happened.
    /// Spurious events are harmless: every step stops at WouldBlock.
    /// `peer_closed`: the event said the peer closed its side or the socket
    /// has an error (mio's `is_read_closed() || is_error()`), so reads must
    /// reach that end (see [`DrainAwareSocket`]).
    pub fn on_ready(&mut self, peer_closed: bool, out: &mut Vec<Happened>) {
        // A new edge: whatever a short read concluded before, ask the kernel.
        if let Some(socket) = self.socket_mut() {
            socket.new_event(peer_closed);
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        self.state = match state {
            State::Connecting(stream) => self.after_connect(stream, out),
            State::Handshaking(mid) => self.after_handshake_round(mid.handshake(), out),
            other => other,
        };
        if self.state.is_open() {
            // A handshake may have read frames along with the HTTP response,
            // so reading right after Opened is required, not an optimisation.
            self.read_frames(out);
        }
        if self.state.is_open() && self.unflushed {
            if let Some(reason) = self.flush() {
                out.push(Happened::Closed(reason));
            }
        }
    }

    /// Connecting → Handshaking/Open, or stays Connecting on a spurious event.
    fn after_connect(&self, stream: DrainAwareSocket, out: &mut Vec<Happened>) -> State {
        match stream.get_ref().take_error() {
            Ok(Some(error)) | Err(error) => {
                out.push(Happened::Closed(format!("connect: {error}")));
                return State::Closed;
            }
            Ok(None) => {}
        }
        match stream.get_ref().peer_addr() {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotConnected => {
                return State::Connecting(stream)
            }
            Err(error) => {
                out.push(Happened::Closed(format!("connect: {error}")));
                return State::Closed;
            }
        }
        // Latency is the point of the exercise: never let Nagle hold a frame.
        let _ = stream.get_ref().set_nodelay(true);
        let stream = match TLS.get() {
            None => Stream::Plain(stream),
            Some(config) => {
                let session = stream
                    .get_ref()
                    .peer_addr()
                    .map_err(|e| e.to_string())
                    .and_then(|peer| {
                        let name = ServerName::IpAddress(peer.ip().into());
                        ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())
                    });
                match session {
                    Ok(session) => Stream::Tls(Box::new(StreamOwned::new(session, stream))),
                    Err(error) => {
                        out.push(Happened::Closed(format!("tls: {error}")));
                        return State::Closed;
                    }
                }
            }
        };
        let started = client_with_config(self.url.as_str(), stream, Some(self.config));
        self.after_handshake_round(started, out)
    }

    /// Maps one round of the handshake machine to the next state.
    fn after_handshake_round(
        &self,
        result: Result<
            (WebSocket<Stream>, tungstenite::handshake::client::Response),
            HandshakeError<ClientHandshake<Stream>>,
        >,
        out: &mut Vec<Happened>,
    ) -> State {
        match result {
            Ok((ws, _response)) => {
                out.push(Happened::Opened);
                State::Open(Box::new(ws))
            }
            Err(HandshakeError::Interrupted(mid)) => State::Handshaking(Box::new(mid)),
            Err(HandshakeError::Failure(error)) => {
                let reason = match &error {
                    tungstenite::Error::Io(io) => tls::explain_handshake(io, self.server())
                        .map(|explained| format!("handshake: {explained}"))
                        .unwrap_or_else(|| format!("handshake: {error}")),
                    _ => format!("handshake: {error}"),
                };
                out.push(Happened::Closed(reason));
                State::Closed
            }
        }
    }

    /// Reads and decodes every frame available, until WouldBlock (from the
    /// kernel, or from the socket after a short read: [`DrainAwareSocket`]).
    fn read_frames(&mut self, out: &mut Vec<Happened>) {
        let State::Open(ws) = &mut self.state else {
            return;
        };
        let reason = loop {
            match ws.read() {
                Ok(Message::Text(text)) => match decode_reply(text.as_str()) {
                    Ok((message, request_id)) => {
                        out.push(Happened::Frame(message, request_number(request_id)))
                    }
                    Err(error) => out.push(Happened::Undecodable(format!("{error:?}: {text}"))),
                },
                Ok(Message::Close(frame)) => {
                    // Best effort: let tungstenite send its close reply.
                    let _ = ws.flush();
                    break match frame {
                        Some(frame) => format!("server closed ({} {})", frame.code, frame.reason),
                        None => "server closed".to_string(),
                    };
                }
                // Pings are answered by tungstenite on the next read/flush.
                Ok(_) => {}
                Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    return
                }
                Err(tungstenite::Error::ConnectionClosed) => break "connection closed".to_string(),
                Err(error) => break format!("read: {error}"),
            }
        };
        out.push(Happened::Closed(self.close(reason)));
    }
}

/// The echoed request id as chat-load's own kind of id: chat-load only ever
/// sends non-negative integers, so anything else (none, a string, a negative
/// number) names no request of ours and reads as None.
pub fn request_number(request_id: Option<RequestId>) -> Option<u64> {
    match request_id {
        Some(RequestId::Number(number)) => u64::try_from(number).ok(),
        _ => None,
    }
}
