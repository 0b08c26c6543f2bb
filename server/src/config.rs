//! The command line, the runtime configuration built from it, and every fixed
//! limit of the server in one place, each with the reason for its value.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use crate::rate_limit::{self, Rate, RateConfig};

/// Bytes tungstenite's codec reads per call, and the read buffer it
/// allocates per connection — and keeps for the connection's whole life,
/// idle or not. Its default is 128 KiB, which for 10,000 connections would
/// be 1.25 GiB of buffers; 256 bytes is what an idle connection is left
/// with (larger frames still arrive whole: the codec grows the buffer to the
/// frame). The socket is read [`READ_AHEAD_BYTES`] at a time all the same,
/// through the transport's read-ahead (see [`crate::tls::Transport`]).
pub const CODEC_READ_BYTES: usize = 256;

/// Bytes one read of a connection's socket asks for: a small read of the
/// codec lands in the loop thread's one scratch buffer of this size, and only
/// what the codec cannot take yet is kept by the connection (exactly that
/// long, freed once taken), so an idle connection holds none of it while a
/// busy one still gets a burst of chat frames from one `recv`
/// (see [`crate::tls::Transport`]).
pub const READ_AHEAD_BYTES: usize = 2 * 1024;

/// Outgoing bytes buffered before tungstenite writes on its own; the loop
/// flushes every connection it wrote to once per turn anyway, so this only
/// caps how much piles up within one turn.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The per-connection output budget: a connection whose unsent output passes
/// this is closed (1008). Only a connection that does not read its *own*
/// replies gets there: what others send it stops at [`PUSH_BYTES_MAX`], and
/// the parts below add up to less than this (see SECURITY.md, "Budgets"):
/// pushes 256 KiB + one frame in flight 64 KiB + one queue page 256 KiB
/// + [`READS_IN_FLIGHT_MAX`] × [`READ_PAGE_BYTES`] 256 KiB < 1 MiB.
pub const SLOW_CONSUMER_BYTES: usize = 1024 * 1024;

/// Unsent output past which messages from others are no longer written to a
/// connection but left in storage, and pushed a page at a time from there as
/// it drains: a recipient is never closed for what others send it.
pub const PUSH_BYTES_MAX: usize = 256 * 1024;

/// Frames held for a connection finishing its login (sent right after its
/// offline queue). Past this, messages are left in storage instead, and the
/// connection catches up from there once logged in.
pub const HELD_BYTES_MAX: usize = 256 * 1024;

/// Content bytes of one offline-queue or catch-up page (one storage round
/// trip; the next page is asked once this one is written out).
pub const QUEUE_PAGE_BYTES: usize = 256 * 1024;

/// Content bytes of one History or Sync page: a page is cut here (with
/// `has_more: true`) whatever its `limit`, so any page fits the budget.
pub const READ_PAGE_BYTES: usize = 128 * 1024;

/// History and Sync requests one connection may have in storage at once;
/// more are refused with `rate_limited` until one is answered.
pub const READS_IN_FLIGHT_MAX: usize = 2;

/// Content bytes of messages on their way to storage (accepted, not yet
/// committed), for the whole process: past this, new messages get
/// `server_busy` until commits catch up (a fraction of a second at disk
/// speed). Bounds the storage queue's memory in bytes, not only in commands.
pub const STORAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One connection's share of [`STORAGE_BYTES_MAX`], so one fast sender of
/// large messages cannot take the storage queue from everyone else.
pub const STORAGE_BYTES_PER_CONNECTION: usize = 4 * 1024 * 1024;

/// Bytes of requests a connection may pipeline behind a Login still in
/// progress (the login takes a hash, a fraction of a second); more get
/// `server_busy`.
pub const DEFERRED_BYTES_MAX: usize = 256 * 1024;

/// Requests a connection may pipeline behind an unfinished Login, whatever
/// their size; more get `server_busy`.
pub const DEFERRED_REQUESTS_MAX: usize = 256;

/// Cluster mode: lookups of names and groups the loop's caches lack (made
/// or changed on another server whose bus event was missed) waiting for
/// storage at once. Each holds its connection's later requests (bounded by
/// [`DEFERRED_REQUESTS_MAX`]); past it a request that needs one gets
/// `server_busy`. A miss is rare (a lost bus event), so 1,024 is far above
/// need while keeping a flood of made-up names from filling the storage
/// queue.
pub const LOOKUPS_IN_FLIGHT_MAX: usize = 1_024;

