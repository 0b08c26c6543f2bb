//! `chat`, the line client: a person (or a script) talks to the server from a
//! terminal, speaking only the wire protocol through the `protocol` crate.
//!
//! # Layout
//! - [`app`]: the loop and its state — commands one at a time, answers matched
//!   by request id ([`requests`]), pushed events, reconnects and catching up.
//! - [`command`]: one input line → one [`command::Command`] (pure).
//! - [`render`]: server messages and failures → the lines a person reads (pure).
//! - [`connection`]: one WebSocket over a `TcpStream` with a short read timeout.
//! - [`input`]: the stdin thread that reads a line (or a secret) on request.
//! - [`output`]: stdout/stderr routing and the prompt.
//! - [`session`]: the saved session file (mode 0600).
//! - [`e2e`]: end-to-end encryption of 1:1 messages (pure cryptography).
//! - [`keys`]: the user's key file and the peers' published keys.
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
