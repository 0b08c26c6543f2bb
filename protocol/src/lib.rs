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
//! # Decoding: one pass, defined by two
//! serde cannot dispatch on an *integer* tag, so a frame is defined as read
//! twice: first into an `Envelope` (`envelope.rs`) that only looks at `tag` (and
//! `request_id`), then into the struct of that tag. A frame whose first key
//! is `tag` — every frame this crate's encoders write — is read once
//! instead: the tag chooses the body's type and the rest of the object is
//! read straight into it. Anything that pass cannot take (another key
//! first, a bad request id, any error) goes through the two passes, which
//! word every error; a property test checks the one pass never answers
//! differently. Nothing is built as a `serde_json::Value` except a
//! `request_id`, which keeps decoding cheap on the server's hot path (the
//! one pass took the server loop from ~32,400 to ~29,000 instructions per
//! message, `scripts/callgrind.sh`).
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