/// Cluster mode: names and group memberships storage said do not exist,
/// remembered for [`LOOKUP_MISS_TTL`] so that a client repeating a request
/// for one costs no storage read each time; past this many the oldest
/// expired ones go, and a full table of fresh ones takes no more (those are
/// asked again).
pub const LOOKUP_MISSES_MAX: usize = 10_000;

/// How long a name or membership storage said does not exist is believed:
/// an account made meanwhile on another server whose bus event is also
/// lost is found at most this much later.
pub const LOOKUP_MISS_TTL: Duration = Duration::from_secs(10);

/// Frames read from one connection per turn of the loop, so one busy client
/// cannot starve the others; the rest are read on the next turn.
pub const FRAMES_PER_CONNECTION_PER_TURN: usize = 256;

/// How often a connection left unread for being over its message rate is
/// read again (its frames wait in the socket meanwhile).
pub const THROTTLED_READ_RETRY: Duration = Duration::from_millis(10);

/// Commands that may wait for the storage thread. Past this the loop answers
/// `server_busy` instead of queueing more (bounded memory, visible overload).
pub const STORAGE_QUEUE_MAX: usize = 65_536;

/// Bytes of bus events (cluster mode) the loop has handed to the NATS
/// bridge and it has not yet published. Past it an event is dropped and
/// counted: the database has it, and every receiver recovers it through
/// its cursors (ARCHITECTURE.md, "Cluster mode"). 8 MiB is ~120 events of
/// the largest message (64 KiB) or tens of thousands of ordinary ones: a
/// NATS server that stalls costs at most this much memory.
pub const BUS_OUTBOUND_BYTES_MAX: usize = 8 << 20;

/// Bytes of bus events received from NATS that the loop has not handled
/// yet. Past it the bridge drops what arrives (counted, logged; recovered
/// from the database as above): a flood from other servers cannot grow
/// this one's memory without bound.
pub const BUS_INBOUND_BYTES_MAX: usize = 8 << 20;

/// Messages async-nats may hold for the bridge's subscription before it
/// drops them (its own buffer, counted in messages): with events at most
/// [`BUS_EVENT_BYTES_MAX`] each, 64 of them bound it to 6 MiB.
pub const BUS_SUBSCRIPTION_MESSAGES_MAX: usize = 64;

/// Publishes async-nats may queue towards the NATS server (its command
/// channel, counted in commands): 64 × [`BUS_EVENT_BYTES_MAX`] ≤ 6 MiB.
pub const BUS_CLIENT_COMMANDS_MAX: usize = 64;

/// The largest bus event: a message of the default largest frame (64 KiB)
/// with its routing and a group's member list fits. A larger one is not
/// published (its receivers recover it from the database).
pub const BUS_EVENT_BYTES_MAX: usize = 96 << 10;

/// Cluster mode: the most user ids one heartbeat carries (a server's users
/// online, `storage/postgres/cluster.rs`), 8 bytes each: at most 8 MiB per
/// beat written and per server read back. A server's online users never
/// outnumber its connections, so cluster mode refuses a `--max-connections`
/// above this; a row read with more (another version's) is cut.
pub const BEAT_USERS_MAX: usize = 1 << 20;

/// Cluster mode: users whose presence one [`crate::storage::Command::PresenceOf`]
/// looks up (a dead server's users are asked for in chunks of this many):
/// one query and one reply of bounded size.
pub const PRESENCE_LOOKUP_USERS_MAX: usize = 1_000;

/// Cluster mode: the longest time between two heartbeats, whatever
/// `--timeout`: a server that starts (or whose bus missed news) learns who
/// is online elsewhere from the database within about this.
pub const NODE_BEAT_MAX: Duration = Duration::from_secs(5);

/// Cluster mode: how often this server writes its heartbeat, and how old
/// another's may be before it is taken for dead (ARCHITECTURE.md, "Cluster
/// mode"). Both come from `--timeout`, so that a server killed with SIGKILL
/// has its users shown offline within it: expiry after half of it, a beat
/// every eighth (between one [`TICK`] and [`NODE_BEAT_MAX`]). Beats go out
/// on the loop's tick, so two are at most `beat_every + TICK` apart: the
/// kill comes at most that long after the dead server's last beat, the
/// expiry half of `--timeout` after that beat, and this server's next beat
/// notices at most that long later — under `--timeout` for any `--timeout`
/// of 5 s or more (41 s at the default 60 s). Half, not more: a server
/// whose storage stalls for longer than the expiry (30 s by default) is
/// taken for dead by the others until its next beat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessTimes {
    /// Between two heartbeats of this server.
    pub beat_every: Duration,
    /// A server whose last beat is older than this (by the database's
    /// clock) is taken for dead.
    pub expire_after: Duration,
}

