//! The event loop: one thread, one `mio::Poll`, everything non-blocking.
//!
//! Each turn: wait for readiness (or the next tick), then
//! 1. accept new sockets until `WouldBlock` (past `--max-connections`, or
//!    past `--max-connections-per-address` from one address, answer HTTP 503
//!    and drop);
//! 2. for each ready connection, advance its request head or handshake
//!    (answering a plain HTTP request from [`http`]) or read its frames (up
//!    to a budget) and hand each to the [`Dispatcher`];
//! 3. drain the completion channel (storage replies, hashing results) into
//!    the dispatcher;
//! 4. on a tick: heartbeats, timeouts, the stats line;
//! 5. flush every connection that was written to this turn.
//!
//! The dispatcher's [`Effects`] are applied by [`Server::apply`], the only
//! place frames reach connections and commands reach the storage and hashing
//! threads. Every connection leaves through [`Server::remove`].

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocketConfig;

use crate::address_cap::AddressCap;
use crate::bus::Bus;
use crate::completion::{self, Completion, ConnId};
use crate::config::{self, Config};
use crate::connection::{Connection, OriginCheck, ReadEvent, TickAction, Timers, WriteError};
use crate::dispatcher::{CloseReason, DispatchLimits, Dispatcher, Effects, Outbound};
use crate::hasher::{FairQueue, Hasher};
use crate::http::{self, ClusterHealth, Condition, HeadError, Health, Live, Site};
use crate::metrics::{self, CloseKind, Histograms, LoopCounters, Refusal};
use crate::storage::{self, Command, PurgeSchedule, StorageHandle};
use crate::tls::{self, Transport};

/// Reserved tokens, far above any slab key.
const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// How often reads paused by storage back-pressure are retried.
const PAUSED_READ_RETRY: Duration = Duration::from_millis(5);

/// How long a closing connection may wait for the peer's close frame.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The data directory or database could not be opened.
    Storage(storage::OpenError),
    /// The socket could not be bound, or a thread not spawned.
    Io(io::Error),
    /// The TLS certificate or key could not be loaded.
    Tls(String),
    /// Cluster mode: the NATS server could not be reached.
    Bus(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Storage(error) => write!(f, "{error}"),
            StartError::Io(error) => write!(f, "{error}"),
            StartError::Tls(detail) => write!(f, "cannot set up TLS: {detail}"),
            StartError::Bus(detail) => write!(f, "cluster mode: {detail}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(error: io::Error) -> Self {
        StartError::Io(error)
    }
}

/// The running server: the loop's state.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    connections: Slab<Connection>,
    /// Connections per address, against `--max-connections-per-address`.
    address_cap: AddressCap,
    dispatcher: Dispatcher,
    storage: StorageHandle,
    hasher: Hasher,
    /// The other servers of a cluster (nothing when alone).
    bus: Bus,
    completions: Receiver<Completion>,
    config: Config,
    ws_config: WebSocketConfig,
    origins: OriginCheck,
    /// What plain HTTP requests are answered with.
    site: Site,
    /// The counters `/metrics` reports, bumped where the loop does the work.
    counters: LoopCounters,
    /// The histograms the storage and hashing threads keep.
    histograms: Histograms,
    /// The TLS configuration when serving `wss://`.
    tls: Option<Arc<rustls::ServerConfig>>,
    next_serial: u64,
    /// Slots with more frames to read than one turn's budget allowed.
    unfinished_reads: VecDeque<ConnId>,
    /// Slots written to this turn.
    to_flush: Vec<usize>,
    /// Connections whose output the dispatcher was told is full.
    output_full: Vec<ConnId>,
    /// Connections left unread for being over their message rate.
    throttled: Vec<ConnId>,
    /// When the throttled connections are read again.
    throttled_retry_at: Instant,
    /// Storage commands waiting for their connection's output to drain.
    after_flush: Vec<(ConnId, Command)>,
    /// Effects buffer, reused across turns.
    effects: Effects,
    hash_in_flight: usize,
    next_tick: Instant,
    /// When the next phase of confirmations is written.
    next_confirm_tick: Instant,
    stats: StatsWindow,
    purge: PurgeSchedule,
    shutdown: Option<Instant>,
}

