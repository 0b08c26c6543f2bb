//! Hash maps keyed by numbers the server hands out itself: connection ids,
//! user, group and message ids, storage tickets.
//!
//! They use foldhash (randomly seeded per process) instead of the standard
//! library's SipHash: at 1:1 message rates the integer-keyed maps of the
//! dispatcher were about 15 % of the event loop's instructions, nearly all
//! of it SipHash (`scripts/callgrind.sh`, scripts/bench-reading.md,
//! "Instruction counts"). SipHash's strength is against keys an attacker
//! chooses to collide; no client chooses these keys. Maps keyed by
//! something a client sends — usernames, addresses — stay on SipHash.

/// A `HashMap` for server-assigned keys (see the module docs).
pub type IdMap<K, V> = foldhash::HashMap<K, V>;

/// A `HashSet` for server-assigned keys (see the module docs).
pub type IdSet<T> = foldhash::HashSet<T>;

pub use foldhash::{HashMapExt, HashSetExt};
