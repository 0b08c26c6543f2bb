//! `chat` (the line client) and `chat-load` (the load generator) for
//! chat-server: [`chat`] and [`load`] are each one binary's work, and
//! [`tls`] is what both trust for `wss://`, [`stream`] the bytes under
//! their WebSockets.
pub mod chat;
pub mod load;
pub mod stream;
pub mod tls;
