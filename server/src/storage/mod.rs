//! The storage thread: the loop's only way to the database.
//!
//! The loop sends [`Command`]s over a bounded channel and never waits; the
//! storage thread takes whatever is queued (up to [`STORAGE_BATCH_MAX`]),
//! executes it in one transaction (group commit), commits, and only then sends
//! the [`Reply`]s back through the completion channel and wakes the loop. So
//! a `MessageStored` reply — and the Ack it becomes — always means "committed".
//! Message ids are given inside that transaction (`ids.rs`), so they grow in
//! commit order even with several servers on one database.
//!
//! The loop sees storage only through [`open`], these two enums, [`Snapshot`]
//! and [`StorageHandle`]. The backend behind the thread is a [`Backend`]:
//! [`sqlite`] by default or [`postgres`] (`--database`), chosen in one place
//! ([`startup`], which also holds the crash-recovery policy every backend
//! shares), without the loop knowing which. [`json_files`] is the original's
//! JSON files: the offline `export-json`/`import-json` and the mirror the
//! SQLite backend keeps.
//!
//! [`STORAGE_BATCH_MAX`]: crate::config::STORAGE_BATCH_MAX

#[macro_use]
mod table;

mod checkpoint;
mod client_ids;
mod ids;
pub mod json_files;
mod pages;
pub mod postgres;
#[cfg(test)]
mod queue_model_tests;
pub mod sqlite;
pub mod startup;

pub use pages::OFFLINE_CHUNK;
/// The SQLite schema, also at its first path (`storage::schema`).
pub use sqlite::schema;
pub use startup::{begin_run, open, OpenError, PreviousRun};

use protocol::ClientTag;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::completion::{Completion, CompletionSender, Requester};
use crate::metrics::Histograms;
use crate::password::PasswordHash;
use crate::rate_limit::Verdict;
use crate::shared_limits::{SharedLogin, SharedRegistration};

/// A message as the loop hands it to storage. Its id is assigned by storage
/// inside the transaction that commits it (see `ids.rs`), so ids grow in
/// commit order even with several servers on one database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Server id: 0 from the loop, the assigned id once storage has it.
    pub message_id: i64,
    /// The sender.
    pub sender_id: i64,
    /// The recipient (1:1 messages).
    pub receiver_id: Option<i64>,
    /// The group (group messages).
    pub group_id: Option<i64>,
    /// The text.
    pub content: String,
    /// End-to-end encrypted?
    pub is_encrypted: bool,
    /// Unix seconds when the loop accepted it.
    pub time: i64,
    /// Already pushed to a live connection of the recipient (so it is not in
    /// the recipient's offline queue).
    pub delivered: bool,
}

/// A stored message, read back with the usernames resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Server id.
    pub message_id: i64,
    /// Sender's username.
    pub sender: String,
    /// Recipient's username (1:1 messages).
    pub receiver: Option<String>,
    /// The group (group messages).
    pub group_id: Option<i64>,
    /// The text.
    pub content: String,
    /// End-to-end encrypted?
    pub is_encrypted: bool,
    /// Unix seconds.
    pub time: i64,
}

/// One contact of a Directory, before the loop adds `online`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactRow {
    /// The contact's username.
    pub username: String,
    /// The contact's id.
    pub user_id: i64,
    /// Whether the contact has added the owner too.
    pub mutual: bool,
    /// The contact's last login or disconnect, Unix seconds.
    pub last_activity: Option<i64>,
}

/// Whose conversation a History page is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversation {
    /// With this user.
    Peer(i64),
    /// In this group.
    Group(i64),
}

/// A group with its members, as storage reports it (and as the bus carries
/// it to the other servers of a cluster).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupRow {
    /// The group.
    pub group_id: i64,
    /// Its name.
    pub name: String,
    /// `(user_id, username)` of each member, by username.
    pub members: Vec<(i64, String)>,
}

/// The group messages a departing connection took: every one with an id in
/// `from..=through` was written out to it (it got those before `from` only
/// if another device had, so the cursor may move only when it is already at
/// `from - 1` or beyond).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupsTaken {
    /// The first group message id this connection was sure to get.
    pub from: i64,
    /// Every group message up to here that it was sent is written out.
    pub through: i64,
}

