//! `chat-server`: a secure instant-messaging server.
//!
//! # Layout
//! - [`event_loop`]: the one mio thread — listener, waker, signals, the slab
//!   of connections, timers; applies the dispatcher's effects.
//! - [`connection`]: the per-connection state machine around tungstenite
//!   (and, for a request that is not an upgrade, one plain HTTP answer).
//! - [`http`]: plain GET on the WebSocket port — the embedded web client,
//!   `/healthz`, `/metrics` — as pure functions of a parsed request.
//! - [`metrics`]: the counters `/metrics` reports, encoded only when scraped.
//! - [`address_cap`]: connections per address (IPv6 by /64), capped at accept.
//! - [`tls`]: `wss://` (rustls under tungstenite) and development certificates.
//! - [`dispatcher`]: the protocol's rules as a pure function from (state,
//!   message) to effects; one file per group of messages.
//! - [`storage`]: the storage thread and its command/reply vocabulary, the
//!   only code that touches SQLite; [`storage::open`] chooses the backend and
//!   runs the crash-recovery policy; [`storage::sqlite`] has one file per
//!   family of commands; [`storage::json_files`] is the original's
//!   `users.json`/`contacts.json`: export, import, mirror.
//! - [`hasher`] and [`password`]: PBKDF2 on worker threads, PHC strings.
//! - [`id_map`]: the fast hash maps for keys the server hands out itself.
//! - [`priority`]: background threads yield the CPU to the loop.
//! - [`completion`]: how worker threads hand results back and wake the loop.
//! - [`bus`]: cluster mode (`--nats`): what this server tells the others of
//!   a cluster and hears from them, through a NATS bridge thread; nothing
//!   when alone.
//! - [`rate_limit`]: token buckets and failed-login lockouts.
//! - [`shared_limits`]: cluster mode: the lockout and the registration
//!   limit shared by every server, on rows in PostgreSQL.
//! - [`config`]: the command line and every limit, with its reasons.
//!
//! See `ARCHITECTURE.md` at the repository root for the path of a message.

pub mod address_cap;
pub mod bus;
pub mod completion;
pub mod config;
pub mod connection;
pub mod dispatcher;
pub mod event_loop;
pub mod hasher;
pub mod heap;
pub mod http;
pub mod id_map;
pub mod metrics;
pub mod password;
pub mod priority;
pub mod rate_limit;
pub mod shared_limits;
pub mod storage;
pub mod tls;
