//! One WebSocket connection to the server: blocking tungstenite over a
//! `TcpStream` whose short read timeout lets the caller's loop also watch the
//! keyboard and its timers.
//!
//! `wss://` runs the same blocking tungstenite over a rustls client session,
//! trusting what [`crate::tls`] says (the system's store and `--ca-file`).
//!
//! This module moves text frames and nothing else; it does not know what the
//! frames mean. Pings from the server are answered inside tungstenite's `read`,
//! which is why the loop must keep calling [`Connection::receive`].

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::{Error as WsError, HandshakeError, Message};

use crate::tls::{self, TrustError};

/// How long one TCP connect attempt may take per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the HTTP upgrade may take before the attempt counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `receive` waits for a frame. It bounds how late the loop
/// notices a typed line or a timer (50 ms feels instant) while costing only
/// twenty wake-ups a second.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long `close` waits for the server to answer our close frame.
const CLOSE_WAIT: Duration = Duration::from_millis(300);

/// What one [`Connection::receive`] call saw.
#[derive(Debug)]
pub enum Received {
    /// A text frame (one JSON object by the protocol).
    Frame(String),
    /// Nothing within [`POLL_INTERVAL`] (or only a control frame).
    Idle,
    /// A binary frame, which the protocol never sends to clients.
    Binary,
    /// The connection is over; the text says why, for a status line.
    Closed(String),
}

/// The TLS settings for `wss://`, set once ([`trust`]), or on the first
/// `wss://` connection with the system's trust store alone.
static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Trusts the system's trust store and the certificates in `ca_file` for
/// `wss://` (see [`crate::tls`]). The error's `Display` is a sentence.
pub fn trust(ca_file: Option<&Path>) -> Result<(), TrustError> {
    let _ = TLS.set(tls::client_config(ca_file)?);
    Ok(())
}

/// The TLS settings, made with the system's trust store if [`trust`] was
/// not called.
fn tls_config() -> Result<Arc<ClientConfig>, String> {
    if TLS.get().is_none() {
        trust(None).map_err(|error| error.to_string())?;
    }
    TLS.get()
        .cloned()
        .ok_or_else(|| "TLS settings are missing".to_string())
}

/// The byte stream under the WebSocket: plain TCP, or TLS over it.
type Stream = crate::stream::Stream<TcpStream>;

/// An open WebSocket to the server.
pub struct Connection {
    socket: WebSocket<Stream>,
}

impl Connection {
    /// Connects to a `ws://` URL and completes the WebSocket handshake.
    /// The error is a sentence for the user.
    pub fn open(url: &str) -> Result<Connection, String> {
        let request = url
            .into_client_request()
            .map_err(|error| format!("{url} is not a usable URL ({error})"))?;
        let uri = request.uri();
        let tls = match uri.scheme_str() {
            Some("ws") => None,
            Some("wss") => Some(tls_config()?),
            _ => return Err(format!("{url} is not a ws:// or wss:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url} names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let tcp = connect_tcp(&host, port)?;
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|error| error.to_string())?;
        // Frames are small and interactive: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|error| format!("{host} is not a TLS server name ({error})"))?;
                let session = ClientConnection::new(config, name)
                    .map_err(|error| format!("cannot start TLS: {error}"))?;
                Stream::Tls(Box::new(tls_handshake(session, tcp, &host)?))
            }
        };
        let (socket, _response) =
            tungstenite::client(request, stream).map_err(|error| match error {
                HandshakeError::Failure(error) => format!("WebSocket handshake failed: {error}"),
                HandshakeError::Interrupted(_) => "the server did not finish the handshake".into(),
            })?;
        socket
            .get_ref()
            .socket()
            .set_read_timeout(Some(POLL_INTERVAL))
            .map_err(|error| error.to_string())?;
        Ok(Connection { socket })
    }

    /// Sends one text frame.
    pub fn send(&mut self, text: String) -> Result<(), String> {
        self.socket
            .send(Message::text(text))
            .map_err(|error| format!("could not send: {error}"))
    }

    /// Waits up to [`POLL_INTERVAL`] for the next frame.
    pub fn receive(&mut self) -> Received {
        match self.socket.read() {
            Ok(Message::Text(text)) => Received::Frame(text.as_str().to_string()),
            Ok(Message::Binary(_)) => Received::Binary,
            Ok(Message::Close(frame)) => {
                // tungstenite queued the close reply; push it out now.
                let _ = self.socket.flush();
                Received::Closed(match frame {
                    Some(frame) if !frame.reason.is_empty() => {
                        format!("the server closed the connection ({})", frame.reason)
                    }
                    _ => "the server closed the connection".into(),
                })
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Received::Idle,
            Err(WsError::Io(error)) if is_timeout(&error) => Received::Idle,
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                Received::Closed("the connection was closed".into())
            }
            Err(error) => Received::Closed(format!("the connection failed: {error}")),
        }
    }

    /// Closes politely: a close frame, then a short wait for the server's.
    pub fn close(mut self) {
        if self.socket.close(None).is_err() {
            return;
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        while Instant::now() < deadline {
            match self.socket.read() {
                Err(WsError::Io(error)) if is_timeout(&error) => continue,
                Err(_) => return,
                Ok(_) => continue,
            }
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Completes the TLS handshake before the WebSocket one, so a refused
/// certificate is explained in words ([`tls::explain`]).
fn tls_handshake(
    mut session: ClientConnection,
    mut tcp: TcpStream,
    host: &str,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    while session.is_handshaking() {
        if let Err(error) = session.complete_io(&mut tcp) {
            return Err(match tls::explain_handshake(&error, host) {
                Some(explained) => explained,
                None if is_timeout(&error) => format!(
                    "{host} did not finish the TLS handshake within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
                None => format!("TLS with {host} failed: {error}"),
            });
        }
    }
    Ok(StreamOwned::new(session, tcp))
}

/// Tries each address of `host` in turn.
fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, String> {
    let addresses = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host}: {error}"))?;
    let mut last_error = format!("{host} has no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = format!("cannot connect to {address}: {error}"),
        }
    }
    Err(last_error)
}
