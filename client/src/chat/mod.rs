//! `chat`, the line client: a person (or a script) talks to the server from a
//! terminal, speaking only the wire protocol through the `protocol` crate.
//!
//! # Layout
//! - [`app`]: the loop and its state — commands one at a time, answers matched
//!   to them, pushed events, reconnecting, resuming and catching up.
//! - [`command`]: one input line → one [`command::Command`] (pure).
//! - [`render`]: server messages and failures → the lines a person reads (pure).
//! - [`connection`]: one WebSocket over a `TcpStream` with a short read timeout.
//! - [`input`]: the stdin thread that reads a line (or a secret) on request.
//! - [`output`]: stdout/stderr routing and the prompt.
//! - [`session`]: the saved session file (mode 0600).
//! - [`seen`]: message ids already shown, and the highest one.
//! - [`clock`]: local time stamps.
//!
//! # Invariants
//! - Nothing but [`render`] turns a server message into text for a person, and
//!   raw JSON reaches stdout only with `--json`.
//! - At most one command is in flight; the next input line is not even read
//!   before the previous command is answered.
//! - A secret is never printed, logged or saved; only the session id is
//!   saved, and only in a file its owner alone can read.

pub mod app;
pub mod clock;
pub mod command;
pub mod connection;
pub mod input;
pub mod output;
pub mod render;
pub mod seen;
pub mod session;
