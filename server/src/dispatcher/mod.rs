//! The dispatcher: what the server *does* with a decoded frame or a finished
//! piece of off-loop work, as a synchronous function with no I/O.
//!
//! Input: a connection's text frame (or a storage reply, or a hashing
//! result). Output: [`Effects`] — frames to write to connections, connections
//! to close, storage commands and hashing jobs to queue. The event loop
//! applies them. So every rule of the protocol is unit-tested here without a
//! socket, a thread or a database.
//!
//! State kept in memory (the loop's view of the world):
//! - every account's `username → user_id` (the directory cache; loaded at
//!   start, extended on registration), so routing a message needs no disk;
//! - every connection's [`Auth`] state;
//! - for each user, the connections logged in (or finishing a login) as them;
//! - the highest message id it has seen committed (ids are assigned by
//!   storage at commit: `storage/ids.rs`), and a ticket per message on its
//!   way to storage.
//!
//! One file per group of messages: [`accounts`] (register, login, logout,
//! presence), [`messages`] (message, history, sync), [`contacts`] (contacts,
//! directory, keys), [`groups`] (groups and group messages), [`cluster`]
//! (what other servers of a cluster tell this one over the bus, and the
//! heartbeats), [`liveness`] (who is online on which other server, and
//! which servers are dead), [`lookups`] (cluster mode: asking storage what
//! the caches lack).

mod accounts;
mod cluster;
mod contacts;
mod delivery;
mod groups;
mod liveness;
mod lookups;
mod messages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use protocol::server::Delivered;
use protocol::{ClientMessage, ClientTag, ErrorType, RequestId, ServerMessage};

use crate::bus::BusEvent;
use crate::completion::{Completion, ConnId, Requester};
use crate::config;
use crate::hasher::{HashDone, HashJob};
use crate::id_map::{HashMapExt, HashSetExt, IdMap, IdSet};
use crate::metrics::FrameTally;
use crate::rate_limit::{ConnectionBuckets, RateConfig, RateLimits, Verdict};
use crate::shared_limits::SharedLogin;
use crate::storage::{Command, GroupRow, Reply, Snapshot, StoredMessage};
use accounts::SessionOpened;
pub use cluster::ClusterView;
use contacts::ContactAdded;
pub use delivery::Stream;
use delivery::{AwaitingCommit, ConfirmSchedule, MessageStored, ReceiptSchedule};
use lookups::{Lookup, Misses};

/// Why the server closes a connection; becomes the WebSocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Logout (1000).
    LoggedOut,
    /// Kept sending bad frames after being told (1008).
    Abuse,
}

/// One encoded frame for one connection.
#[derive(Debug)]
pub struct Outbound {
    /// The connection to write it to.
    pub conn: ConnId,
    /// The frame.
    pub frame: String,
    /// The message it carries, if it is a Message (11): the loop tracks what
    /// a connection may not have received if it must be dropped.
    pub message_id: Option<i64>,
}

/// What the loop must do after a dispatch, in order.
#[derive(Debug, Default)]
pub struct Effects {
    /// Encoded frames to write, in order per connection.
    pub frames: Vec<Outbound>,
    /// Connections to close once their frames are written.
    pub closes: Vec<(ConnId, CloseReason)>,
    /// Commands for the storage thread.
    pub storage: Vec<Command>,
    /// Commands for the storage thread once the connection has written out
    /// everything queued for it (paces the offline-queue push).
    pub after_flush: Vec<(ConnId, Command)>,
    /// Jobs for the hashing workers.
    pub hashing: Vec<HashJob>,
    /// Events for the other servers of a cluster (none when alone).
    pub bus: Vec<BusEvent>,
    /// The request being handled: replies to its connection carry its
    /// `request_id` (set by the dispatcher around each request and each
    /// off-loop reply; see [`Effects::begin_answering`]).
    answering: Option<Requester>,
    /// Acks, Error frames and `rate_limited` answers queued (for
    /// `/metrics`; the loop adds it to its counters as it applies these
    /// effects).
    pub tally: FrameTally,
}

impl Effects {
    /// Queues `message` for `conn`, encoded with `now` as its time. A reply
    /// to the connection whose request is being handled carries that
    /// request's `request_id`; pushes never do.
    pub fn send(&mut self, conn: ConnId, message: &ServerMessage, now: i64) {
        self.tally.note(message);
        let request_id = self.request_id_for(conn);
        let frame = protocol::encode_reply(message, now, request_id);
        self.push(conn, frame);
    }