storage_table! {
    /// What the loop asks of storage.
    pub enum Command;
    fn requester() -> Option<(&Requester, ClientTag)>;
    /// Commands answered to a connection (each gets a `to: Requester` field).
    answered {
        /// Create an account; replies [`Reply::UserCreated`].
        CreateUser answers Register {
            /// Username (validated).
            username: String,
            /// Email (validated).
            email: String,
            /// The derived password hash.
            hash: PasswordHash,
            /// Unix seconds.
            now: i64,
            /// Cluster mode: a token of the address's registrations, shared by
            /// every server, is taken first; none left replies
            /// [`Reply::RegistrationLimited`].
            shared: Option<SharedRegistration>,
        },
        /// Read a user's password hash; replies [`Reply::Credentials`].
        FetchCredentials answers Login {
            /// Username as given.
            username: String,
            /// Cluster mode: the account's and the address's shared lockouts
            /// are checked first (locked replies [`Reply::LoginLocked`]) and
            /// the attempt is charged to the account; see `shared_limits.rs`.
            shared: Option<SharedLogin>,
        },
        /// Cluster mode: usernames and a group the loop's caches lack (made
        /// or changed on another server, its bus event missed); replies
        /// [`Reply::Found`]. Its tag is the request's own, kept by the
        /// dispatcher with the lookup (a failure is recognised by `ticket`).
        LookUp answers Message {
            /// The dispatcher's name for this lookup.
            ticket: u64,
            /// Names to find.
            usernames: Vec<String>,
            /// A group to read with its members.
            group_id: Option<i64>,
        },
        /// Create a session after a password login, mark the user online and take
        /// its offline queue; replies [`Reply::SessionOpened`].
        OpenSession answers Login {
            /// The user.
            user_id: i64,
            /// SHA-256 of the new session id.
            session_hash: String,
            /// Peer address, recorded on the user row.
            peer: SocketAddr,
            /// Whether group messages are queued for this login (not when the
            /// user already has a live connection, which got them).
            include_groups: bool,
            /// Unix seconds.
            now: i64,
        },
        /// Resume an existing session; replies [`Reply::SessionOpened`] or
        /// [`Reply::SessionInvalid`].
        ResumeSession answers Login {
            /// The user the session must belong to.
            user_id: i64,
            /// SHA-256 of the presented session id.
            session_hash: String,
            /// A receipts login: the queue is everything addressed to the user
            /// past the session's confirmation, not the offline queue.
            receipts: bool,
            /// Peer address.
            peer: SocketAddr,
            /// Whether group messages are queued for this login.
            include_groups: bool,
            /// Unix seconds.
            now: i64,
        },
        /// The next chunk of a logging-in user's offline queue; replies
        /// [`Reply::QueueChunk`].
        TakeQueue answers Login {
            /// The user.
            user_id: i64,
            /// Only queued messages with smaller ids are taken.
            queue_before: i64,
            /// Only queued messages with larger ids are taken (the last id of
            /// the previous chunk: taking marks nothing, so chunks page by id).
            after: i64,
            /// `Some(confirmed)`: a receipts session's queue — everything
            /// addressed to the user past `confirmed` — instead of the offline
            /// queue.
            since: Option<i64>,
            /// Whether group messages are queued for this login.
            include_groups: bool,
        },
        /// Delete a session (Logout); replies [`Reply::SessionEnded`].
        EndSession answers Logout {
            /// The session.
            session_hash: String,
        },
        /// Store a 1:1 message; replies [`Reply::MessageStored`] after commit.
        StoreMessage answers Message {
            /// The loop's name for this send until storage gives it an id.
            ticket: u64,
            /// The client's id, echoed in the Ack.
            client_message_id: Option<String>,
            /// The message.
            message: NewMessage,
        },
        /// Create a group; replies [`Reply::GroupChanged`].
        CreateGroup answers CreateGroup {
            /// The group's name.
            name: String,
            /// Every member, the creator included, without duplicates.
            member_ids: Vec<i64>,
            /// Unix seconds.
            now: i64,
        },
        /// Add members to a group; replies [`Reply::GroupChanged`].
        AddGroupMembers answers AddGroupMembers {
            /// The group.
            group_id: i64,
            /// Users to add (existing members are left alone).
            member_ids: Vec<i64>,
            /// Unix seconds.
            now: i64,
        },
        /// Remove a member (deleting the group, and its messages, when it was
        /// the last); replies [`Reply::GroupLeft`].
        LeaveGroup answers LeaveGroup {
            /// The leaver.
            user_id: i64,
            /// The group.
            group_id: i64,
        },
        /// A page of one conversation; replies [`Reply::History`].
        History answers GetHistory {
            /// The caller.
            user_id: i64,
            /// The other user, or the group.
            with: Conversation,
            /// Echoed back.
            chat_id: String,
            /// Exclusive upper bound on message ids.
            before: Option<i64>,
            /// Page size.
            limit: u32,
        },
        /// Everything the user sent or received after `since`; replies
        /// [`Reply::Synced`].
        Sync answers Sync {
            /// The caller.
            user_id: i64,
            /// Exclusive lower bound on message ids.
            since: i64,
            /// Page size.
            limit: u32,
        },
        /// Add a contact; replies [`Reply::ContactAdded`].
        AddContact answers AddContact {
            /// The caller.
            owner_id: i64,
            /// The caller's name, for the ContactRequest.
            owner_name: String,
            /// The user added.
            contact_id: i64,
            /// Unix seconds.
            now: i64,
        },
        /// Remove a contact; replies [`Reply::Directory`].
        RemoveContact answers RemoveContact {
            /// The caller.
            owner_id: i64,
            /// The user removed.
            contact_id: i64,
        },
        /// The caller's contacts; replies [`Reply::Directory`].
        Directory answers GetDirectory {
            /// The caller.
            owner_id: i64,
        },
        /// The user's sessions; replies [`Reply::Sessions`].
        Sessions answers GetSessions {
            /// The caller.
            user_id: i64,
        },
        /// Publish a key; replies [`Reply::Key`].
        SetKey answers PublishKey {
            /// The caller.
            user_id: i64,
            /// Echoed back.
            username: String,
            /// The key.
            public_key: String,
        },
        /// Read a user's key; replies [`Reply::Key`].
        GetKey answers GetKey {
            /// Whose key.
            user_id: i64,
            /// Echoed back.
            username: String,
        },
    }
    /// Commands no connection waits for.
    silent {
        /// A logged-in connection went away: touch its session, and when it was
        /// the user's last, mark the user offline and reply [`Reply::WentOffline`].
        ConnectionLost {
            /// The user.
            user_id: i64,
            /// Their name, echoed for the presence frame.
            username: String,
            /// The connection's session.
            session_hash: String,
            /// Whether it was the user's last connection.
            last: bool,
            /// What the connection took of the user's group messages, if anything:
            /// the cursors move to `through` where they already cover `from`.
            groups_taken: Option<GroupsTaken>,
            /// Unix seconds.
            now: i64,
        },
        /// Mark 1:1 messages as taken: written out to a connection of the
        /// recipient (held while it logged in, or pushed from its offline queue).
        /// No reply.
        MarkDelivered {
            /// The recipient.
            user_id: i64,
            /// The messages.
            message_ids: Vec<i64>,
        },
        /// Put messages to `user_id` from `from_message_id` on back into the
        /// offline queue (their connection was dropped unread). No reply.
        Requeue {
            /// The recipient.
            user_id: i64,
            /// The first message that may not have arrived.
            from_message_id: i64,
        },
        /// A receipts device holds everything addressed to `user_id` up to
        /// `through`: record it on the session, take those messages off the
        /// offline queue, and reply [`Reply::Confirmed`] with whose 1:1 messages
        /// this confirmed.
        Confirm {
            /// The recipient.
            user_id: i64,
            /// Their name, echoed for the Delivered receipts.
            username: String,
            /// The device's session.
            session_hash: String,
            /// The confirmation (already capped at the highest id assigned).
            through: i64,
        },
        /// Delete sessions unused since `idle_before` (Unix seconds). No reply.
        PurgeSessions {
            /// Cut-off.
            idle_before: i64,
        },
        /// Cluster mode: this server's heartbeat — its row in `cluster_nodes`
        /// gets the database's clock and the users online here — and the
        /// other servers alive (their last beat within `expire_after_ms`,
        /// by the same clock); replies [`Reply::Beat`], also when it fails.
        Heartbeat {
            /// This server's `--node-id`.
            node_id: String,
            /// The stamp of `online` (see [`crate::bus::PresenceStamp`]).
            stamp: crate::bus::PresenceStamp,
            /// The users with a logged-in connection here.
            online: Vec<i64>,
            /// A server whose last beat is older is not listed.
            expire_after_ms: i64,
            /// The stamp of each server's beat this server applied last:
            /// a row still at that stamp is answered without its users.
            known: Vec<(String, crate::bus::PresenceStamp)>,
        },
        /// Cluster mode: the names and mutual contacts of users whose
        /// presence changed as heartbeats told (a server died, or news the
        /// bus missed); replies [`Reply::PresenceOf`].
        PresenceOf {
            /// `(user_id, online)`, at most
            /// [`crate::config::PRESENCE_LOOKUP_USERS_MAX`].
            changes: Vec<(i64, bool)>,
        },
        /// Cluster mode: how a password attempt charged by
        /// `FetchCredentials` ended (`shared_limits.rs`). No reply.
        EndSharedLogin {
            /// The username tried.
            username: String,
            /// Where it is counted.
            shared: SharedLogin,
            /// How it ended.
            verdict: Verdict,
        },
    }
}