impl LivenessTimes {
    /// The times for an idle timeout of `timeout` (`--timeout`).
    pub fn for_timeout(timeout: Duration) -> LivenessTimes {
        LivenessTimes {
            beat_every: (timeout / 8).clamp(TICK, NODE_BEAT_MAX),
            expire_after: timeout / 2,
        }
    }
}

/// `/healthz` says 503 (`bus_down`) when the connection to NATS has been
/// lost for this long: a moment's reconnect is not an outage, but a server
/// cut off from the bus for longer serves its users without live news from
/// the other servers (they catch up through their cursors), and a load
/// balancer should send them to one that has it.
pub const HEALTH_BUS_GRACE: Duration = Duration::from_secs(10);

/// How long a starting server waits for the NATS server of `--nats`
/// before it refuses to start.
pub const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Storage commands waiting past which new messages get `server_busy` (three
/// quarters of [`STORAGE_QUEUE_MAX`]: the rest is kept for logins, reads and
/// the commands a departure needs).
pub const STORAGE_BUSY_MARK: usize = STORAGE_QUEUE_MAX / 4 * 3;

/// Storage backlog at which the loop stops reading requests until storage
/// catches up (back-pressure instead of unbounded memory). Messages that are
/// already read when the backlog reaches 3/4 of the queue get `server_busy`.
pub const STORAGE_PAUSE_READS: usize = STORAGE_QUEUE_MAX / 2;

/// How long a start (or a reconnect after PostgreSQL went away) waits for
/// the PostgreSQL server to accept a connection: a wrong host fails the
/// start within this instead of hanging it; a reconnect on the storage
/// thread holds its batch at most this long.
pub const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the storage thread tries to reach PostgreSQL again after a
/// COMMIT that failed (the connection died with it, or the backend was
/// terminated after writing its commit record), to learn
/// whether the batch is in the database: its senders are acked if it is,
/// told `server_busy` if it is not — or if this passes without an answer
/// (the outcome is then unknown: a resend with the same client id is
/// still acked once). Long enough for a PostgreSQL restart; every batch
/// behind it waits as long.
pub const POSTGRES_OUTCOME_WAIT: Duration = Duration::from_secs(15);

/// How long a start waits for another server to let go of the same
/// PostgreSQL database before it refuses: long enough for PostgreSQL to
/// notice a server killed with SIGKILL, short enough to say so promptly.
pub const POSTGRES_CLAIM_WAIT: Duration = Duration::from_secs(5);

/// Rows the PostgreSQL backend fetches per round trip when it reads a page
/// of messages (or the client ids at a start), through a portal: the page
/// stops at its byte budget after at most one such fetch past it, so rows
/// past the budget are never sent (at most 64 × the largest message).
pub const POSTGRES_FETCH_ROWS: i32 = 64;

/// Password hashing jobs that may wait for a worker; past this, logins and
/// registrations get `rate_limited`.
pub const HASH_QUEUE_MAX: usize = 1_024;

/// Storage commands executed in one SQLite transaction (group commit). Large
/// enough to amortise the commit, small enough to ack the first of them soon.
pub const STORAGE_BATCH_MAX: usize = 4_096;

/// Password hashing jobs one address (IPv6: one /64) may have waiting for a
/// worker; past it its logins and registrations get `rate_limited` (with
/// `--no-rate-limits`, only [`HASH_QUEUE_MAX`] applies). With the workers
/// taking addresses in turn (see [`crate::hasher`]), a login from a quiet
/// address waits for about one hash per busy address however many jobs a
/// flooding address queued; this share keeps one address from filling the
/// whole queue. 64 logins at 0.3 s on one worker is 20 s: a NAT's worth.
pub const HASH_JOBS_PER_ADDRESS_MAX: usize = 64;

/// `--max-connections` by default: 10,000 idle connections cost about 20 MiB
/// (the 2 KiB-per-connection budget of issue 14: the slab entry, the
/// dispatcher's entry, the codec's [`CODEC_READ_BYTES`] and what tungstenite
/// keeps after its writes; see scripts/bench-reading.md, "Idle memory per
/// connection").
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;

/// The per-address connection cap is `--max-connections` divided by this
/// (one sixteenth), so no single address can take more than a small share
/// of the server; see [`CONNECTIONS_PER_ADDRESS_MIN`].
pub const CONNECTIONS_PER_ADDRESS_SHARE: usize = 16;

/// The per-address connection cap is never below this: a household behind
/// one NAT with a few devices each, or a person with several tabs, fits.
pub const CONNECTIONS_PER_ADDRESS_MIN: usize = 8;

/// `--max-message-bytes` by default: the largest frame (64 KiB), far above
/// any chat message, small enough that a frame is buffered whole cheaply.
pub const MAX_MESSAGE_BYTES_DEFAULT: usize = 64 * 1024;

/// `--pbkdf2-iterations` by default: OWASP's figure for PBKDF2-HMAC-SHA256.
pub const PBKDF2_ITERATIONS_DEFAULT: u32 = 600_000;

/// `--max-group-size` by default: members of one group, the creator
/// included (a group message fans out to each one's connections).
pub const MAX_GROUP_SIZE_DEFAULT: usize = 1000;

/// The default per-address connection cap for a given `--max-connections`:
/// one [`CONNECTIONS_PER_ADDRESS_SHARE`]th, at least
/// [`CONNECTIONS_PER_ADDRESS_MIN`] (and never above the total).
pub fn default_connections_per_address(max_connections: usize) -> usize {
    (max_connections / CONNECTIONS_PER_ADDRESS_SHARE)
        .max(CONNECTIONS_PER_ADDRESS_MIN)
        .min(max_connections)
}

/// `--heartbeat` by default: a ping after 30 s of silence keeps NATs and
/// proxies from dropping an idle but live connection.
pub const HEARTBEAT_SECS_DEFAULT: u64 = 30;

/// `--timeout` by default: a connection silent for 60 s (it did not even
/// answer the heartbeat ping) is closed, so a dead peer holds its place, and
/// its address's share of connections, for at most a minute.
pub const IDLE_TIMEOUT_SECS_DEFAULT: u64 = 60;

/// How long a sender's client `message_id` is remembered: a resend within
/// this window is acked with the first message's id and not stored again
/// (PROTOCOL.md 1.1 asks for at least 24 hours), within
/// [`CLIENT_ID_INDEX_BYTES`].
pub const CLIENT_ID_RETENTION_SECS: i64 = 24 * 60 * 60;

/// Memory for the remembered client ids (the storage thread's in-memory
/// index, `storage/sqlite/client_ids.rs`): 64 MiB is ~400,000 ids of 32
/// characters — a day at ~5 messages per second, or the last ~40 s of a
/// 10,000 msg/s benchmark. Past it the oldest ids are forgotten before
/// their 24 hours, so a very late resend of one of them is stored again;
/// the budget keeps a flood of sends from growing the server without end.
pub const CLIENT_ID_INDEX_BYTES: usize = 64 * 1024 * 1024;

/// A connection that has not finished its WebSocket handshake — or, for a
/// plain HTTP request, received its whole answer — by then is dropped
/// (slowloris).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and headers) read from a new
/// connection, WebSocket upgrade or plain HTTP alike; a longer one is
/// answered 431 and closed. A browser's head is well under 2 KiB, but it
/// carries every cookie of the host name (from any port), so this leaves
/// room for a few; 16 KiB is what Node.js allows.
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;

/// The most header lines in a request head (the parser's table lives on the
/// stack); more are answered 431. Browsers send about 15.
pub const REQUEST_HEADERS_MAX: usize = 64;

/// `/healthz` says 503 when the storage thread has finished neither a
/// batch nor an idle turn (it takes one every 500 ms) for this long: the
/// disk or the thread is stuck. A batch takes milliseconds; a probe that
/// runs every few seconds sees a stall within two probes.
pub const HEALTH_STORAGE_STALL: Duration = Duration::from_secs(5);

/// When shutdown begins, a connection still sending its request head gets
/// this long to finish it (a health probe in flight is answered 503 rather
/// than reset); then it is dropped like any other.
pub const SHUTDOWN_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// `--metrics-allow` by default: `/metrics` is answered on loopback only.
pub const METRICS_ALLOW_DEFAULT: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// How often the loop checks heartbeats, timeouts and the stats line.
pub const TICK: Duration = Duration::from_millis(500);

/// Phases of the confirmation schedule: devices' confirmations (Received)
/// are written to storage in this many groups, one group per
/// [`CONFIRM_TICK`], so at most once per [`TICK`] per device and never all
/// at once.
pub const CONFIRM_PHASES: usize = 10;

/// How often one phase of the confirmation schedule is written.
pub const CONFIRM_TICK: Duration =
    Duration::from_millis(TICK.as_millis() as u64 / CONFIRM_PHASES as u64);

/// How long a session may go unused before it expires.
pub const SESSION_IDLE_SECS: i64 = 7 * 24 * 60 * 60;

/// How fresh a session's `last_used_at` is kept: a login or departure within
/// this many seconds of the stored time leaves the row alone. Rewriting it
/// on every resume and every departure made each a write of the session's
/// table page and of two pages of its `last_used_at` index (BENCHMARKS.md's
/// reading); a time good to a minute serves the 7-day expiry and the
/// sessions list.
pub const LAST_USED_RESOLUTION_SECS: i64 = 60;

/// Sessions one GetSessions lists, the most recently created: a user may
/// hold any number (each password login makes one), and the answer is
/// bounded (about 200 bytes each).
pub const SESSIONS_LISTED_MAX: i64 = 100;

/// How long shutdown waits for in-flight storage and hashing work.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(4);

/// `chat-server`: a secure instant-messaging server speaking the chat protocol
/// over WebSocket, storing everything in SQLite.
#[derive(Debug, Parser)]
#[command(name = "chat-server", version, about, args_override_self = true)]
pub struct Cli {
    /// Without a subcommand, run the server.
    #[command(subcommand)]
    pub command: Option<JsonCommand>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = protocol::DEFAULT_PORT)]
    pub port: u16,
    /// Directory of the SQLite database `chat.db` (created if missing).
    #[arg(long, default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// Keep everything in this PostgreSQL database instead of SQLite under
    /// --data-dir: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`. The schema
    /// is created (or migrated) at start. `export-json` and `import-json`
    /// work on it too.
    #[arg(long, value_name = "URL", global = true)]
    pub database: Option<String>,
    /// Cluster mode: several servers share the PostgreSQL database of
    /// --database and tell each other live events (messages, presence,
    /// logouts) through the NATS server at this URL, `nats://HOST:4222`.
    /// Needs --database postgres://….
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// This server's name in the cluster (default: HOSTNAME-PID).
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
    /// The first token of every NATS subject the cluster uses: clusters (or
    /// test runs) sharing one NATS server keep apart by it.
    #[arg(long, value_name = "PREFIX", default_value = "chat")]
    pub nats_prefix: String,
    /// Log file, appended to (the log also goes to stderr).
    #[arg(long, default_value = "server.log")]
    pub log_file: PathBuf,
    /// Log per-frame detail (never secrets, session ids or message content).
    #[arg(long)]
    pub debug: bool,
    /// Most simultaneous connections; past it new ones get HTTP 503.
    #[arg(long, default_value_t = MAX_CONNECTIONS_DEFAULT)]
    pub max_connections: usize,
    /// Most simultaneous connections from one address (IPv6: one /64); past
    /// it new ones from there get HTTP 503. Default: --max-connections / 16,
    /// at least 8; none with --no-rate-limits unless given.
    #[arg(long)]
    pub max_connections_per_address: Option<usize>,
    /// Seconds of silence from a client before the server sends a WebSocket ping.
    #[arg(long, default_value_t = HEARTBEAT_SECS_DEFAULT)]
    pub heartbeat: u64,
    /// Seconds with nothing received after which a connection is closed. In
    /// cluster mode also the bound on how long a dead server's users still
    /// look online to the other servers (README, "Cluster mode").
    #[arg(long, default_value_t = IDLE_TIMEOUT_SECS_DEFAULT)]
    pub timeout: u64,
    /// PBKDF2-HMAC-SHA256 iterations for new password hashes.
    #[arg(long, default_value_t = PBKDF2_ITERATIONS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..))]
    pub pbkdf2_iterations: u32,
    /// Largest accepted WebSocket frame/message in bytes; larger ones close the
    /// connection with code 1009.
    #[arg(long, default_value_t = MAX_MESSAGE_BYTES_DEFAULT)]
    pub max_message_bytes: usize,
    /// Seconds between the stats lines in the log.
    #[arg(long, default_value_t = 60)]
    pub stats_interval: u64,
    /// Password-hashing worker threads (default: one less than the cores, at
    /// least one; they run at a lower priority than the event loop).
    #[arg(long)]
    pub hash_workers: Option<usize>,
    /// Most members of one group, the creator included.
    #[arg(long, default_value_t = MAX_GROUP_SIZE_DEFAULT)]
    pub max_group_size: usize,
    /// Turn every rate limit off (for benchmarks).
    #[arg(long)]
    pub no_rate_limits: bool,
    /// Sustained messages per second allowed on one connection.
    #[arg(long, default_value_t = rate_limit::MESSAGES_PER_CONNECTION.per_second)]
    pub messages_per_second: f64,
    /// Messages one connection may send in a burst (pipelined).
    #[arg(long, default_value_t = rate_limit::MESSAGES_PER_CONNECTION.burst)]
    pub message_burst: f64,
    /// Failed password logins per account within a minute before a lockout.
    #[arg(long, default_value_t = rate_limit::FAILURES_PER_ACCOUNT)]
    pub login_failures_per_account: u32,
    /// Accept browser handshakes only from this Origin (repeatable); without
    /// it any Origin is accepted. Clients that send no Origin always pass.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Serve `wss://` with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// SQLite durability: `normal` (an acknowledged message survives a crash
    /// of the process) or `full` (it also survives power loss; slower).
    #[arg(long, value_enum, default_value_t = Synchronous::Normal)]
    pub synchronous: Synchronous,
    /// Do not serve the web client: `GET /` and its files answer 404
    /// (`/healthz` and `/metrics` are still answered).
    #[arg(long)]
    pub no_web: bool,
    /// Answer `GET /metrics` only to clients in this network, as a CIDR
    /// (`10.0.0.0/8`) or one address (repeatable); others get 403. Default:
    /// loopback only (127.0.0.0/8 and ::1).
    #[arg(long = "metrics-allow", value_name = "CIDR")]
    pub metrics_allow: Vec<String>,
    /// Keep `<data-dir>/users.json` and `contacts.json` (the original
    /// system's files) current while running, rewritten atomically at most
    /// once a second after a change.
    #[arg(long)]
    pub json_mirror: bool,
}