    /// Queues an encoded frame that carries no message.
    pub fn push(&mut self, conn: ConnId, frame: String) {
        self.frames.push(Outbound {
            conn,
            frame,
            message_id: None,
        });
    }

    /// Queues an encoded Message (11) frame carrying message `message_id`.
    pub fn push_message(&mut self, conn: ConnId, frame: String, message_id: i64) {
        self.frames.push(Outbound {
            conn,
            frame,
            message_id: Some(message_id),
        });
    }

    /// The request id a reply to `conn` carries now, if any.
    fn request_id_for(&self, conn: ConnId) -> Option<&RequestId> {
        self.answering
            .as_ref()
            .filter(|request| request.conn == conn)
            .and_then(|request| request.request_id.as_ref())
    }

    /// The connection whose request is being handled, if any.
    pub fn answering_conn(&self) -> Option<ConnId> {
        self.answering.as_ref().map(|request| request.conn)
    }

    /// Who off-loop work started now for `conn` answers: `conn`, with the
    /// current request's id when it is `conn`'s.
    pub fn requester(&self, conn: ConnId) -> Requester {
        Requester {
            conn,
            request_id: self.request_id_for(conn).cloned(),
        }
    }

    /// Starts handling a request (or a reply to one) from `requester`;
    /// returns what was being answered before, for [`Effects::end_answering`].
    pub fn begin_answering(&mut self, requester: Option<Requester>) -> Option<Requester> {
        std::mem::replace(&mut self.answering, requester)
    }

    /// Restores what [`Effects::begin_answering`] returned.
    pub fn end_answering(&mut self, outer: Option<Requester>) {
        self.answering = outer;
    }

    /// Queues an `Error` frame.
    pub fn error(
        &mut self,
        conn: ConnId,
        kind: ErrorType,
        detail: &str,
        ref_tag: ClientTag,
        now: i64,
    ) {
        self.send(
            conn,
            &ServerMessage::error(kind, detail, Some(ref_tag as i64)),
            now,
        );
    }

    /// Whether nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
            && self.closes.is_empty()
            && self.storage.is_empty()
            && self.after_flush.is_empty()
            && self.hashing.is_empty()
            && self.bus.is_empty()
    }
}

/// A login in progress: see [`Auth::Opening`].
#[derive(Debug)]
pub struct Opening {
    /// The user.
    pub user_id: i64,
    /// Their name.
    pub username: String,
    /// The session id (new, or the one presented).
    pub session_id: String,
    /// Its SHA-256.
    pub session_hash: String,
    /// Whether this resumes an existing session.
    pub resumed: bool,
    /// Messages from this id on are held here; older ones come from the
    /// offline queue in storage.
    pub queue_before: i64,
    /// Whether the queue includes group messages (not when another
    /// connection of the user was live and got them).
    pub include_groups: bool,
    /// SuccessLogin is sent; the offline queue is still being pushed.
    pub success_sent: bool,
    /// The last message id of the offline queue pushed so far (0: none).
    pub queue_pushed_through: i64,
    /// A receipts login (1.1): nothing counts as taken until confirmed.
    pub receipts: bool,
    /// The session's confirmation, once storage has told it.
    pub confirmed_through: i64,
    /// Mutual contacts to tell once the login completes.
    pub mutual_contacts: Vec<i64>,
    /// Frames that arrived meanwhile (each message's id with it).
    pub held: Vec<(String, Option<i64>)>,
    /// Their bytes: past [`config::HELD_BYTES_MAX`], messages are no
    /// longer held but left in storage (see `behind_from`).
    pub held_bytes: usize,
    /// The first message left in storage because `held` was full: the
    /// login ends behind, catching up from here.
    pub behind_from: Option<i64>,
}

/// Where a connection is in logging in.
#[derive(Debug)]
pub enum Auth {
    /// Not logged in.
    Anonymous,
    /// A password login: credentials are being fetched or verified.
    Verifying {
        /// The username given.
        username: String,
        /// The secret given, kept only until it is verified.
        secret: String,
    },
    /// The session is being created or resumed in storage. The connection
    /// already counts as a recipient: frames for it are held and sent right
    /// after SuccessLogin and the offline queue, so nothing sent meanwhile is
    /// lost or reordered.
    /// Boxed: a login lasts milliseconds, and inline it would make every
    /// connection's entry as big as this variant.
    Opening(Box<Opening>),
    /// Logged in.
    LoggedIn {
        /// The user.
        user_id: i64,
        /// Their name.
        username: String,
        /// The SHA-256 of the session this connection uses.
        session_hash: String,
        /// The first group message id this connection was sure to be sent
        /// (0 when its login took the group queue; the login boundary when
        /// another device of the user was live and got what came before).
        groups_from: i64,
        /// Whether this connection confirms with Received (1.1).
        receipts: bool,
        /// The session's confirmation: this device holds everything
        /// addressed to the user up to here.
        confirmed_through: i64,
        /// Live, or behind and catching up from storage.
        stream: Stream,
    },
}