impl Command {
    /// The dispatcher's name for this command, if it has one: a send's
    /// ticket or a lookup's (a `Failed` reply carries it back).
    pub fn ticket(&self) -> Option<u64> {
        match self {
            Command::StoreMessage { ticket, .. } | Command::LookUp { ticket, .. } => Some(*ticket),
            _ => None,
        }
    }
}

/// Another server of a cluster, as its last heartbeat left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBeat {
    /// Its `--node-id`.
    pub node_id: String,
    /// The stamp of `online`.
    pub stamp: crate::bus::PresenceStamp,
    /// The users online there at that beat; `None` when the asker has the
    /// beat of this stamp already (it listed it in `known`).
    pub online: Option<Vec<i64>>,
}

/// A user whose presence changed, with whom to tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceChange {
    /// The user.
    pub user_id: i64,
    /// Their name.
    pub username: String,
    /// Online now, or not.
    pub online: bool,
    /// Their mutual contacts.
    pub mutual_contacts: Vec<i64>,
}

storage_table! {
    /// What storage answers, always after the batch's commit.
    pub enum Reply;
    fn requester() -> Option<&Requester>;
    /// Replies to a connection (each gets a `to: Requester` field).
    answered {
        /// The account exists now (`Some(user_id)`) or the name was taken (`None`).
        UserCreated {
            /// Echoed.
            username: String,
            /// The new id, or `None` if the username was taken.
            user_id: Option<i64>,
        },
        /// A user's hash, or `None` if there is no such user.
        Credentials {
            /// `(user_id, phc)` of the user.
            found: Option<(i64, String)>,
        },
        /// Cluster mode: the account or the address is locked out (counted
        /// over every server); nothing was charged.
        LoginLocked {},
        /// Cluster mode: the address has no registration left (counted
        /// over every server); nothing was stored.
        RegistrationLimited {},
        /// What a [`Command::LookUp`] found.
        Found {
            /// The lookup's ticket.
            ticket: u64,
            /// `(username, user_id)` of each name that exists.
            users: Vec<(String, i64)>,
            /// The group asked for, with its members, if it was asked for
            /// and exists.
            group: Option<GroupRow>,
        },
        /// The session is open (created or resumed).
        SessionOpened {
            /// The first chunk of the offline queue, oldest first, now marked
            /// delivered.
            queued: Vec<StoredMessage>,
            /// More of the queue remains (ask with [`Command::TakeQueue`]).
            more_queued: bool,
            /// Users that are mutual contacts of this one (for Presence).
            mutual_contacts: Vec<i64>,
            /// The session's confirmation (receipts): everything up to here is
            /// on the device.
            confirmed_through: i64,
            /// The queue holds messages below this id, every one committed
            /// when it was read; the loop holds the later ones.
            queue_before: i64,
        },
        /// The next chunk of the offline queue, now marked delivered.
        QueueChunk {
            /// Oldest first.
            queued: Vec<StoredMessage>,
            /// More remains.
            more_queued: bool,
        },
        /// The session id is unknown, expired, or another user's.
        SessionInvalid {},
        /// The session is deleted.
        SessionEnded {},
        /// The message is committed (or was already: a resend).
        MessageStored {
            /// The loop's name for this send.
            ticket: u64,
            /// Server id given to this send.
            message_id: i64,
            /// Client id.
            client_message_id: Option<String>,
            /// The same sender used this client id within the last 24 hours:
            /// nothing was stored, and this is the first message's server id.
            duplicate_of: Option<i64>,
            /// The message itself, handed back after the commit so the loop
            /// delivers it without having kept a copy (`None` for a duplicate).
            stored: Option<NewMessage>,
        },
        /// A page of history, oldest first.
        History {
            /// Echoed.
            chat_id: String,
            /// The page.
            messages: Vec<StoredMessage>,
            /// Older messages exist.
            has_more: bool,
        },
        /// A page of everything after `since`, oldest first.
        Synced {
            /// The page.
            messages: Vec<StoredMessage>,
            /// Newer messages exist.
            has_more: bool,
        },
        /// The directory after AddContact.
        ContactAdded {
            /// The caller's contacts.
            contacts: Vec<ContactRow>,
            /// The contact is new (not added before).
            added: bool,
            /// The contact had already added the caller.
            mutual: bool,
            /// The user added.
            contact_id: i64,
            /// The caller's name, for the ContactRequest.
            owner_name: String,
        },
        /// The caller's contacts.
        Directory {
            /// The contacts.
            contacts: Vec<ContactRow>,
        },
        /// The user's sessions, oldest first, each with its hash (the
        /// dispatcher marks the asking one and those online).
        Sessions {
            /// `(session_hash, session)`.
            sessions: Vec<(String, protocol::server::SessionInfo)>,
        },
        /// A user's key.
        Key {
            /// Whose.
            username: String,
            /// The key, if published.
            public_key: Option<String>,
        },
        /// A group was created or gained members.
        GroupChanged {
            /// The group as it is now.
            group: GroupRow,
        },
        /// A member left; `remaining` is `None` when the group is gone.
        GroupLeft {
            /// The leaver.
            user_id: i64,
            /// The group.
            group_id: i64,
            /// The group without the leaver, if anyone is left.
            remaining: Option<GroupRow>,
        },
        /// The command failed (disk error); nothing of it was stored.
        Failed {
            /// The request's tag, for the `server_busy` answer's `ref_tag`.
            ref_tag: ClientTag,
            /// The command's ticket ([`Command::ticket`]): the send that was
            /// not stored (and so is never delivered), or the lookup.
            ticket: Option<u64>,
            /// What went wrong, for the log.
            reason: String,
        },
    }
    /// Replies no connection waits for.
    silent {
        /// The user's last connection went away; tell these mutual contacts.
        WentOffline {
            /// The user.
            user_id: i64,
            /// Their name.
            username: String,
            /// Mutual contacts to notify.
            mutual_contacts: Vec<i64>,
        },
        /// A confirmation is recorded: the senders whose 1:1 messages to the
        /// user it newly covered, each with the highest such id.
        Confirmed {
            /// The recipient who confirmed.
            user_id: i64,
            /// Their name.
            username: String,
            /// `(sender_id, highest confirmed id from them)`.
            senders: Vec<(i64, i64)>,
        },
        /// A heartbeat is written, with the other servers alive; or why
        /// not.
        Beat {
            /// The other servers whose beat is recent, or the failure.
            result: Result<Vec<NodeBeat>, String>,
        },
        /// The users of a [`Command::PresenceOf`] (an unknown id is left
        /// out).
        PresenceOf {
            /// Each with its name and mutual contacts.
            changes: Vec<PresenceChange>,
        },
    }
}