/// The subcommands: one-off jobs on the `--data-dir` database, or the
/// `--database postgres://…` one. The server must not be running on that
/// data directory meanwhile.
#[derive(Debug, clap::Subcommand)]
pub enum JsonCommand {
    /// Write users.json and contacts.json of the database into DIR. Stop the
    /// server first.
    ///
    /// The accounts (with their password hashes) and contact lists of the
    /// `--data-dir` database (or the `--database postgres://…` one); each
    /// file is written atomically, mode 0600. The server must not be
    /// running on that data directory.
    ExportJson {
        /// Directory to write the two files into (created if missing).
        dir: PathBuf,
    },
    /// Load users.json and contacts.json from DIR into the database. Stop
    /// the server first.
    ///
    /// The `--data-dir` database is created if missing (with `--database
    /// postgres://…`, that database's tables are). Users whose username
    /// exists are skipped and left as they are. A malformed file is refused
    /// and nothing changes. The server must not be running on that data
    /// directory.
    ImportJson {
        /// Directory holding the two files.
        dir: PathBuf,
    },
    /// Write a development CA and a server certificate signed by it into DIR.
    ///
    /// Creates `ca.pem` (give it to clients: `chat --ca-file DIR/ca.pem`),
    /// `cert.pem` and `key.pem` (for `--tls-cert`/`--tls-key`), mode 0600.
    /// For development and tests only.
    GenCert {
        /// Directory to write the three files into (created if missing).
        dir: PathBuf,
        /// Names and addresses the certificate is valid for (repeatable).
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
    },
}

