//! client
pub mod chat;
pub mod load;