/// Hands each stored message back to its `MessageStored` reply (in command
/// order), so delivery after the commit needs no second copy of the content.
/// Backends call it with the batch they executed.
pub fn hand_back_stored(batch: Vec<Command>, replies: &mut [Reply]) {
    let mut next = 0;
    for command in batch {
        let Command::StoreMessage {
            message, ticket, ..
        } = command
        else {
            continue;
        };
        let found = replies[next..].iter().position(|reply| {
            matches!(reply, Reply::MessageStored { ticket: stored, duplicate_of: None, .. }
                if *stored == ticket)
        });
        if let Some(offset) = found {
            next += offset;
            if let Reply::MessageStored { stored, .. } = &mut replies[next] {
                *stored = Some(message);
            }
            next += 1;
        }
    }
}

/// When to ask storage to delete expired sessions: at start, then hourly.
#[derive(Debug, Default)]
pub struct PurgeSchedule {
    next_at: i64,
}

impl PurgeSchedule {
    /// Seconds between purges.
    const INTERVAL_SECS: i64 = 3600;

    /// The purge command, if one is due at `now` (Unix seconds).
    pub fn due(&mut self, now: i64) -> Option<Command> {
        if now < self.next_at {
            return None;
        }
        self.next_at = now + Self::INTERVAL_SECS;
        Some(Command::PurgeSessions {
            idle_before: now - crate::config::SESSION_IDLE_SECS,
        })
    }
}