/// SQLite's `synchronous` setting, as offered on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// WAL with `synchronous=NORMAL`: durable against process crashes.
    Normal,
    /// `synchronous=FULL`: fsync on every commit; durable against power loss.
    Full,
}

/// Where the server keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// SQLite, `chat.db` in the data directory (the default).
    Sqlite,
    /// A PostgreSQL database, by its `postgres://` URL (`--database`).
    Postgres(String),
}

/// Cluster mode (`--nats`): how this server reaches the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The NATS server, `nats://HOST:PORT`.
    pub nats_url: String,
    /// This server's name (in its log lines and on what it publishes).
    pub node_id: String,
    /// The first token of every subject.
    pub subject_prefix: String,
}

/// The server's settings, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The database: SQLite in the data directory, or PostgreSQL.
    pub database: Database,
    /// Cluster mode (`--nats`), or `None` for a server alone.
    pub cluster: Option<Cluster>,
    /// See [`Cli::max_connections`].
    pub max_connections: usize,
    /// Most connections from one address (`None`: no per-address cap).
    pub max_connections_per_address: Option<usize>,
    /// Silence before a ping.
    pub heartbeat: Duration,
    /// Silence before a close.
    pub timeout: Duration,
    /// Iterations for new hashes.
    pub pbkdf2_iterations: u32,
    /// Frame and message limit in bytes.
    pub max_message_bytes: usize,
    /// Interval of the stats line.
    pub stats_interval: Duration,
    /// Number of hashing threads.
    pub hash_workers: usize,
    /// Per-frame debug logging.
    pub debug: bool,
    /// Rate limits, `None` when disabled.
    pub rate_limits: Option<RateConfig>,
    /// Most members of one group.
    pub max_group_size: usize,
    /// Origins allowed to open browser WebSockets (empty: any).
    pub allowed_origins: Vec<String>,
    /// Certificate and key files when serving `wss://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Whether SQLite runs with `synchronous=FULL`.
    pub synchronous_full: bool,
    /// Whether the storage thread keeps `users.json` and `contacts.json` in
    /// the data directory current (see [`crate::storage::json_files::Mirror`]).
    pub json_mirror: bool,
    /// Whether the embedded web client is served (`--no-web`: not).
    pub web: bool,
    /// The networks `/metrics` is answered to.
    pub metrics_allow: Vec<IpNet>,
}

