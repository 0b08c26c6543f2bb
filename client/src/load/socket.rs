//! The TCP socket under every chat-load connection: a mio `TcpStream` that
//! knows when the kernel's receive queue was left empty, and then answers
//! reads with `WouldBlock` without asking the kernel.
//!
//! The connections are registered edge-triggered, so a reader has to read
//! until `WouldBlock` before it may wait for the next event — and the read
//! that finds the queue empty is a syscall that carries nothing. One batch of
//! data per event makes that one wasted `recvfrom` per event. A short read
//! already says what the empty read would: see [`DrainAwareSocket`].

use std::io::{self, Read, Write};

use mio::net::TcpStream;

/// A mio `TcpStream` that skips the read which would return `EAGAIN`.
///
/// When a read returns `n` bytes with `0 < n < buf.len()`, the kernel's
/// receive queue was empty at that moment: it gave everything it had. The
/// socket is registered edge-triggered, so anything that arrives afterwards
/// raises a new readiness event for it. Until that event is handled
/// ([`DrainAwareSocket::new_event`]), every read can therefore answer
/// `WouldBlock` without a syscall, and no byte waits longer than it would
/// have: it is read when its event is handled, as it would have been anyway.
///
/// A full read (`n == buf.len()`) says nothing about what is left, so it
/// does not count; end-of-stream (0) and errors pass through unchanged.
/// The peer's FIN (or a reset) is the exception to "the queue was empty": it
/// is not a byte a short read takes, it can wait behind the bytes that were
/// taken, and no further event comes for it. So once an event says the peer
/// closed its side (or the socket has an error), every read asks the kernel,
/// until it reads that end.
///
/// Writes, and whoever reads (tungstenite directly, or rustls under it for
/// `wss://`), are unaffected: only reads of the socket itself are skipped.
pub struct DrainAwareSocket {
    socket: TcpStream,
    /// A short read left the receive queue empty and no event came since:
    /// reads answer `WouldBlock` without a syscall.
    drained: bool,
    /// An event said the peer closed its side or the socket has an error:
    /// a short read no longer means there is nothing left to read.
    peer_closed: bool,
}

impl DrainAwareSocket {
    /// Wraps a socket; the first read asks the kernel.
    pub fn new(socket: TcpStream) -> DrainAwareSocket {
        DrainAwareSocket {
            socket,
            drained: false,
            peer_closed: false,
        }
    }

    /// A readiness event arrived for this socket (any event: readable,
    /// writable, or both): the next read asks the kernel. `peer_closed`: the
    /// event said the peer closed its side or the socket has an error (mio's
    /// `is_read_closed` / `is_error`); from then on short reads are never
    /// trusted to have drained it.
    pub fn new_event(&mut self, peer_closed: bool) {
        self.drained = false;
        self.peer_closed |= peer_closed;
    }

    /// True while reads answer `WouldBlock` without a syscall.
    pub fn is_drained(&self) -> bool {
        self.drained
    }

    /// The socket, to ask it about itself (peer address, errors, options).
    pub fn get_ref(&self) -> &TcpStream {
        &self.socket
    }

    /// The socket, mutably (to register it with mio).
    pub fn get_mut(&mut self) -> &mut TcpStream {
        &mut self.socket
    }
}

impl Read for DrainAwareSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let count = self.socket.read(buf)?;
        self.drained = !self.peer_closed && count > 0 && count < buf.len();
        Ok(count)
    }
}