/// What the loop needs to know at startup.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every account, `(username, user_id)`.
    pub users: Vec<(String, i64)>,
    /// Past every message id handed out so far.
    pub next_message_id: i64,
    /// Every group with its members.
    pub groups: Vec<GroupRow>,
    /// The previous process did not shut down cleanly.
    pub recovered_from_crash: bool,
}

/// A backend's own error (`rusqlite::Error` for SQLite), kept as it made it:
/// at open it is reported and the server does not start.
pub type DatabaseError = Box<dyn std::error::Error + Send + Sync>;

/// A store of the server's data, driven by the storage thread; implemented
/// by [`sqlite::SqliteBackend`] and [`postgres::PostgresBackend`].
///
/// Its life: opened by its own constructor (chosen in [`startup`]);
/// [`previous_run`](Backend::previous_run) then
/// [`begin_run`](Backend::begin_run), once, under the crash-recovery policy
/// ([`begin_run`]); then batches ([`execute`](Backend::execute)) with upkeep
/// between them; [`finish`](Backend::finish) on a clean shutdown.
pub trait Backend: Send + 'static {
    /// What the previous run left: the accounts, the groups, the highest
    /// message id stored, the highest reserved, and whether its running mark
    /// is still set. Read once, before [`Backend::begin_run`].
    fn previous_run(&mut self) -> Result<PreviousRun, DatabaseError>;

    /// Moves the id counter up to `ids_reserved_through` (never down) and
    /// sets the running mark, durably and together.
    fn begin_run(&mut self, ids_reserved_through: i64) -> Result<(), DatabaseError>;

    /// Executes the batch (atomically where the backend can) and returns the
    /// replies in command order. Must not return before the writes are durable
    /// to the promised degree.
    fn execute(&mut self, batch: Vec<Command>) -> Vec<Reply>;

    /// Called when no command is waiting (background upkeep may run).
    fn idle(&mut self) {}

    /// Where the backend times its upkeep (index passes), if it has any.
    fn time_upkeep_into(&mut self, _histograms: &Histograms) {}

    /// More upkeep is due right away: the next idle moment should not wait
    /// for the idle tick (an index catching up after a burst).
    fn upkeep_due(&self) -> bool {
        false
    }

    /// Called after a batch's replies are on their way: upkeep that must not
    /// delay those replies (and so the Acks and deliveries) runs here.
    fn after_replies(&mut self) {}

    /// Runs one pass of any write-behind index now, whatever its timing
    /// rules say (the queue model interleaves passes with every step).
    #[cfg(test)]
    fn index_pass_now(&mut self) {}

    /// Called once after the last batch, on a clean shutdown: upkeep left
    /// over, then the running mark cleared.
    fn finish(&mut self);
}