impl Config {
    /// Builds the configuration from the command line, or says what is wrong.
    pub fn from_cli(cli: &Cli) -> Result<Config, String> {
        let ip: std::net::IpAddr = cli
            .host
            .parse()
            .map_err(|_| format!("--host {:?} is not an IP address", cli.host))?;
        if cli.timeout == 0 || cli.heartbeat == 0 {
            return Err("--heartbeat and --timeout must be at least 1 second".into());
        }
        if cli.max_message_bytes < 256 {
            return Err("--max-message-bytes must be at least 256".into());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max_connections = cli.max_connections.max(1);
        let database = database(cli)?;
        Ok(Config {
            listen: SocketAddr::new(ip, cli.port),
            data_dir: cli.data_dir.clone(),
            cluster: cluster(cli, &database)?,
            database,
            max_connections,
            max_connections_per_address: connections_per_address(cli, max_connections),
            heartbeat: Duration::from_secs(cli.heartbeat),
            timeout: Duration::from_secs(cli.timeout),
            pbkdf2_iterations: cli.pbkdf2_iterations,
            max_message_bytes: cli.max_message_bytes,
            stats_interval: Duration::from_secs(cli.stats_interval.max(1)),
            hash_workers: cli.hash_workers.unwrap_or(cores.saturating_sub(1)).max(1),
            debug: cli.debug,
            rate_limits: rate_config(cli)?,
            max_group_size: cli.max_group_size.max(1),
            allowed_origins: cli.allowed_origins.clone(),
            tls: cli.tls_cert.clone().zip(cli.tls_key.clone()),
            synchronous_full: cli.synchronous == Synchronous::Full,
            json_mirror: cli.json_mirror,
            web: !cli.no_web,
            metrics_allow: metrics_allow(&cli.metrics_allow)?,
        })
    }

    /// The database file inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("chat.db")
    }
}

