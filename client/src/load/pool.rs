//! Many client connections on one mio `Poll`.
//!
//! The pool owns sockets and nothing else: it opens connections, writes
//! frames, flushes, and turns readiness into [`PoolEvent`]s for the scenario to
//! act on. It follows mio's `tcp_server` example: one `poll`, one lookup by
//! token, every ready connection drained until WouldBlock (after a short
//! read, the socket's own, without a syscall: [`super::socket`]).
//!
//! # Request ids
//! Every request goes out with an integer request id chosen by the caller
//! ([`Pool::send`]), and every frame comes back with the id it echoes
//! ([`PoolEvent::Frame`]; protocol 1.1): callers match replies to requests by
//! id, never by order or content. Ids only need to be unique among one
//! connection's requests in flight, because a reply comes back on the
//! connection that sent the request; each caller documents its numbering.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use protocol::{encode_request, ClientMessage, RequestId, ServerMessage};
use slab::Slab;
use tungstenite::protocol::WebSocketConfig;

use super::conn::{Conn, Happened};

/// A connection's key in the pool. A key is reused after its connection is
/// removed, so scenarios forget a key when they see its `Closed` event.
pub type ConnId = usize;

/// Readiness events taken per `poll` call.
const EVENTS_PER_POLL: usize = 4096;

/// Read buffer for connections that carry traffic: large enough that one read
/// usually takes every frame a busy connection has pending (a window of 16
/// Acks and deliveries is ~5 KiB). Not larger: tungstenite zero-fills the
/// whole free part of the buffer before every read, and at 64 KiB that
/// `memset` was ~14 % of chat-load's CPU at 1,000 × 4. Measured (10 s, same
/// server build, alternating with 64 KiB): chat-load 46 % of a core
/// against 51 % at 1,000 × 4, 38 % against 40–42 % at 100 × 16.
pub const READ_BUFFER_BUSY_BYTES: usize = 8 * 1024;

/// Read buffer for connections that mostly sit idle: tungstenite allocates it
/// eagerly, so 10,000 idle connections with the 128 KiB default would cost the
/// load generator 1.3 GB.
pub const READ_BUFFER_IDLE_BYTES: usize = 4 * 1024;

/// What happened on a connection.
#[derive(Debug)]
pub enum PoolEvent {
    /// The WebSocket handshake finished; frames may be sent.
    Opened(ConnId),
    /// A decoded frame from the server, with the request id it echoes: the id
    /// of the request it answers, or None on a push (a delivered message,
    /// Presence, a GroupInfo to another member).
    Frame(ConnId, ServerMessage, Option<u64>),
    /// A frame that did not decode as a server message.
    Undecodable(ConnId, String),
    /// The connection ended and was removed from the pool.
    Closed(ConnId, String),
}

impl PoolEvent {
    /// The connection the event is about.
    pub fn conn(&self) -> ConnId {
        match self {
            PoolEvent::Opened(conn)
            | PoolEvent::Frame(conn, _, _)
            | PoolEvent::Undecodable(conn, _)
            | PoolEvent::Closed(conn, _) => *conn,
        }
    }
}

/// Connections started by every pool of this process: the next one goes
/// to the server this count picks, so the pools (one per thread) together
/// spread their connections evenly over the servers.
static CONNECTIONS_STARTED: AtomicUsize = AtomicUsize::new(0);

/// A set of client connections to one server address, or to the servers of
/// one cluster in turn.
pub struct Pool {
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    addrs: Vec<SocketAddr>,
    config: WebSocketConfig,
    /// Connections with frames written but not flushed.
    unflushed: Vec<ConnId>,
    happened: Vec<Happened>,
}

impl Pool {
    /// A pool for `addrs` (at least one), each connection with a
    /// `read_buffer_bytes` buffer.
    pub fn new(addrs: &[SocketAddr], read_buffer_bytes: usize) -> io::Result<Pool> {
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no server address",
            ));
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer_bytes)
            // Frames accumulate until the loop flushes once per wake-up.
            .write_buffer_size(256 * 1024);
        Ok(Pool {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_PER_POLL),
            conns: Slab::new(),
            addrs: addrs.to_vec(),
            config,
            unflushed: Vec::new(),
            happened: Vec::new(),
        })
    }

    /// Starts a connection; `Opened` or `Closed` follows from [`Pool::poll`].
    pub fn connect(&mut self) -> io::Result<ConnId> {
        let turn = CONNECTIONS_STARTED.fetch_add(1, Ordering::Relaxed);
        let addr = self.addrs[turn % self.addrs.len()];
        let mut conn = Conn::connect(addr, self.config)?;
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        let stream = conn.stream_mut().expect("a new connection has a socket");
        self.poll.registry().register(
            stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(conn);
        Ok(id)
    }

    /// Connections in the pool (connecting, handshaking or open).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when the pool holds no connection.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Queues a request carrying `request_id` on an open connection; it goes
    /// out at the next [`Pool::flush`] or [`Pool::poll`]. Returns false if the
    /// connection is gone or not open yet.
    pub fn send(&mut self, id: ConnId, message: &ClientMessage, request_id: u64) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let was_unflushed = conn.is_unflushed();
        let frame = encode_request(message, Some(&RequestId::from(request_id)));
        let written = conn.write_text(frame);
        if written && !was_unflushed {
            self.unflushed.push(id);
        }
        written
    }

    /// Removes a connection without an event (the caller knows).
    pub fn close(&mut self, id: ConnId) {
        if let Some(mut conn) = self.conns.try_remove(id) {
            if let Some(stream) = conn.stream_mut() {
                let _ = self.poll.registry().deregister(stream);
            }
        }
    }

    /// Writes out every queued frame; connections that break are reported.
    pub fn flush(&mut self, out: &mut Vec<PoolEvent>) {
        for id in std::mem::take(&mut self.unflushed) {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if let Some(reason) = conn.flush() {
                self.conns.try_remove(id);
                out.push(PoolEvent::Closed(id, reason));
            }
            // A WouldBlock leaves the frames buffered; the writable event
            // that follows flushes them (Conn::on_ready).
        }
    }

    /// Flushes, waits up to `timeout` for readiness, and appends what happened.
    pub fn poll(&mut self, timeout: Duration, out: &mut Vec<PoolEvent>) -> io::Result<()> {
        self.flush(out);
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(error) => return Err(error),
        }
        for event in self.events.iter() {
            let id = event.token().0;
            let Some(conn) = self.conns.get_mut(id) else {
                continue; // removed earlier in this batch
            };
            conn.on_ready(
                event.is_read_closed() || event.is_error(),
                &mut self.happened,
            );
            let mut closed = false;
            for happened in self.happened.drain(..) {
                out.push(match happened {
                    Happened::Opened => PoolEvent::Opened(id),
                    Happened::Frame(message, request_id) => {
                        PoolEvent::Frame(id, message, request_id)
                    }
                    Happened::Undecodable(text) => PoolEvent::Undecodable(id, text),
                    Happened::Closed(reason) => {
                        closed = true;
                        PoolEvent::Closed(id, reason)
                    }
                });
            }
            if closed {
                // The socket is already dropped (Conn::close), which removed
                // it from epoll; only the slot is freed.
                self.conns.try_remove(id);
            }
        }
        Ok(())
    }
}