/// One connection as the dispatcher sees it.
#[derive(Debug)]
pub struct Client {
    /// The remote address.
    pub peer: SocketAddr,
    /// Its login state.
    pub auth: Auth,
    /// Requests pipelined behind a Login that is still being checked, or
    /// behind a lookup (cluster mode); they run, in order, once it is done.
    deferred: Vec<String>,
    /// Cluster mode: the request waiting for storage to find what the
    /// caches lack (`lookups.rs`). Boxed, as rarely there: every entry of
    /// the clients table is the size of a `Client`.
    lookup: Option<Box<Lookup>>,
    /// Per-connection rate limits (`None` with `--no-rate-limits`). Boxed:
    /// 200 bytes inline would cost every slot of the clients table.
    buckets: Option<Box<ConnectionBuckets>>,
    /// The login in progress asked for receipts.
    receipts: bool,
    /// The loop says its unsent output is past [`config::PUSH_BYTES_MAX`].
    output_full: bool,
    /// History and Sync pages asked of storage and not yet answered.
    reads_in_flight: usize,
    /// Content bytes of its messages on their way to storage.
    storing_bytes: usize,
}

/// Counters for the stats line and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages accepted for storage.
    pub messages: u64,
    /// Messages storage committed (resends aside).
    pub messages_stored: u64,
    /// Storage commands that failed.
    pub storage_failures: u64,
    /// Successful logins.
    pub logins: u64,
}

/// The dispatcher's limits.
#[derive(Clone, Copy, Debug)]
pub struct DispatchLimits {
    /// Storage commands in flight past which new messages get `server_busy`.
    pub storage_backlog_max: usize,
    /// Rate limits, or `None` to disable them.
    pub rates: Option<RateConfig>,
    /// Most members of one group.
    pub max_group_size: usize,
    /// Cluster mode: other servers share the database, and the bus carries
    /// events to them (see `dispatcher/cluster.rs`).
    pub cluster: bool,
}

/// The in-memory state and the rules; see the module docs.
pub struct Dispatcher {
    rate_limits: RateLimits,
    clock: Instant,
    users: HashMap<String, i64>,
    clients: IdMap<ConnId, Client>,
    online: IdMap<i64, Vec<ConnId>>,
    /// Every group and its members, by group id.
    groups: IdMap<i64, GroupRow>,
    /// The highest message id seen committed (at start: past every id
    /// stored).
    highest_message_id: i64,
    /// The next message's ticket: its name until storage gives it an id.
    next_ticket: u64,
    storage_backlog: usize,
    /// Messages on their way to storage, by ticket, delivered once
    /// committed (at most one per storage command in flight: bounded by the
    /// storage queue).
    awaiting_commit: IdMap<u64, AwaitingCommit>,
    /// Content bytes of the messages awaiting their commit.
    storing_bytes: usize,
    /// Connections whose confirmation (Received) waits to be written.
    confirms_due: ConfirmSchedule,
    /// Delivered receipts (37) waiting for their sender's phase, coalesced
    /// by pair.
    receipts_due: ReceiptSchedule,
    /// Cluster mode: who is online on the other servers, and which of them
    /// are alive (`None` when alone).
    liveness: Option<liveness::Liveness>,
    /// Cluster mode: the tickets of lookups in storage (at most
    /// [`config::LOOKUPS_IN_FLIGHT_MAX`]).
    lookups: IdSet<u64>,
    /// Cluster mode: what lookups found missing, for a while.
    misses: Misses,
    /// Cluster mode: password attempts checked against the shared lockout
    /// (`shared_limits.rs`), by connection (one each, ended with the
    /// attempt).
    shared_logins: IdMap<ConnId, SharedAttempt>,
    limits: DispatchLimits,
    counters: Counters,
}