/// The database `--database` names (checked to be a PostgreSQL URL), else
/// SQLite; `--json-mirror` keeps SQLite's files and needs SQLite.
fn database(cli: &Cli) -> Result<Database, String> {
    let Some(url) = &cli.database else {
        return Ok(Database::Sqlite);
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("--database takes a postgres://USER@HOST[:PORT]/DB URL".into());
    }
    if cli.json_mirror {
        return Err("--json-mirror works with the SQLite database only (no --database)".into());
    }
    Ok(Database::Postgres(url.clone()))
}

/// Cluster mode, if `--nats` is given: only beside a PostgreSQL database
/// (the servers of a cluster share it; SQLite is one process's file).
fn cluster(cli: &Cli, database: &Database) -> Result<Option<Cluster>, String> {
    let Some(nats_url) = &cli.nats else {
        if cli.node_id.is_some() {
            return Err("--node-id names this server in a cluster: it needs --nats".into());
        }
        return Ok(None);
    };
    if !matches!(database, Database::Postgres(_)) {
        return Err(
            "--nats (cluster mode) needs --database postgres://…: the servers of a \
                    cluster share one PostgreSQL database"
                .into(),
        );
    }
    if !nats_url.starts_with("nats://") {
        return Err("--nats takes a nats://HOST[:PORT] URL".into());
    }
    if cli.max_connections > BEAT_USERS_MAX {
        return Err(format!(
            "--max-connections above {BEAT_USERS_MAX} is refused in cluster mode \
             (a heartbeat lists this server's online users, at most that many)"
        ));
    }
    let node_id = cli.node_id.clone().unwrap_or_else(default_node_id);
    for (flag, value) in [("--node-id", &node_id), ("--nats-prefix", &cli.nats_prefix)] {
        if !is_subject_token(value) {
            return Err(format!(
                "{flag} must be 1-{SUBJECT_TOKEN_CHARS_MAX} characters of A-Z a-z 0-9 _ -"
            ));
        }
    }
    Ok(Some(Cluster {
        nats_url: nats_url.clone(),
        node_id,
        subject_prefix: cli.nats_prefix.clone(),
    }))
}

