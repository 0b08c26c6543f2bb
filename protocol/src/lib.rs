//! The chat wire protocol, version 1.1, as Rust types.
//!
//! Every frame is one JSON object with an integer `tag` that names the message
//! (see `README.md` beside this crate for the reference with an example frame
//! per tag). This crate knows nothing of sockets, mio or SQLite: it turns text
//! into typed messages and typed messages into text, and nothing else.
//!
//! # Layout
//! - [`client`]: what a client sends ([`ClientMessage`]) and [`decode_client`].
//! - [`server`]: what the server sends ([`ServerMessage`]), [`encode_server`]
//!   and [`decode_server`] (used by clients and tests).
//! - [`error`]: [`DecodeError`] and the protocol's `error_type` values
//!   ([`ErrorType`]).
//! - [`request_id`]: [`RequestId`], echoed on every reply (protocol 1.1).
//! - [`validate`]: the shared rules for usernames, emails and secrets.
//!
//! # Decoding in two passes
//! serde cannot dispatch on an *integer* tag, so a frame is read twice: first
//! into an [`Envelope`](envelope) that only looks at `tag`, then into the
//! struct of that tag. Both passes borrow the same `&str`; nothing is built as a
//! `serde_json::Value`, which keeps decoding cheap on the server's hot path.
#![deny(missing_docs)]

pub mod client;
mod envelope;
pub mod error;
pub mod request_id;
pub mod server;
mod table;
pub mod validate;

pub use client::{
    decode_client, decode_request, encode_client, encode_request, ClientMessage, ClientTag,
};
pub use error::{DecodeError, ErrorType};
pub use request_id::RequestId;
pub use server::{
    decode_reply, decode_server, encode_delivered, encode_reply, encode_server, ServerMessage,
    ServerTag,
};

/// The default TCP port of the server.
pub const DEFAULT_PORT: u16 = 8765;