impl Write for DrainAwareSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.socket.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::thread;
    use std::time::{Duration, Instant};

    use mio::net::TcpStream;

    use super::DrainAwareSocket;

    /// A connected pair on 127.0.0.1: the wrapped non-blocking mio side, and
    /// the blocking std side that plays the server.
    fn pair() -> (DrainAwareSocket, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        (DrainAwareSocket::new(TcpStream::from_std(client)), server)
    }

    /// Reads until `want` bytes came (the kernel may deliver them in pieces),
    /// resetting before every read as a new event would; gives up after 5 s.
    fn read_exactly(socket: &mut DrainAwareSocket, want: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} bytes",
                got.len()
            );
            socket.new_event(false);
            match socket.read(&mut buf) {
                Ok(0) => panic!("end-of-stream after {} of {want} bytes", got.len()),
                Ok(count) => got.extend_from_slice(&buf[..count]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(error) => panic!("read: {error}"),
            }
        }
        got
    }

    /// Waits until the kernel has `count` bytes queued for the socket (so a
    /// read is sure to find them), without reading them.
    fn wait_queued(socket: &DrainAwareSocket, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; count];
        loop {
            match socket.get_ref().peek(&mut buf) {
                Ok(queued) if queued >= count => return,
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => panic!("peek: {error}"),
            }
            assert!(Instant::now() < deadline, "{count} bytes never arrived");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_short_read_answers_would_block_until_the_next_event() {
        let (mut socket, mut server) = pair();
        server.write_all(b"hello").unwrap();
        assert_eq!(read_exactly(&mut socket, 5), b"hello");
        assert!(socket.is_drained(), "a short read leaves the queue empty");

        // Data arrives meanwhile: without a new event it is not read (nor
        // consumed: the kernel still holds it).
        server.write_all(b"world").unwrap();
        wait_queued(&socket, 5);
        let mut buf = [0u8; 64];
        let error = socket.read(&mut buf).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::WouldBlock);
        let error = socket.read(&mut buf).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::WouldBlock, "until the next event");
        wait_queued(&socket, 5);

        // The event that arrival raised: now the read asks the kernel.
        socket.new_event(false);
        assert!(!socket.is_drained());
        assert_eq!(socket.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"world");
        assert!(socket.is_drained());
    }

    #[test]
    fn a_full_read_does_not_count_as_drained() {
        let (mut socket, mut server) = pair();
        server.write_all(b"0123456789").unwrap();
        wait_queued(&socket, 10);
        let mut buf = [0u8; 4];
        assert_eq!(socket.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"0123");
        assert!(
            !socket.is_drained(),
            "a full buffer says nothing of the rest"
        );
        // No new event: the rest is read all the same.
        assert_eq!(socket.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"4567");
        assert!(!socket.is_drained());
        assert_eq!(socket.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"89");
        assert!(socket.is_drained());
    }

    #[test]
    fn end_of_stream_passes_through() {
        let (mut socket, server) = pair();
        server.shutdown(Shutdown::Write).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 64];
        loop {
            socket.new_event(false);
            match socket.read(&mut buf) {
                Ok(count) => {
                    assert_eq!(count, 0, "end-of-stream reads 0");
                    break;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "end-of-stream never came");
                    thread::sleep(Duration::from_millis(1));
                }
                Err(error) => panic!("read: {error}"),
            }
        }
        assert!(!socket.is_drained(), "end-of-stream does not set the flag");
        assert_eq!(socket.read(&mut buf).unwrap(), 0, "and reads 0 again");
    }

    #[test]
    fn after_the_peer_closed_a_short_read_is_not_trusted() {
        // Data and the FIN behind it, both queued before the read: one
        // event says readable and read-closed. The short read takes the
        // data; the next read must reach the FIN, as no event will follow.
        let (mut socket, mut server) = pair();
        server.write_all(b"bye").unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        wait_queued(&socket, 3);
        thread::sleep(Duration::from_millis(20)); // let the FIN land too
        socket.new_event(true);
        let mut buf = [0u8; 64];
        assert_eq!(socket.read(&mut buf).unwrap(), 3);
        assert!(!socket.is_drained());
        assert_eq!(socket.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn writes_pass_through() {
        let (mut socket, mut server) = pair();
        socket.write_all(b"ping").unwrap();
        socket.flush().unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
}