/// Longest `--node-id` and `--nats-prefix` (they go into every subject).
const SUBJECT_TOKEN_CHARS_MAX: usize = 64;

/// Whether `value` can be one token of a NATS subject: no dots, spaces or
/// wildcards.
fn is_subject_token(value: &str) -> bool {
    (1..=SUBJECT_TOKEN_CHARS_MAX).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `HOSTNAME-PID`, with anything a subject token cannot hold left out.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(SUBJECT_TOKEN_CHARS_MAX - 12)
        .collect();
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{}", std::process::id())
}

/// The per-address connection cap: as given, else the default share unless
/// `--no-rate-limits` (benchmarks open thousands of connections from one
/// address).
fn connections_per_address(cli: &Cli, max_connections: usize) -> Option<usize> {
    match cli.max_connections_per_address {
        Some(cap) => Some(cap.max(1)),
        None if cli.no_rate_limits => None,
        None => Some(default_connections_per_address(max_connections)),
    }
}

/// The networks of `--metrics-allow` (a bare address is a network of one),
/// or loopback when none is given.
fn metrics_allow(given: &[String]) -> Result<Vec<IpNet>, String> {
    if given.is_empty() {
        return Ok(METRICS_ALLOW_DEFAULT
            .iter()
            .map(|net| net.parse().expect("the defaults are valid CIDRs"))
            .collect());
    }
    given
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("--metrics-allow {text:?} is neither a CIDR nor an address"))
        })
        .collect()
}

/// The rate limits the command line asks for.
fn rate_config(cli: &Cli) -> Result<Option<RateConfig>, String> {
    if cli.no_rate_limits {
        return Ok(None);
    }
    if !(cli.messages_per_second > 0.0 && cli.message_burst >= 1.0) {
        return Err("--messages-per-second must be > 0 and --message-burst >= 1".into());
    }
    Ok(Some(RateConfig {
        messages_per_connection: Rate {
            burst: cli.message_burst,
            per_second: cli.messages_per_second,
        },
        failures_per_account: cli.login_failures_per_account.max(1),
        ..RateConfig::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The promise of [`LivenessTimes`]: from a kill to the others noticing
    /// (a beat interval and a tick to the dead server's last beat, the
    /// expiry, a beat interval and a tick of the noticing server) stays
    /// under `--timeout` from 5 s up.
    #[test]
    fn a_dead_server_is_noticed_within_the_timeout() {
        for secs in 5..=3600 {
            let timeout = Duration::from_secs(secs);
            let times = LivenessTimes::for_timeout(timeout);
            let noticed = (times.beat_every + TICK) * 2 + times.expire_after;
            assert!(noticed < timeout, "--timeout {secs}: {noticed:?}");
            assert!(times.beat_every <= NODE_BEAT_MAX);
        }
    }
}