impl Dispatcher {
    /// A dispatcher that knows the accounts and last message id in `snapshot`.
    pub fn new(snapshot: Snapshot, limits: DispatchLimits) -> Self {
        Dispatcher {
            rate_limits: RateLimits::new(limits.rates),
            clock: Instant::now(),
            users: snapshot.users.into_iter().collect(),
            clients: IdMap::new(),
            online: IdMap::new(),
            groups: snapshot
                .groups
                .into_iter()
                .map(|group| (group.group_id, group))
                .collect(),
            highest_message_id: (snapshot.next_message_id - 1).max(0),
            next_ticket: 1,
            storage_backlog: 0,
            awaiting_commit: IdMap::new(),
            storing_bytes: 0,
            confirms_due: ConfirmSchedule::default(),
            receipts_due: ReceiptSchedule::default(),
            liveness: None,
            lookups: IdSet::new(),
            misses: Misses::default(),
            shared_logins: IdMap::new(),
            limits,
            counters: Counters::default(),
        }
    }

    /// A new connection finished its WebSocket handshake.
    pub fn connected(&mut self, conn: ConnId, peer: SocketAddr) {
        self.clients.insert(
            conn,
            Client {
                peer,
                auth: Auth::Anonymous,
                deferred: Vec::new(),
                lookup: None,
                buckets: self
                    .rate_limits
                    .connection_buckets(self.clock)
                    .map(Box::new),
                receipts: false,
                output_full: false,
                reads_in_flight: 0,
                storing_bytes: 0,
            },
        );
    }

    /// The loop tells the time at the start of each turn (rate limits use it).
    pub fn set_clock(&mut self, now: Instant) {
        self.clock = now;
    }

    /// Forgets rate-limit entries that no longer limit anyone.
    pub fn prune_rate_limits(&mut self) {
        self.rate_limits.prune(self.clock);
        let limits = &self.rate_limits;
        self.shared_logins
            .retain(|conn, _| limits.attempt_standing(*conn).is_some());
    }

    /// The loop tells how many storage commands are waiting.
    pub fn set_storage_backlog(&mut self, backlog: usize) {
        self.storage_backlog = backlog;
    }

    /// Counters since start.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Users with at least one logged-in connection.
    pub fn users_online(&self) -> usize {
        self.users_logged_in().count()
    }