/// What the stats line compares against.
struct StatsWindow {
    started: Instant,
    messages: u64,
}

impl Server {
    /// Opens the database, binds the socket and starts the worker threads.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (done, completions) = completion::channel(waker);
        let histograms = Histograms::default();
        let (storage, snapshot) = storage::open(&config, done.clone(), histograms.clone())
            .map_err(StartError::Storage)?;
        let bus = Bus::start(config.cluster.as_ref(), done.clone()).map_err(StartError::Bus)?;
        let hasher = Hasher::start(
            (config.hash_workers, config.pbkdf2_iterations),
            FairQueue::new(config::HASH_QUEUE_MAX, hash_jobs_per_address(&config)),
            done,
            histograms.hash_seconds.clone(),
        )?;

        let mut listener = TcpListener::bind(config.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;

        let limits = DispatchLimits {
            storage_backlog_max: config::STORAGE_BUSY_MARK,
            rates: config.rate_limits,
            max_group_size: config.max_group_size,
            cluster: config.cluster.is_some(),
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config::CODEC_READ_BYTES)
            .write_buffer_size(config::WRITE_BUFFER_BYTES)
            .max_write_buffer_size(config::SLOW_CONSUMER_BYTES)
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let tls = match &config.tls {
            Some((cert, key)) => {
                Some(tls::server_config(cert, key).map_err(|e| StartError::Tls(e.to_string()))?)
            }
            None => None,
        };
        let own_scheme = match (config.web, tls.is_some()) {
            (false, _) => None,
            (true, false) => Some("http"),
            (true, true) => Some("https"),
        };
        let origins = OriginCheck::new(config.allowed_origins.clone(), own_scheme);
        let site = Site::new(config.web, config.metrics_allow.clone());
        let mut dispatcher = Dispatcher::new(snapshot, limits);
        if let Some(cluster) = &config.cluster {
            dispatcher.join_cluster(cluster.node_id.clone(), unix_now_ms(), config.timeout);
        }
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            connections: Slab::with_capacity(config.max_connections.min(1024)),
            address_cap: AddressCap::new(config.max_connections_per_address),
            dispatcher,
            storage,
            hasher,
            bus,
            completions,
            config,
            ws_config,
            origins,
            site,
            counters: LoopCounters::default(),
            histograms,
            tls,
            next_serial: 1,
            unfinished_reads: VecDeque::new(),
            to_flush: Vec::new(),
            output_full: Vec::new(),
            throttled: Vec::new(),
            throttled_retry_at: Instant::now(),
            after_flush: Vec::new(),
            effects: Effects::default(),
            hash_in_flight: 0,
            next_tick: Instant::now(),
            next_confirm_tick: Instant::now(),
            stats: StatsWindow {
                started: Instant::now(),
                messages: 0,
            },
            purge: PurgeSchedule::default(),
            shutdown: None,
        })
    }

    /// Whether connections are served over TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(listener) => listener.local_addr(),
            None => Err(io::Error::other("not listening")),
        }
    }

    /// Runs until SIGINT/SIGTERM, then shuts down cleanly. Never inlined:
    /// `scripts/callgrind.sh` finds the loop's thread by this name.
    #[inline(never)]
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let next = self.next_tick.min(self.next_confirm_tick);
            let until_tick = next.saturating_duration_since(Instant::now());
            let mut timeout = match (self.unfinished_reads.is_empty(), self.reads_paused()) {
                (true, _) => until_tick,
                (false, false) => Duration::ZERO,
                (false, true) => until_tick.min(PAUSED_READ_RETRY),
            };
            if !self.throttled.is_empty() {
                timeout = timeout.min(config::THROTTLED_READ_RETRY);
            }
            if let Err(error) = self.poll.poll(&mut events, Some(timeout)) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            self.dispatcher.set_clock(Instant::now());
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {} // completions are drained below, every turn
                    SIGNALS => self.on_signals(),
                    Token(slot) => {
                        let peer_closed = event.is_read_closed() || event.is_error();
                        self.connection_ready(slot, event.is_writable(), peer_closed)
                    }
                }
            }
            self.retry_throttled_reads();
            self.continue_unfinished_reads();
            self.drain_completions();
            if Instant::now() >= self.next_confirm_tick {
                self.confirm_tick();
            }
            if Instant::now() >= self.next_tick {
                self.tick();
            }
            self.flush_written();
            if self.shutdown.is_some() && self.shutdown_step() {
                break;
            }
        }
        self.finish();
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    // EMFILE and friends: log, and let the next event retry.
                    log::warn!("accept failed: {error}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        if self.connections.len() >= self.config.max_connections {
            log::warn!("refusing {peer}: {} connections", self.connections.len());
            self.counters.refused(Refusal::MaxConnections);
            refuse(&mut stream);
            return;
        }
        let Some(ticket) = self.address_cap.admit(peer.ip()) else {
            log::info!(
                "refusing {peer}: {} connections from its address",
                self.address_cap.connections_from(peer.ip())
            );
            self.counters.refused(Refusal::PerAddress);
            refuse(&mut stream);
            return;
        };
        self.counters.accepted += 1;
        let _ = stream.set_nodelay(true);
        let entry = self.connections.vacant_entry();
        let id = ConnId {
            slot: entry.key(),
            serial: self.next_serial,
        };
        self.next_serial += 1;
        if let Err(error) = self.poll.registry().register(
            &mut stream,
            Token(id.slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register {peer}: {error}");
            return;
        }
        let transport = match Transport::new(stream, self.tls.as_ref()) {
            Ok(transport) => transport,
            Err(error) => {
                log::warn!("cannot start TLS for {peer}: {error}");
                return;
            }
        };
        let connection = Connection::accept(
            (id, peer, ticket),
            transport,
            self.ws_config,
            self.origins.clone(),
        );
        entry.insert(connection);
        log::debug!("{peer} connected as {id:?}");
        self.read_frames(id);
    }

    fn connection_ready(&mut self, slot: usize, writable: bool, peer_closed: bool) {
        let Some(connection) = self.connections.get_mut(slot) else {
            return; // a spurious event for a slot already removed
        };
        connection.readable(peer_closed);
        if writable {
            connection.flush();
        }
        let id = connection.id;
        self.read_frames(id);
    }

    /// Whether storage is so far behind that the loop stops taking requests.
    fn reads_paused(&self) -> bool {
        self.storage.backlog() >= config::STORAGE_PAUSE_READS
    }

    /// Reads up to the per-turn budget of frames from one connection.
    fn read_frames(&mut self, id: ConnId) {
        let open = self.connection(id).is_some_and(|c| c.is_open());
        if self.shutdown.is_some() && open {
            return; // no new requests once shutdown has begun
        }
        if open && self.reads_paused() {
            // Back-pressure: leave the frames in the socket (and the client's
            // TCP window shrinks) until storage catches up.
            self.unfinished_reads.push_back(id);
            return;
        }
        let now = unix_now();
        let mut fx = std::mem::take(&mut self.effects);
        let mut budget = config::FRAMES_PER_CONNECTION_PER_TURN;
        loop {
            if self.dispatcher.over_message_rate(id) {
                // Its frames wait in the socket until its rate allows more.
                self.throttled.push(id);
                break;
            }
            let Some(connection) = self.connection(id) else {
                break;
            };
            match connection.read() {
                ReadEvent::Request(parsed) => {
                    self.answer_http(id, parsed);
                    break;
                }
                ReadEvent::Opened => {
                    let peer = connection.peer;
                    self.dispatcher.connected(id, peer);
                }
                ReadEvent::Text(text) => {
                    self.counters.frames_received += 1;
                    self.counters.bytes_received += text.len() as u64;
                    self.dispatcher.handle_text(id, &text, now, &mut fx)
                }
                ReadEvent::Binary(bytes) => {
                    self.counters.frames_received += 1;
                    self.counters.bytes_received += bytes as u64;
                    self.dispatcher.handle_binary(id, now, &mut fx)
                }
                ReadEvent::TooLarge
                | ReadEvent::NotUtf8
                | ReadEvent::WouldBlock
                | ReadEvent::Closed => break,
            }
            budget -= 1;
            if budget == 0 {
                self.unfinished_reads.push_back(id);
                break;
            }
        }
        self.apply(&mut fx);
        self.effects = fx;
        self.after_io(id.slot);
    }

    /// Answers a plain HTTP request (from memory; `/metrics` is encoded
    /// here, only when asked for) and starts writing the answer.
    fn answer_http(&mut self, id: ConnId, parsed: Result<http::Request, HeadError>) {
        let Some(peer) = self.connection(id).map(|connection| connection.peer) else {
            return;
        };
        let response = match &parsed {
            Ok(request) => http::respond(request, peer.ip(), &self.site, &LoopView(self)),
            Err(error) => match http::refuse_head(*error) {
                Some(response) => response,
                None => {
                    log::debug!("{peer}: not HTTP ({error:?}); closing without an answer");
                    if let Some(connection) = self.connection(id) {
                        connection.abort();
                    }
                    return;
                }
            },
        };
        let status = response.status();
        match &parsed {
            Ok(request) => log::debug!("{peer}: {} {} → {status}", request.method, request.target),
            Err(error) => log::debug!("{peer}: bad request head ({error:?}) → {status}"),
        }
        self.counters.http_answered(status);
        if let Some(connection) = self.connection(id) {
            let (head, body) = response.into_wire();
            connection.answer(head, body);
        }
    }

    /// Reads again, every [`config::THROTTLED_READ_RETRY`], from the
    /// connections left unread for being over their message rate.
    fn retry_throttled_reads(&mut self) {
        let now = Instant::now();
        if self.throttled.is_empty() || now < self.throttled_retry_at {
            return;
        }
        self.throttled_retry_at = now + config::THROTTLED_READ_RETRY;
        self.unfinished_reads.extend(self.throttled.drain(..));
    }

    fn continue_unfinished_reads(&mut self) {
        for _ in 0..self.unfinished_reads.len() {
            if let Some(id) = self.unfinished_reads.pop_front() {
                self.read_frames(id);
            }
        }
    }

    /// The connection with this id, if it is still the slot's occupant.
    fn connection(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.connections
            .get_mut(id.slot)
            .filter(|connection| connection.id == id)
    }

    /// Schedules a flush, or removes the connection if it is finished.
    fn after_io(&mut self, slot: usize) {
        let Some(connection) = self.connections.get(slot) else {
            return;
        };
        if connection.is_closed() {
            self.remove(slot);
        } else if connection.needs_flush() {
            self.to_flush.push(slot);
        }
    }

    fn drain_completions(&mut self) {
        let now = unix_now();
        let mut fx = std::mem::take(&mut self.effects);
        while let Ok(completion) = self.completions.try_recv() {
            match &completion {
                Completion::Hash(_) => {
                    self.hash_in_flight = self.hash_in_flight.saturating_sub(1);
                }
                Completion::Bus(inbound) => self.bus.handled(inbound),
                Completion::Storage(_) => {}
            }
            self.dispatcher.complete(completion, now, &mut fx);
            self.apply(&mut fx);
        }
        self.effects = fx;
    }

    /// Carries out the dispatcher's effects; the only place they happen.
    fn apply(&mut self, fx: &mut Effects) {
        let now = unix_now();
        let mut departing = Vec::new();
        while !fx.is_empty() {
            for Outbound {
                conn: id,
                frame,
                message_id,
            } in fx.frames.drain(..)
            {
                let Some(connection) = self.connections.get_mut(id.slot) else {
                    continue;
                };
                if connection.id != id {
                    continue;
                }
                if let Some(message_id) = message_id {
                    connection.note_delivery(message_id);
                    self.counters.deliveries += 1;
                }
                let bytes = frame.len() as u64;
                match connection.send_text(frame) {
                    Ok(()) => {
                        self.counters.frames_sent += 1;
                        self.counters.bytes_sent += bytes;
                    }
                    Err(WriteError::SlowConsumer) => {
                        log::warn!("{}: slow consumer, closing", connection.peer);
                        connection.close(CloseCode::Policy, "too much unread output");
                        departing.push((id, connection.unflushed_from()));
                        self.counters.closed(CloseKind::SlowConsumer);
                    }
                    Err(WriteError::Closed) => {}
                }
                if connection.newly_past(config::PUSH_BYTES_MAX) {
                    self.dispatcher.set_output_full(id, true);
                    self.output_full.push(id);
                }
                if connection.needs_flush() {
                    self.to_flush.push(id.slot);
                }
            }
            for (id, reason) in std::mem::take(&mut fx.closes) {
                if let Some(connection) = self.connection(id) {
                    let kind = match reason {
                        CloseReason::LoggedOut => {
                            connection.close(CloseCode::Normal, "logged out");
                            CloseKind::Logout
                        }
                        CloseReason::Abuse => {
                            connection.close(CloseCode::Policy, "too many bad frames");
                            CloseKind::Abuse
                        }
                    };
                    departing.push((id, connection.unflushed_from()));
                    self.to_flush.push(id.slot);
                    self.counters.closed(kind);
                }
            }
            // A connection stops being a recipient the moment its close is
            // decided, not when the close completes.
            for (id, unflushed_from) in departing.drain(..) {
                self.dispatcher.disconnected(id, unflushed_from, now, fx);
            }
            self.after_flush.append(&mut fx.after_flush);
            for event in fx.bus.drain(..) {
                self.bus.publish(event);
            }
            // What the queues refuse is answered in effects of its own, the
            // next round's; `fx` keeps its vectors' capacity otherwise (a
            // fresh `Effects` every round cost each turn's first frame and
            // first command an allocation).
            let mut refused: Option<Effects> = None;
            for command in fx.storage.drain(..) {
                if let Err(refusal) = self.storage.submit(command) {
                    let (error, command) = *refusal;
                    log::warn!("storage queue refused a command: {error:?}");
                    let refused = refused.get_or_insert_with(Effects::default);
                    self.dispatcher.storage_refused(command, now, refused);
                }
            }
            for job in fx.hashing.drain(..) {
                match self.hasher.submit(job) {
                    Ok(()) => self.hash_in_flight += 1,
                    Err(refusal) => {
                        let (error, job) = *refusal;
                        log::warn!("hashing queue refused a job: {error:?}");
                        let refused = refused.get_or_insert_with(Effects::default);
                        self.dispatcher.hashing_refused(job, now, refused);
                    }
                }
            }
            // Before `fx` is replaced: what it queued this round is counted.
            self.counters.tally.absorb(&mut fx.tally);
            if let Some(refused) = refused {
                *fx = refused;
            }
        }
        self.dispatcher.set_storage_backlog(self.storage.backlog());
    }

    fn flush_written(&mut self) {
        let mut slots = std::mem::take(&mut self.to_flush);
        slots.sort_unstable();
        slots.dedup();
        for slot in slots.drain(..) {
            if let Some(connection) = self.connections.get_mut(slot) {
                if connection.needs_flush() {
                    connection.flush();
                }
                if connection.is_closed() {
                    self.remove(slot);
                }
            }
        }
        self.to_flush = slots;
        self.tell_drained();
        self.release_after_flush();
    }

    /// Tells the dispatcher which connections whose output was full have
    /// written it all out (live messages go to them again).
    fn tell_drained(&mut self) {
        let mut full = std::mem::take(&mut self.output_full);
        full.retain(|id| {
            let Some(connection) = self
                .connections
                .get_mut(id.slot)
                .filter(|connection| connection.id == *id)
            else {
                return false;
            };
            if !connection.take_drained() {
                return connection.has_output_pending();
            }
            self.dispatcher.set_output_full(*id, false);
            false
        });
        self.output_full = full;
    }

    /// Submits the commands whose connection has written everything out;
    /// drops those whose connection is gone.
    fn release_after_flush(&mut self) {
        if self.after_flush.is_empty() {
            return;
        }
        let mut fx = std::mem::take(&mut self.effects);
        for (id, command) in std::mem::take(&mut self.after_flush) {
            match self.connection(id) {
                Some(connection) if !connection.has_output_pending() => fx.storage.push(command),
                Some(_) => self.after_flush.push((id, command)),
                None => {}
            }
        }
        self.apply(&mut fx);
        self.effects = fx;
    }

    /// The one way out for a connection.
    fn remove(&mut self, slot: usize) {
        if !self.connections.contains(slot) {
            return;
        }
        let mut connection = self.connections.remove(slot);
        if let Some(stream) = connection.stream_mut() {
            let _ = self.poll.registry().deregister(stream);
        }
        log::debug!("{} disconnected ({:?})", connection.peer, connection.id);
        let mut fx = std::mem::take(&mut self.effects);
        let unflushed_from = connection.unflushed_from();
        self.dispatcher
            .disconnected(connection.id, unflushed_from, unix_now(), &mut fx);
        self.apply(&mut fx);
        self.effects = fx;
    }

    /// One phase of the devices' confirmations goes to storage.
    fn confirm_tick(&mut self) {
        self.next_confirm_tick = Instant::now() + config::CONFIRM_TICK;
        let mut fx = std::mem::take(&mut self.effects);
        self.dispatcher.confirm_tick(unix_now(), &mut fx);
        self.apply(&mut fx);
        self.effects = fx;
    }

    /// Heartbeats, timeouts, the stats line and session expiry.
    fn tick(&mut self) {
        let now = Instant::now();
        self.next_tick = now + config::TICK;
        let timers = Timers {
            heartbeat: self.config.heartbeat,
            timeout: self.config.timeout,
            close_deadline: CLOSE_DEADLINE,
            handshake_timeout: config::HANDSHAKE_TIMEOUT,
        };
        let mut finished = Vec::new();
        let mut idle = Vec::new();
        for (slot, connection) in self.connections.iter_mut() {
            match connection.on_tick(now, timers) {
                TickAction::Nothing => continue,
                TickAction::HandshakeTimedOut => self.counters.closed(CloseKind::HandshakeTimeout),
                TickAction::IdleClosed => {
                    idle.push((connection.id, connection.unflushed_from()));
                    self.counters.closed(CloseKind::Idle);
                }
                TickAction::Pinged | TickAction::Dropped => {}
            }
            finished.push(slot);
        }
        if !idle.is_empty() {
            let mut fx = std::mem::take(&mut self.effects);
            for (id, unflushed_from) in idle {
                self.dispatcher
                    .disconnected(id, unflushed_from, unix_now(), &mut fx);
            }
            self.apply(&mut fx);
            self.effects = fx;
        }
        for slot in finished {
            self.after_io(slot);
        }
        if now.duration_since(self.stats.started) >= self.config.stats_interval {
            self.log_stats(now);
            self.dispatcher.prune_rate_limits();
        }
        let mut fx = std::mem::take(&mut self.effects);
        self.dispatcher.tick(&mut fx);
        fx.storage.extend(self.purge.due(unix_now()));
        self.apply(&mut fx);
        self.effects = fx;
    }

    fn log_stats(&mut self, now: Instant) {
        let messages = self.dispatcher.counters().messages;
        let seconds = now.duration_since(self.stats.started).as_secs_f64();
        let rate = (messages - self.stats.messages) as f64 / seconds.max(0.001);
        let cluster = match self.dispatcher.cluster_view() {
            Some(view) => format!(
                "; node {}, bus {}, database {}, {} other nodes",
                view.node_id,
                self.bus.state().as_str(),
                if view.database_ok {
                    "ok"
                } else {
                    "unreachable"
                },
                view.nodes
            ),
            None => String::new(),
        };
        log::info!(
            "stats: {} connections, {} users online, {rate:.0} messages/s, storage queue {}{cluster}",
            self.connections.len(),
            self.dispatcher.users_online(),
            self.storage.backlog()
        );
        self.stats = StatsWindow {
            started: now,
            messages,
        };
    }

    fn on_signals(&mut self) {
        let Some(signal) = self.signals.pending().last() else {
            return;
        };
        if self.shutdown.is_some() {
            return;
        }
        log::info!(
            "signal {signal} received: shutting down ({} connections)",
            self.connections.len()
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.shutdown = Some(Instant::now());
    }

    /// One step of shutdown; true when it is complete.
    ///
    /// First, wait (up to the drain deadline) until every storage command and
    /// hashing job already accepted has finished and its reply (an Ack, say)
    /// has been queued; then send every client a close frame (1001), give
    /// them a moment to flush, and stop.
    fn shutdown_step(&mut self) -> bool {
        let Some(started) = self.shutdown else {
            return false;
        };
        let waited = started.elapsed();
        let busy = self.storage.backlog() > 0 || self.hash_in_flight > 0;
        if busy && waited < config::SHUTDOWN_DRAIN {
            self.next_tick = Instant::now() + Duration::from_millis(10);
            return false;
        }
        // A request head still arriving gets a moment to finish (a health
        // probe in flight learns 503 rather than a reset).
        let requests_may_finish = waited < config::SHUTDOWN_REQUEST_GRACE;
        let mut closing = Vec::new();
        for (slot, connection) in self.connections.iter_mut() {
            if connection.is_handshaking() && requests_may_finish {
                continue;
            }
            if !connection.is_closing() {
                connection.close(CloseCode::Away, "server shutting down");
                closing.push(slot);
            }
        }
        for slot in closing {
            self.after_io(slot);
        }
        self.flush_written();
        let all_closed = self.connections.iter().all(|(_, c)| c.is_closed());
        let grace_over = waited >= config::SHUTDOWN_DRAIN + Duration::from_millis(500);
        if all_closed || grace_over || self.connections.is_empty() {
            return true;
        }
        self.next_tick = Instant::now() + Duration::from_millis(10);
        false
    }

    /// Drops connections, lets storage commit what is queued, joins threads.
    fn finish(mut self) {
        let slots: Vec<usize> = self.connections.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.remove(slot);
        }
        self.storage.finish();
        self.drain_completions();
        log::info!("shutdown complete");
    }
}

