//! The bus: what this server tells the other servers of a cluster
//! (`--nats`), and what it hears from them. A server alone has a [`Bus`]
//! that does nothing.
//!
//! The dispatcher puts [`BusEvent`]s in its `Effects` (only in cluster
//! mode) after the fact they announce is committed; the loop hands them to
//! [`Bus::publish`]; the bridge (`nats.rs`, a thread of its own) publishes
//! them, and what it receives comes back through the completion channel as
//! [`Completion::Bus`](crate::completion::Completion::Bus), exactly as
//! storage replies do, for the dispatcher's `bus_event`.
//!
//! Subjects: `<prefix>.user.<user_id>` for a 1:1 message (per recipient)
//! and a frame for one user's connections (a Push, a Delivered receipt),
//! `<prefix>.group.<group_id>` for a group message (once, with its
//! members), `<prefix>.presence`, `<prefix>.session`, `<prefix>.directory`.
//! Every server subscribes to `<prefix>.>` and keeps what concerns its own
//! connections (a wildcard, not one subscription per connected user): no
//! subscription to add before a login can receive, so no window where a
//! message published between a login and its subscription is missed, and no
//! churn of subscriptions as users come and go. The cost is that every
//! server receives every event: right for a few servers, and the place to
//! change (to per-user interest) if a cluster grows to many.
//!
//! The bus is a fast path only. The database is the truth: a server that
//! misses bus traffic (NATS down, a queue over its byte bound) loses
//! nothing a client cannot recover through its cursors (see
//! ARCHITECTURE.md, "Cluster mode").

pub mod nats;

use serde::{Deserialize, Serialize};

use protocol::server::Delivered;

use crate::config::Cluster;
use crate::storage::GroupRow;

/// One thing a server tells the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusEvent {
    /// A committed message, for the recipients' connections on other
    /// servers.
    Message {
        /// The users whose connections get it: the recipient of a 1:1
        /// message, or every member of the group.
        recipients: Vec<i64>,
        /// The message as delivered.
        message: Delivered,
    },
    /// A user's first connection logged in, or their last went away, on
    /// the publishing server.
    Presence {
        /// The user.
        user_id: i64,
        /// Their name (the Presence frame's `username`).
        username: String,
        /// Online or offline.
        online: bool,
        /// Their mutual contacts, who are told.
        mutual_contacts: Vec<i64>,
        /// Where this change stands among the publishing server's presence
        /// changes and heartbeats (`dispatcher/liveness.rs`): an older one
        /// than a receiver already applied is ignored.
        stamp: PresenceStamp,
    },
    /// A frame for every connection of a user (a ContactRequest, a
    /// Presence when an add made two online users mutual).
    Push {
        /// The user.
        user_id: i64,
        /// The encoded frame.
        frame: String,
    },
    /// A Delivered receipt (37) for the sender's receipts connections: the
    /// recipient confirmed on the publishing server.
    Delivered {
        /// The sender of the messages confirmed.
        sender_id: i64,
        /// The encoded Delivered frame.
        frame: String,
    },
    /// An add made two users mutual contacts while the server it was made
    /// on did not know the contact online (its login Presence may still be
    /// on the way): the servers where the contact is logged in tell both.
    BecameMutual {
        /// The user who added (logged in on the publishing server).
        owner_id: i64,
        /// Their name.
        owner_name: String,
        /// The user added, who had added the owner before.
        contact_id: i64,
        /// Their name.
        contact_name: String,
    },
    /// A session was ended (Logout): every connection using it closes.
    SessionEnded {
        /// The session's SHA-256.
        session_hash: String,
    },
    /// An account was created (the directory cache learns it).
    UserCreated {
        /// The name.
        username: String,
        /// The id.
        user_id: i64,
    },
    /// A group was created or gained members.
    GroupChanged {
        /// The group as it is now.
        group: GroupRow,
    },
    /// A member left a group (`remaining: None`: the group is gone).
    GroupLeft {
        /// The group.
        group_id: i64,
        /// The group without the leaver, if anyone is left.
        remaining: Option<GroupRow>,
    },
}

impl BusEvent {
    /// The subject it is published on, under `prefix`.
    pub fn subject(&self, prefix: &str) -> String {
        match self {
            BusEvent::Message { message, .. } => match (message.group_id, &self.single_recipient())
            {
                (Some(group_id), _) => format!("{prefix}.group.{group_id}"),
                (None, Some(user_id)) => format!("{prefix}.user.{user_id}"),
                (None, None) => format!("{prefix}.user.none"),
            },
            BusEvent::Presence { .. } => format!("{prefix}.presence"),
            BusEvent::Push { user_id, .. }
            | BusEvent::Delivered {
                sender_id: user_id, ..
            }
            | BusEvent::BecameMutual {
                contact_id: user_id,
                ..
            } => format!("{prefix}.user.{user_id}"),
            BusEvent::SessionEnded { .. } => format!("{prefix}.session"),
            BusEvent::UserCreated { .. }
            | BusEvent::GroupChanged { .. }
            | BusEvent::GroupLeft { .. } => format!("{prefix}.directory"),
        }
    }

    fn single_recipient(&self) -> Option<i64> {
        match self {
            BusEvent::Message { recipients, .. } if recipients.len() == 1 => {
                recipients.first().copied()
            }
            _ => None,
        }
    }
}

