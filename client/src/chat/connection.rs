//! One WebSocket connection to the server: blocking tungstenite over a
//! `TcpStream` whose short read timeout lets the caller's loop also watch the
//! keyboard and its timers.
//!
//! This module moves text frames and nothing else; it does not know what the
//! frames mean. Pings from the server are answered inside tungstenite's `read`,
//! which is why the loop must keep calling [`Connection::receive`].

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::{Error as WsError, HandshakeError, Message};

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

/// An open WebSocket to the server.
pub struct Connection {
    socket: WebSocket<TcpStream>,
}

impl Connection {
    /// Connects to a `ws://` URL and completes the WebSocket handshake.
    /// The error is a sentence for the user.
    pub fn open(url: &str) -> Result<Connection, String> {
        let request = url
            .into_client_request()
            .map_err(|error| format!("{url} is not a usable URL ({error})"))?;
        let uri = request.uri();
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err("wss:// needs TLS, which this build of chat does not include".into())
            }
            _ => return Err(format!("{url} is not a ws:// URL")),
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{url} names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let stream = connect_tcp(&host, port)?;
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|error| error.to_string())?;
        // Frames are small and interactive: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (socket, _response) =
            tungstenite::client(request, stream).map_err(|error| match error {
                HandshakeError::Failure(error) => format!("WebSocket handshake failed: {error}"),
                HandshakeError::Interrupted(_) => "the server did not finish the handshake".into(),
            })?;
        socket
            .get_ref()
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