/// The loop as plain HTTP answers see it: read only when a request needs it.
struct LoopView<'a>(&'a Server);

impl Live for LoopView<'_> {
    fn health(&self) -> Health {
        let server = self.0;
        let storage_queue = server.storage.backlog();
        let mut condition = Condition::judge(
            server.shutdown.is_some(),
            server.storage.silent_for(),
            storage_queue,
        );
        let cluster = server.dispatcher.cluster_view().map(|view| ClusterHealth {
            node: view.node_id,
            bus: server.bus.state(),
            database_ok: view.database_ok,
        });
        if let Some(cluster) = &cluster {
            condition = condition.in_cluster(cluster);
        }
        Health {
            condition,
            connections: server.connections.len(),
            storage_queue,
            cluster,
        }
    }

    fn metrics(&self) -> String {
        let server = self.0;
        let dispatcher = server.dispatcher.counters();
        let scrape = metrics::Scrape {
            connections: server.connections.len(),
            users_online: server.dispatcher.users_online(),
            storage_queue: server.storage.backlog(),
            hash_jobs: server.hash_in_flight,
            messages_accepted: dispatcher.messages,
            messages_stored: dispatcher.messages_stored,
            storage_failures: dispatcher.storage_failures,
            logins: dispatcher.logins,
            counters: &server.counters,
            histograms: &server.histograms,
        };
        metrics::encode(&scrape).unwrap_or_else(|error| {
            log::error!("cannot encode the metrics: {error}");
            String::new()
        })
    }
}