pub use crate::completion::QueueError;

/// How often an idle storage thread gives the backend a chance at upkeep.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// When the storage thread last finished a batch or an idle turn, as
/// milliseconds since its start: the loop's (and `/healthz`'s) evidence that
/// the thread is alive and not stuck on the disk.
#[derive(Debug)]
struct Pulse {
    started: Instant,
    last_ms: AtomicU64,
}

impl Pulse {
    fn new() -> Pulse {
        Pulse {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Release);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last)
    }
}

/// What the storage thread works with besides its backend.
struct Shared {
    /// Commands submitted whose batch has not finished (queued or executing).
    backlog: AtomicUsize,
    pulse: Pulse,
    histograms: Histograms,
}

/// The loop's handle: a bounded command queue and the thread behind it.
pub struct StorageHandle {
    commands: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl StorageHandle {
    /// Starts the storage thread over `backend` (see [`open`]), with at
    /// most `queue_max` commands waiting and `batch_max` per transaction,
    /// timing its batches into `histograms`.
    fn start(
        mut backend: Box<dyn Backend>,
        (queue_max, batch_max): (usize, usize),
        done: CompletionSender,
        histograms: Histograms,
    ) -> std::io::Result<StorageHandle> {
        let (commands, queue) = mpsc::sync_channel(queue_max);
        backend.time_upkeep_into(&histograms);
        let shared = Arc::new(Shared {
            backlog: AtomicUsize::new(0),
            pulse: Pulse::new(),
            histograms,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || run(&mut *backend, &queue, batch_max, &done, &thread_shared))?;
        Ok(StorageHandle {
            commands: Some(commands),
            thread: Some(thread),
            shared,
        })
    }

    /// Commands submitted and not yet executed and answered.
    pub fn backlog(&self) -> usize {
        self.shared.backlog.load(Ordering::Acquire)
    }

    /// How long since the storage thread last finished a batch or an idle
    /// turn (it takes one at least every 500 ms when nothing is queued);
    /// `None` when the thread is gone.
    pub fn silent_for(&self) -> Option<Duration> {
        let running = self
            .thread
            .as_ref()
            .is_some_and(|thread| !thread.is_finished());
        running.then(|| self.shared.pulse.silent_for())
    }

    /// Queues a command without blocking; on failure the command comes back
    /// (boxed: the failure is rare and the command large).
    pub fn submit(&self, command: Command) -> Result<(), Box<(QueueError, Command)>> {
        let Some(commands) = &self.commands else {
            return Err(Box::new((QueueError::Stopped, command)));
        };
        self.shared.backlog.fetch_add(1, Ordering::AcqRel);
        commands.try_send(command).map_err(|error| {
            self.shared.backlog.fetch_sub(1, Ordering::AcqRel);
            Box::new(match error {
                TrySendError::Full(command) => (QueueError::Full, command),
                TrySendError::Disconnected(command) => (QueueError::Stopped, command),
            })
        })
    }

    /// Closes the queue and waits until everything queued is committed and
    /// its replies are sent.
    pub fn finish(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the storage thread panicked");
            }
        }
    }
}

