//! `chat`, the line client: a person (or a script) talks to the server from a
//! terminal, speaking only the wire protocol through the `protocol` crate.
//!
//! # Layout
//! The loop's state is split by owner: each module below that says "`impl
//! App`" holds one part of the state and the loop's methods for it.
//! - [`app`]: the loop — commands one at a time, answers matched to them by
//!   request id ([`requests`]), pushed events.
//! - `link`: connecting, reconnecting with back-off, resuming the session
//!   (`impl App`).
//! - `account`: `/login`, `/register`, `/logout`, `/whoami`, `/status`, and
//!   what a login changes (`impl App`).
//! - `groups`: the group directory and the messages held while it is
//!   fetched (`impl App`).
//! - `inbox`: what arrives is shown in order, waiting for keys (`impl App`).
//! - `catchup`: `Sync` after a resume, `Received` confirmations, the session
//!   file (`impl App`).
//! - [`keys`]: the user's key file, the peers' published keys, and the key
//!   traffic (`impl App`).
//! - [`e2e`]: end-to-end encryption of 1:1 messages (pure cryptography).
//! - [`command`]: one input line → one [`command::Command`] (pure).
//! - [`render`]: server messages and failures → the lines a person reads (pure).
//! - [`connection`]: one WebSocket over a `TcpStream` with a short read timeout.
//! - [`input`]: the stdin thread that reads a line (or a secret) on request.
//! - [`editor`]: the line editor at a terminal (history, Tab completion,
//!   lines printed above the one being typed).
//! - [`output`]: stdout/stderr routing (through the editor at a terminal).
//! - [`session`]: the saved session file (mode 0600).
//! - [`seen`]: message ids already shown, and the highest one.
//! - [`receipts`]: what this device confirms with `Received`, and how far
//!   the user's own messages are delivered (`/status`, ✓✓).
//! - [`clock`]: local time stamps.
//!
//! # Invariants
//! - Nothing but [`render`] turns a server message into text for a person, and
//!   raw JSON reaches stdout only with `--json`.
//! - One command at a time: the next input line is read once it is answered.
//! - A secret is never printed, logged or saved; only the session id is
//!   saved, and only in a file its owner alone can read.
//! - The end-to-end secret key never leaves its key file (mode 0600) except
//!   into memory, and an encrypted message is never shown as its ciphertext:
//!   it is decrypted, or shown as undecryptable.
//! - `Received` confirms only messages already shown (printed, or written
//!   as a frame with `--json`), and the session file knows it first.
//! - No password reaches the line editor's history: one typed on the line
//!   is cut from it, one asked for is read without echo outside the editor.
//! - A script (stdin not a terminal) never meets the line editor: its lines
//!   are read as they come and its output goes straight to stdout/stderr.

mod account;
pub mod app;
mod catchup;
pub mod clock;
pub mod command;
pub mod connection;
pub mod e2e;
pub mod editor;
mod groups;
mod inbox;
pub mod input;
pub mod keys;
mod link;
pub mod output;
pub mod receipts;
pub mod render;
pub mod requests;
pub mod seen;
pub mod session;