/// Hashing jobs one address may have waiting: its share, unless rate limits
/// are off (benchmarks log thousands of users in from one address).
fn hash_jobs_per_address(config: &Config) -> usize {
    match config.rate_limits {
        Some(_) => config::HASH_JOBS_PER_ADDRESS_MAX,
        None => config::HASH_QUEUE_MAX,
    }
}

/// Answers a connection the server will not take: HTTP 503, then drop.
fn refuse(stream: &mut TcpStream) {
    // The socket is fresh, so this small write will not block.
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
}

/// Milliseconds since the Unix epoch (a cluster server's run, see
/// `bus::PresenceStamp`).
fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use crate::completion::ConnId;
    use crate::connection::Connection;
    use crate::dispatcher::Client;

    /// What every connection costs inline, whatever it does: its slab slot
    /// and its entry in the dispatcher's clients table (every slot of which
    /// is this size, used or not). Issue 14 brought them from 488 and 560
    /// bytes to these by boxing what is brief or rare (a handshake, a
    /// close, a login in progress, a cluster lookup, rate-limit buckets); a
    /// field added inline shows here.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn per_connection_structs_stay_small() {
        assert!(
            size_of::<Connection>() <= 456,
            "{}",
            size_of::<Connection>()
        );
        let entry = size_of::<(ConnId, Client)>();
        assert!(entry <= 208, "{entry}");
    }
}