    /// The users with at least one logged-in connection here.
    fn users_logged_in(&self) -> impl Iterator<Item = i64> + '_ {
        self.online
            .keys()
            .copied()
            .filter(|user| self.has_logged_in_connection(*user))
    }

    /// The auth state of a connection (for tests and logs).
    pub fn client(&self, conn: ConnId) -> Option<&Client> {
        self.clients.get(&conn)
    }

    /// Handles one text frame.
    pub fn handle_text(&mut self, conn: ConnId, text: &str, now: i64, fx: &mut Effects) {
        self.handle_request(conn, text, true, now, fx);
    }

    /// Handles one text frame; in cluster mode, unless `may_look_up` is
    /// false (it is being run again after one), what it names that the
    /// caches lack is looked up first (`lookups.rs`).
    fn handle_request(
        &mut self,
        conn: ConnId,
        text: &str,
        may_look_up: bool,
        now: i64,
        fx: &mut Effects,
    ) {
        let (request_id, decoded) = protocol::decode_request(text);
        let outer = fx.begin_answering(Some(Requester { conn, request_id }));
        match decoded {
            Ok(message) if self.must_defer(conn, &message) => {
                self.defer(conn, text, message.kind(), now, fx)
            }
            Ok(message) if may_look_up && self.look_up_first(conn, text, &message, now, fx) => {}
            Ok(message) => self.handle_message(conn, message, now, fx),
            Err(error) => {
                log::debug!("{conn:?}: undecodable frame: {error}");
                let frame =
                    ServerMessage::error(error.error_type(), error.to_string(), error.ref_tag());
                fx.send(conn, &frame, now);
                self.count_bad_frame(conn, fx);
            }
        }
        fx.end_answering(outer);
    }

    /// Disconnects a client that keeps sending bad frames after being told.
    fn count_bad_frame(&mut self, conn: ConnId, fx: &mut Effects) {
        let clock = self.clock;
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if let Some(buckets) = &mut client.buckets {
            if !buckets.bad_frames.try_take(clock) {
                log::warn!("{}: too many bad frames, disconnecting", client.peer);
                fx.closes.push((conn, CloseReason::Abuse));
            }
        }
    }

    /// Handles a binary frame: always `bad_request`.
    pub fn handle_binary(&mut self, conn: ConnId, now: i64, fx: &mut Effects) {
        let frame = ServerMessage::error(
            ErrorType::BadRequest,
            "binary frames are not accepted; send JSON in a text frame",
            None,
        );
        fx.send(conn, &frame, now);
        self.count_bad_frame(conn, fx);
    }

    /// Whether `message` arrived behind a Login still in progress on `conn`
    /// and needs that login's outcome, or behind a lookup (everything but a
    /// Ping waits for that, so requests keep their order).
    fn must_defer(&self, conn: ConnId, message: &ClientMessage) -> bool {
        if self
            .clients
            .get(&conn)
            .is_some_and(|client| client.lookup.is_some())
        {
            return !matches!(message, ClientMessage::Ping);
        }
        let in_progress = self
            .clients
            .get(&conn)
            .is_some_and(|c| matches!(c.auth, Auth::Verifying { .. } | Auth::Opening { .. }));
        in_progress
            && !matches!(
                message,
                ClientMessage::Register(_) | ClientMessage::Login(_) | ClientMessage::Ping
            )
            && !self
                .clients
                .get(&conn)
                .is_some_and(|c| is_confirmation_while_queue_pushed(&c.auth, message))
    }

    fn defer(&mut self, conn: ConnId, text: &str, tag: ClientTag, now: i64, fx: &mut Effects) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let queued_bytes: usize = client.deferred.iter().map(String::len).sum();
        if client.deferred.len() >= config::DEFERRED_REQUESTS_MAX
            || queued_bytes + text.len() > config::DEFERRED_BYTES_MAX
        {
            let detail = "too many requests queued behind a login or lookup in progress";
            fx.error(conn, ErrorType::ServerBusy, detail, tag, now);
            return;
        }
        client.deferred.push(text.to_owned());
    }

    /// Runs the requests that waited for the login on `conn` to finish.
    fn run_deferred(&mut self, conn: ConnId, now: i64, fx: &mut Effects) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        for text in std::mem::take(&mut client.deferred) {
            self.handle_text(conn, &text, now, fx);
        }
    }

    /// Routes a decoded message to its handler, enforcing the login rule.
    fn handle_message(&mut self, conn: ConnId, message: ClientMessage, now: i64, fx: &mut Effects) {
        let tag = message.kind();
        let Some(client) = self.clients.get(&conn) else {
            return;
        };
        if let Auth::LoggedIn { .. } = client.auth {
            log::debug!("{conn:?}: {}", message.name());
        } else if !matches!(
            message,
            ClientMessage::Register(_) | ClientMessage::Login(_) | ClientMessage::Ping
        ) && !is_confirmation_while_queue_pushed(&client.auth, &message)
        {
            fx.error(conn, ErrorType::NotLoggedIn, "log in first", tag, now);
            return;
        }
        // Only the handlers of messages that passed the login gate above use
        // it, so the placeholder 0 (no user has id 0) is never acted on.
        let user_id = self.logged_in_user(conn).unwrap_or(0);
        match message {
            ClientMessage::Register(body) => self.register(conn, body, now, fx),
            ClientMessage::Login(body) => self.login(conn, body, now, fx),
            ClientMessage::Logout(body) => self.logout(conn, body, now, fx),
            ClientMessage::Ping => fx.send(conn, &ServerMessage::Pong, now),
            ClientMessage::GetDirectory => fx.storage.push(Command::Directory {
                to: fx.requester(conn),
                owner_id: user_id,
            }),
            ClientMessage::AddContact(body) => self.add_contact(conn, user_id, body, now, fx),
            ClientMessage::RemoveContact(body) => self.remove_contact(conn, user_id, body, now, fx),
            ClientMessage::PublishKey(body) => self.publish_key(conn, user_id, body, now, fx),
            ClientMessage::GetKey(body) => self.get_key(conn, body, now, fx),
            ClientMessage::Message(body) => self.send_message(conn, user_id, body, now, fx),
            ClientMessage::GetHistory(body) => self.history(conn, user_id, body, now, fx),
            ClientMessage::Sync(body) => self.sync(conn, user_id, body, now, fx),
            ClientMessage::CreateGroup(body) => self.create_group(conn, user_id, body, now, fx),
            ClientMessage::AddGroupMembers(body) => {
                self.add_group_members(conn, user_id, body, now, fx)
            }
            ClientMessage::LeaveGroup(body) => self.leave_group(conn, user_id, body, now, fx),
            ClientMessage::GetGroups => self.get_groups(conn, user_id, now, fx),
            ClientMessage::Received(body) => self.received(conn, body, now, fx),
            ClientMessage::GetSessions => fx.storage.push(Command::Sessions {
                to: fx.requester(conn),
                user_id,
            }),
        }
    }

    /// Handles a finished piece of off-loop work.
    pub fn complete(&mut self, completion: Completion, now: i64, fx: &mut Effects) {
        match completion {
            Completion::Storage(reply) => self.storage_done(reply, now, fx),
            Completion::Hash(done) => self.hash_done(done, now, fx),
            Completion::Bus(inbound) => self.bus_event(inbound, now, fx),
        }
    }

    fn storage_done(&mut self, reply: Reply, now: i64, fx: &mut Effects) {
        let outer = fx.begin_answering(reply.requester().cloned());
        self.storage_reply(reply, now, fx);
        fx.end_answering(outer);
    }

    fn storage_reply(&mut self, reply: Reply, now: i64, fx: &mut Effects) {
        match reply {
            Reply::UserCreated {
                to,
                username,
                user_id,
            } => self.user_created(to.conn, username, user_id, now, fx),
            Reply::Credentials { to, found } => self.credentials_found(to.conn, found, fx),
            Reply::LoginLocked { to } => self.login_locked(to.conn, now, fx),
            Reply::RegistrationLimited { to } => self.register_rate_limited(to.conn, now, fx),
            Reply::Found {
                to,
                ticket,
                users,
                group,
            } => self.found(to.conn, ticket, (users, group), now, fx),
            Reply::SessionOpened {
                to,
                queued,
                more_queued,
                mutual_contacts,
                confirmed_through,
                queue_before,
            } => {
                let opened = SessionOpened {
                    queued,
                    more_queued,
                    mutual_contacts,
                    confirmed_through,
                    queue_before,
                };
                self.session_opened(to.conn, opened, now, fx)
            }
            Reply::QueueChunk {
                to,
                queued,
                more_queued,
            } => match self.clients.get(&to.conn).map(|client| &client.auth) {
                Some(Auth::LoggedIn { .. }) => {
                    self.push_catch_up_page(to.conn, queued, more_queued, fx)
                }
                _ => self.push_queue_chunk(to.conn, queued, more_queued, now, fx),
            },
            Reply::SessionInvalid { to } => self.session_invalid(to.conn, now, fx),
            Reply::SessionEnded { to } => self.session_ended(to.conn, now, fx),
            Reply::Sessions { to, sessions } => self.send_sessions(to.conn, sessions, now, fx),
            Reply::WentOffline {
                user_id,
                username,
                mutual_contacts,
            } => self.went_offline(user_id, &username, &mutual_contacts, now, fx),
            Reply::Beat { result } => self.beat_answered(result, fx),
            Reply::PresenceOf { changes } => self.presence_looked_up(changes, now, fx),
            Reply::MessageStored {
                to,
                ticket,
                message_id,
                client_message_id,
                duplicate_of,
                stored,
            } => {
                let stored = MessageStored {
                    ticket,
                    message_id,
                    client_message_id,
                    duplicate_of,
                    message: stored,
                };
                self.message_stored(to.conn, stored, now, fx)
            }
            Reply::History {
                to,
                chat_id,
                messages,
                has_more,
            } => self.history_page(to.conn, chat_id, messages, has_more, now, fx),
            Reply::Synced {
                to,
                messages,
                has_more,
            } => self.synced_page(to.conn, messages, has_more, now, fx),
            Reply::ContactAdded {
                to,
                contacts,
                added,
                mutual,
                contact_id,
                owner_name,
            } => {
                let added = ContactAdded {
                    added,
                    mutual,
                    contact_id,
                    owner_name,
                };
                self.contact_added(to.conn, contacts, added, now, fx);
            }
            Reply::Directory { to, contacts } => self.send_directory(to.conn, contacts, now, fx),
            Reply::Key {
                to,
                username,
                public_key,
            } => self.send_key(to.conn, username, public_key, now, fx),
            Reply::GroupChanged { group, .. } => self.group_changed(group, now, fx),
            Reply::GroupLeft {
                to,
                user_id,
                group_id,
                remaining,
            } => self.group_left(to.conn, user_id, group_id, remaining, now, fx),
            Reply::Confirmed {
                user_id,
                username,
                senders,
            } => self.confirmed(user_id, &username, senders),
            Reply::Failed {
                to,
                ref_tag: tag,
                ticket,
                reason,
            } => {
                if self.lookup_failed(to.conn, ticket, now, fx) {
                    log::warn!("storage failed a lookup of {:?}: {reason}", to.conn);
                    return;
                }
                if let Some(ticket) = ticket {
                    self.forget_delivery(ticket);
                }
                self.counters.storage_failures += 1;
                log::warn!("storage failed a request of {:?}: {reason}", to.conn);
                self.request_failed((to.conn, tag), now, fx);
            }
        }
    }

    fn hash_done(&mut self, done: HashDone, now: i64, fx: &mut Effects) {
        match done {
            HashDone::Derived {
                to,
                username,
                email,
                hash,
            } => fx.storage.push(Command::CreateUser {
                shared: self.shared_registration(to.conn),
                to,
                username,
                email,
                hash,
                now,
            }),
            HashDone::Verified { to, user_id } => {
                let outer = fx.begin_answering(Some(to.clone()));
                self.password_verified(to.conn, user_id, now, fx);
                fx.end_answering(outer);
            }
        }
    }

    /// A storage command could not be queued (queue full or storage gone).
    pub fn storage_refused(&mut self, command: Command, now: i64, fx: &mut Effects) {
        if let Command::LookUp { to, ticket, .. } = &command {
            let outer = fx.begin_answering(Some(to.clone()));
            self.lookup_failed(to.conn, Some(*ticket), now, fx);
            fx.end_answering(outer);
            return;
        }
        if let Command::StoreMessage { ticket, .. } = &command {
            self.forget_delivery(*ticket);
        }
        if let (Command::Heartbeat { .. }, Some(liveness)) = (&command, &mut self.liveness) {
            liveness.beat_not_sent();
        }
        if let Some((to, tag)) = command.requester() {
            let outer = fx.begin_answering(Some(to.clone()));
            self.request_failed((to.conn, tag), now, fx);
            fx.end_answering(outer);
        }
    }

    /// A hashing job could not be queued (too many logins at once).
    pub fn hashing_refused(&mut self, job: HashJob, now: i64, fx: &mut Effects) {
        let (to, register) = match job {
            HashJob::Derive { to, .. } => (to, true),
            HashJob::Verify { to, .. } => (to, false),
        };
        let outer = fx.begin_answering(Some(to.clone()));
        match register {
            true => self.register_rate_limited(to.conn, now, fx),
            false => self.login_rate_limited(to.conn, now, fx),
        }
        fx.end_answering(outer);
    }

    /// Tells the requester `server_busy` and undoes a half-done login.
    fn request_failed(&mut self, (conn, tag): (ConnId, ClientTag), now: i64, fx: &mut Effects) {
        if tag == ClientTag::Login {
            // A password attempt that never reached the hasher is no guess.
            self.end_login_attempt(conn, Verdict::NotTried, fx);
        }
        if !self.clients.contains_key(&conn) {
            return;
        }
        if tag == ClientTag::GetHistory || tag == ClientTag::Sync {
            self.end_read(conn);
        }
        fx.error(
            conn,
            ErrorType::ServerBusy,
            "the server could not store this request; try again",
            tag,
            now,
        );
        if tag == ClientTag::Login {
            self.abandon_login(conn);
            self.run_deferred(conn, now, fx);
        }
    }

    /// The next message's ticket (its name until storage gives it an id).
    fn take_ticket(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Message `message_id` is committed (here or, in a cluster, on another
    /// server): the highest id seen bounds confirmations and departures.
    fn saw_message_id(&mut self, message_id: i64) {
        self.highest_message_id = self.highest_message_id.max(message_id);
    }

    /// The user logged in on `conn`, if any.
    fn logged_in_user(&self, conn: ConnId) -> Option<i64> {
        match self.clients.get(&conn)?.auth {
            Auth::LoggedIn { user_id, .. } => Some(user_id),
            _ => None,
        }
    }

    /// The username logged in on `conn` (empty if none).
    fn username_of(&self, conn: ConnId) -> &str {
        match self.clients.get(&conn).map(|client| &client.auth) {
            Some(Auth::LoggedIn { username, .. }) => username,
            _ => "",
        }
    }

    fn has_logged_in_connection(&self, user_id: i64) -> bool {
        self.online.get(&user_id).is_some_and(|conns| {
            conns.iter().any(|conn| {
                self.clients
                    .get(conn)
                    .is_some_and(|client| matches!(client.auth, Auth::LoggedIn { .. }))
            })
        })
    }

    /// Sends `frame` to every connection of `user_id` except `except`: written
    /// now to logged-in ones, held for ones finishing their login (unless
    /// their offline queue already has it: see [`Queued`]). Returns whether a
    /// logged-in connection without receipts got it (which takes it off the
    /// offline queue; its departure puts back what it did not write).
    fn push_to_user(
        &mut self,
        user_id: i64,
        frame: &str,
        message: Option<(i64, Queued)>,
        except: Option<ConnId>,
        fx: &mut Effects,
    ) -> bool {
        let Some(conns) = self.online.get(&user_id) else {
            return false;
        };
        let mut delivered = false;
        let mut fell_behind = Vec::new();
        for conn in conns {
            if Some(*conn) == except {
                continue;
            }
            let Some(client) = self.clients.get_mut(conn) else {
                continue;
            };
            let output_full = client.output_full;
            match &mut client.auth {
                Auth::LoggedIn {
                    stream: stream @ Stream::FromStorage { .. },
                    ..
                } if message.is_some() => {
                    // Read from storage, in id order (see `Stream`).
                    fell_behind.extend(stream.notice().then_some(*conn));
                }
                Auth::LoggedIn {
                    receipts, stream, ..
                } => match message {
                    Some((id, _)) if output_full || stream.is_behind() => {
                        // Left in storage; pushed as the output drains.
                        if stream.fall_behind(id) {
                            fell_behind.push(*conn);
                        }
                    }
                    Some((id, _)) => {
                        fx.push_message(*conn, frame.to_owned(), id);
                        // A receipts device takes a message only by confirming it.
                        delivered |= !*receipts;
                    }
                    None => fx.push(*conn, frame.to_owned()),
                },
                Auth::Opening(opening) => {
                    let Opening {
                        held,
                        held_bytes,
                        behind_from,
                        queue_before,
                        include_groups,
                        receipts,
                        resumed,
                        ..
                    } = &mut **opening;
                    if let Some((id, queued)) = message {
                        if self.limits.cluster {
                            // Read from storage once logged in (`Stream`).
                            continue;
                        }
                        let whole_history = *receipts && *resumed;
                        let in_queue = id < *queue_before
                            && match queued {
                                Queued::Direct { taken } => whole_history || !taken,
                                Queued::Group => whole_history || *include_groups,
                            };
                        if in_queue {
                            continue;
                        }
                        if behind_from.is_some()
                            || *held_bytes + frame.len() > config::HELD_BYTES_MAX
                        {
                            behind_from.get_or_insert(id);
                            continue;
                        }
                    }
                    *held_bytes += frame.len();
                    held.push((frame.to_owned(), message.map(|(id, _)| id)));
                }
                _ => {}
            }
        }
        for conn in fell_behind {
            self.ask_catch_up_page(conn, fx);
        }
        delivered
    }

    /// Sends `message` to every logged-in connection of `user_id`; the
    /// connection whose request this answers (a GroupInfo to the member who
    /// changed the group) gets it with the request's id.
    fn send_to_user(&mut self, user_id: i64, message: &ServerMessage, now: i64, fx: &mut Effects) {
        let frame = protocol::encode_server(message, now);
        let requester = fx
            .answering_conn()
            .filter(|conn| self.logged_in_user(*conn) == Some(user_id));
        if let Some(conn) = requester {
            fx.send(conn, message, now);
        }
        self.push_to_user(user_id, &frame, None, requester, fx);
    }
}

/// A password attempt checked against the shared lockout (cluster mode).
#[derive(Debug)]
struct SharedAttempt {
    /// The username tried.
    username: String,
    /// Where it counts.
    shared: SharedLogin,
    /// Storage has charged it (its `Credentials` came): its end must be
    /// recorded there too.
    charged: bool,
}

/// Which part of a login's offline queue a delivered message belongs to, so a
/// connection finishing its login is not sent it twice (queue and live).
#[derive(Clone, Copy, Debug)]
enum Queued {
    /// A 1:1 message, and whether it was stored as taken (then only a
    /// resumed receipts session's queue has it).
    Direct {
        /// Stored as taken by a device without receipts.
        taken: bool,
    },
    /// A group message (in the queue when the login includes groups).
    Group,
}

/// A Received on a connection whose SuccessLogin is sent and whose queue is
/// still being pushed: it confirms what it has read so far, so it is handled
/// at once rather than waiting behind the login.
fn is_confirmation_while_queue_pushed(auth: &Auth, message: &ClientMessage) -> bool {
    matches!(message, ClientMessage::Received(_))
        && matches!(
            auth,
            Auth::Opening(opening) if opening.success_sent
        )
}

/// A stored message as the protocol shows it.
fn delivered(message: StoredMessage) -> Delivered {
    Delivered {
        message_id: message.message_id,
        source_id: message.sender,
        dest_id: message.receiver,
        group_id: message.group_id,
        content: message.content,
        is_encrypted: message.is_encrypted,
        time: message.time,
    }
}

#[cfg(test)]
mod tests;