impl Drop for StorageHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The storage thread's body. Never inlined: profiles and
/// `scripts/callgrind.sh` find the storage thread by this function's name.
#[inline(never)]
fn run<B: Backend + ?Sized>(
    backend: &mut B,
    queue: &Receiver<Command>,
    batch_max: usize,
    done: &CompletionSender,
    shared: &Shared,
) {
    // Block for the first command, then take whatever else is already queued.
    loop {
        let first = match queue.try_recv() {
            Ok(command) => command,
            Err(_) => {
                backend.idle();
                shared.pulse.beat();
                let tick = if backend.upkeep_due() {
                    Duration::ZERO
                } else {
                    IDLE_TICK
                };
                match queue.recv_timeout(tick) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match queue.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let executed = batch.len();
        let started = Instant::now();
        let replies = backend.execute(batch);
        let histograms = &shared.histograms;
        histograms
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        histograms.batch_commands.observe(executed as f64);
        if !replies.is_empty() {
            done.send_all(replies.into_iter().map(Completion::Storage));
        }
        // After the replies are queued, so a backlog of 0 means "all answered".
        shared.backlog.fetch_sub(executed, Ordering::AcqRel);
        shared.pulse.beat();
        backend.after_replies();
    }
    backend.finish();
    log::info!("storage thread: queue drained, all work committed");
}