/// The order of one server's presence news: its run (the process's start,
/// in Unix milliseconds, so a restarted server's news is newer than its
/// previous life's) and a version it raises at each Presence it publishes.
/// A heartbeat written to the database carries the stamp of the moment its
/// user set was taken. Ordered by run, then version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PresenceStamp {
    /// The server process's start, Unix milliseconds.
    pub run: i64,
    /// Presence events published by that process so far.
    pub version: i64,
}

/// Whether this server can reach NATS, as `/healthz` and the stats line
/// say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusState {
    /// Not in a cluster.
    Alone,
    /// Connected to NATS.
    Connected,
    /// The connection to NATS is lost and async-nats is reconnecting,
    /// since this long.
    Reconnecting(std::time::Duration),
}

impl BusState {
    /// The word `/healthz` and the stats line use.
    pub fn as_str(self) -> &'static str {
        match self {
            BusState::Alone => "alone",
            BusState::Connected => "connected",
            BusState::Reconnecting(_) => "reconnecting",
        }
    }
}

/// What travels on the wire: the event and the server that sent it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The publishing server's `--node-id`.
    pub node: String,
    /// The event.
    pub event: BusEvent,
}

/// What the bridge hands the loop.
#[derive(Debug)]
pub enum Inbound {
    /// An event from another server, with its size (what it counts against
    /// [`crate::config::BUS_INBOUND_BYTES_MAX`] until handled).
    Event {
        /// The server that sent it.
        node: String,
        /// The event.
        event: BusEvent,
        /// Its encoded bytes.
        bytes: usize,
    },
    /// Events may have been missed (the connection to NATS was lost and is
    /// back, NATS dropped some for a slow subscriber, or the inbound queue
    /// was full): every receipts device here reads from storage once.
    Gap,
}

impl Inbound {
    /// The bytes it counts against the inbound bound.
    pub fn bytes(&self) -> usize {
        match self {
            Inbound::Event { bytes, .. } => *bytes,
            Inbound::Gap => 0,
        }
    }
}

/// The loop's side of the bus: nothing when alone, the NATS bridge in a
/// cluster.
pub enum Bus {
    /// A server alone: events go nowhere (the dispatcher makes none).
    Alone,
    /// Cluster mode.
    Nats(nats::Bridge),
}

impl Bus {
    /// The bus `cluster` asks for: the bridge connected to NATS (or why it
    /// could not connect), or nothing.
    pub fn start(
        cluster: Option<&Cluster>,
        done: crate::completion::CompletionSender,
    ) -> Result<Bus, String> {
        match cluster {
            None => Ok(Bus::Alone),
            Some(cluster) => nats::Bridge::start(cluster, done).map(Bus::Nats),
        }
    }

    /// Publishes `event` to the other servers (dropped, and counted, when
    /// the outbound queue is past its byte bound).
    pub fn publish(&self, event: BusEvent) {
        if let Bus::Nats(bridge) = self {
            bridge.publish(event);
        }
    }

    /// The loop has handled `inbound`.
    pub fn handled(&self, inbound: &Inbound) {
        if let Bus::Nats(bridge) = self {
            bridge.handled(inbound);
        }
    }

    /// Whether NATS is reachable now.
    pub fn state(&self) -> BusState {
        match self {
            Bus::Alone => BusState::Alone,
            Bus::Nats(bridge) => bridge.state(),
        }
    }

    /// Events dropped so far (either way) for being over a byte bound or
    /// undecodable.
    pub fn dropped(&self) -> u64 {
        match self {
            Bus::Alone => 0,
            Bus::Nats(bridge) => bridge.dropped(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events go out on their subjects and read back as they were.
    #[test]
    fn events_have_subjects_and_read_back() {
        let message = Delivered {
            message_id: 7,
            source_id: "ann".into(),
            dest_id: Some("bob".into()),
            group_id: None,
            content: "hi".into(),
            is_encrypted: false,
            time: 1,
        };
        let one = BusEvent::Message {
            recipients: vec![2],
            message: message.clone(),
        };
        assert_eq!(one.subject("t1"), "t1.user.2");
        let group = BusEvent::Message {
            recipients: vec![1, 2],
            message: Delivered {
                dest_id: None,
                group_id: Some(9),
                ..message
            },
        };
        assert_eq!(group.subject("t1"), "t1.group.9");
        let envelope = Envelope {
            node: "n1".into(),
            event: group.clone(),
        };
        let json = serde_json::to_string(&envelope).unwrap();
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back.event, group);
        assert_eq!(
            BusEvent::SessionEnded {
                session_hash: "h".into()
            }
            .subject("p"),
            "p.session"
        );
        let receipt = BusEvent::Delivered {
            sender_id: 4,
            frame: "{}".into(),
        };
        assert_eq!(receipt.subject("p"), "p.user.4");
    }

    /// A restarted server's presence news is newer than its previous
    /// life's, whatever the versions.
    #[test]
    fn stamps_order_by_run_then_version() {
        let old = PresenceStamp {
            run: 1_000,
            version: 90,
        };
        let restarted = PresenceStamp {
            run: 2_000,
            version: 1,
        };
        assert!(restarted > old);
        assert!(PresenceStamp { version: 91, ..old } > old);
    }
}
