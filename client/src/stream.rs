//! The byte stream under a WebSocket: the socket itself (`ws://`), or a
//! rustls client session over it (`wss://`). Generic over the socket, so
//! `chat`'s blocking `std` socket and `chat-load`'s non-blocking mio socket
//! share it.

use std::io::{self, Read, Write};

use rustls::{ClientConnection, StreamOwned};

/// Plain, or TLS over the socket `S`.
pub enum Stream<S: Read + Write> {
    /// `ws://`.
    Plain(S),
    /// `wss://`.
    Tls(Box<StreamOwned<ClientConnection, S>>),
}

impl<S: Read + Write> Stream<S> {
    /// The socket underneath.
    pub fn socket(&self) -> &S {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    /// The socket underneath, mutably (to register it with mio).
    pub fn socket_mut(&mut self) -> &mut S {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &mut tls.sock,
        }
    }
}

impl<S: Read + Write> Read for Stream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl<S: Read + Write> Write for Stream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            // rustls's plaintext buffer is full (a non-blocking socket that
            // cannot take more yet): say WouldBlock, so the caller waits for
            // WRITABLE rather than tungstenite reading 0 as a broken
            // connection.
            Stream::Tls(tls) => match tls.write(buf)? {
                0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
                written => Ok(written),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}
