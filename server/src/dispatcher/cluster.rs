//! Cluster mode (`--nats`): what this server tells the others, and what it
//! does with what they tell it ([`BusEvent`]s, see `bus/mod.rs`).
//!
//! Out: a committed message for recipients who may be connected elsewhere,
//! a user's presence changes on this server, a Delivered receipt, an ended
//! session, a new account, a changed group — each after its commit. In: the
//! same, for this server's connections. Nothing here writes to the database
//! except what a local delivery writes anyway (a device without receipts
//! took a message) and this server's heartbeat: the database stays the
//! truth, and what the bus does not carry a client recovers through its
//! cursors (ARCHITECTURE.md, "Cluster mode").
//!
//! Presence across servers converges through heartbeats in the database
//! (`liveness.rs` keeps the view; here it is fed and acted on): a server
//! that dies has its users shown offline within `--timeout`, a server that
//! starts learns who is online elsewhere from its first heartbeat, and news
//! the bus missed is repaired by the next one.

use std::time::Duration;

use protocol::server::{Delivered, Presence};
use protocol::ServerMessage;

use super::liveness::Liveness;
use super::{Auth, CloseReason, Dispatcher, Effects};
use crate::bus::{BusEvent, Inbound, PresenceStamp};
use crate::completion::ConnId;
use crate::config::{LivenessTimes, PRESENCE_LOOKUP_USERS_MAX};
use crate::storage::{Command, NodeBeat, PresenceChange};

/// What `/healthz` and the stats line say of this server in a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// This server's `--node-id`.
    pub node_id: String,
    /// Whether the database answers heartbeats.
    pub database_ok: bool,
    /// Other servers known alive.
    pub nodes: usize,
}

impl Dispatcher {
    /// Cluster mode: this server is `node_id`, started at `run` (Unix
    /// milliseconds); its heartbeats follow `timeout` (`--timeout`).
    pub fn join_cluster(&mut self, node_id: String, run: i64, timeout: Duration) {
        let times = LivenessTimes::for_timeout(timeout);
        self.liveness = Some(Liveness::new(node_id, run, times));
    }

    /// Cluster mode: what `/healthz` and the stats line report.
    pub fn cluster_view(&self) -> Option<ClusterView> {
        self.liveness.as_ref().map(|liveness| ClusterView {
            node_id: liveness.node_id().to_owned(),
            database_ok: liveness.database_ok(self.clock),
            nodes: liveness.nodes(),
        })
    }

    /// The stamp of the next Presence this server publishes.
    pub(super) fn presence_stamp(&mut self) -> PresenceStamp {
        self.liveness
            .as_mut()
            .map(Liveness::next_stamp)
            .unwrap_or_default()
    }

    /// Once per tick: the heartbeat, when it is due.
    pub(super) fn beat_if_due(&mut self, fx: &mut Effects) {
        let clock = self.clock;
        if !self
            .liveness
            .as_ref()
            .is_some_and(|liveness| liveness.beat_due(clock))
        {
            return;
        }
        let online: Vec<i64> = self.users_logged_in().collect();
        if let Some(liveness) = &mut self.liveness {
            fx.storage.push(liveness.beat(clock, online));
        }
    }

    /// The database answered a heartbeat: the users it showed online or
    /// offline elsewhere (and not online here) are looked up, so that their
    /// contacts here are told.
    pub(super) fn beat_answered(
        &mut self,
        result: Result<Vec<NodeBeat>, String>,
        fx: &mut Effects,
    ) {
        let clock = self.clock;
        let Some(liveness) = &mut self.liveness else {
            return;
        };
        let changes: Vec<(i64, bool)> = liveness
            .beat_answered(result, clock)
            .into_iter()
            .filter(|(user_id, _)| !self.has_logged_in_connection(*user_id))
            .collect();
        for chunk in changes.chunks(PRESENCE_LOOKUP_USERS_MAX) {
            fx.storage.push(Command::PresenceOf {
                changes: chunk.to_vec(),
            });
        }
    }

    /// Names and contacts of users whose presence the heartbeats changed:
    /// their mutual contacts here are told, if it still holds.
    pub(super) fn presence_looked_up(
        &mut self,
        changes: Vec<PresenceChange>,
        now: i64,
        fx: &mut Effects,
    ) {
        for change in changes {
            if self.online_anywhere(change.user_id) == change.online {
                self.tell_contacts(
                    &change.username,
                    &change.mutual_contacts,
                    change.online,
                    now,
                    fx,
                );
            }
        }
    }

    /// Queues `event` for the other servers, in cluster mode only.
    pub(super) fn publish(&self, event: BusEvent, fx: &mut Effects) {
        if self.limits.cluster {
            fx.bus.push(event);
        }
    }

    /// Another server told something.
    pub(super) fn bus_event(&mut self, inbound: Inbound, now: i64, fx: &mut Effects) {
        let (node, event) = match inbound {
            Inbound::Event { node, event, .. } => (node, event),
            Inbound::Gap => return self.read_after_gap(fx),
        };
        match event {
            BusEvent::Message {
                recipients,
                message,
            } => self.remote_message(&recipients, message, fx),
            BusEvent::Presence {
                user_id,
                username,
                online,
                mutual_contacts,
                stamp,
            } => {
                let change = RemotePresence {
                    node,
                    stamp,
                    user_id,
                    online,
                };
                self.remote_presence(change, &username, &mutual_contacts, now, fx);
            }
            BusEvent::Push { user_id, frame } => {
                self.push_to_user(user_id, &frame, None, None, fx);
            }
            BusEvent::Delivered { sender_id, frame } => {
                for conn in self.receipts_connections(sender_id) {
                    fx.push(conn, frame.clone());
                }
            }
            BusEvent::BecameMutual {
                owner_id,
                owner_name,
                contact_id,
                contact_name,
            } => {
                let owner = (owner_id, owner_name);
                self.became_mutual_here(owner, (contact_id, contact_name), now, fx);
            }
            BusEvent::SessionEnded { session_hash } => {
                for conn in self.connections_of_session(None, &session_hash) {
                    fx.closes.push((conn, CloseReason::LoggedOut));
                }
            }
            BusEvent::UserCreated { username, user_id } => {
                self.misses.forget_user(&username);
                self.users.insert(username, user_id);
            }
            BusEvent::GroupChanged { group } => self.group_changed_here(group, now, fx),
            BusEvent::GroupLeft {
                group_id,
                remaining,
            } => self.group_left_here(group_id, remaining, now, fx),
        }
    }

    /// Events may have been missed: every receipts device here reads from
    /// storage past what it was pushed (a device without receipts gets a
    /// missed message at its next login, or by Sync), and the next
    /// heartbeat, at once, repairs presence.
    fn read_after_gap(&mut self, fx: &mut Effects) {
        if let Some(liveness) = &mut self.liveness {
            liveness.beat_soon();
        }
        let mut read_now = Vec::new();
        for (conn, client) in &mut self.clients {
            if let Auth::LoggedIn { stream, .. } = &mut client.auth {
                if stream.notice() {
                    read_now.push(*conn);
                }
            }
        }
        for conn in read_now {
            self.ask_catch_up_page(conn, fx);
        }
    }

    /// A message committed by another server: the recipients' connections
    /// here read it from storage, in id order (`Stream::FromStorage`; a
    /// device without receipts that is written a 1:1 message takes it,
    /// which the read's page records).
    fn remote_message(&mut self, recipients: &[i64], message: Delivered, fx: &mut Effects) {
        self.saw_message_id(message.message_id);
        let mut read_now = Vec::new();
        for user_id in recipients {
            let Some(conns) = self.online.get(user_id) else {
                continue;
            };
            for conn in conns {
                // A connection still logging in reads once logged in.
                if let Some(Auth::LoggedIn { stream, .. }) =
                    self.clients.get_mut(conn).map(|client| &mut client.auth)
                {
                    if stream.notice() {
                        read_now.push(*conn);
                    }
                }
            }
        }
        for conn in read_now {
            self.ask_catch_up_page(conn, fx);
        }
    }

    /// A user came online or went away on another server: this server's
    /// connections of their mutual contacts are told only when the user was
    /// online nowhere before (or is now online nowhere). News older than
    /// what is known of that server (a heartbeat came after it) is ignored.
    fn remote_presence(
        &mut self,
        change: RemotePresence,
        username: &str,
        mutual_contacts: &[i64],
        now: i64,
        fx: &mut Effects,
    ) {
        let RemotePresence {
            node,
            stamp,
            user_id,
            online,
        } = change;
        let was_online = self.online_anywhere(user_id);
        let clock = self.clock;
        let Some(liveness) = &mut self.liveness else {
            return;
        };
        if !liveness.heard(&node, stamp, (user_id, online), clock) {
            return;
        }
        if was_online != self.online_anywhere(user_id) {
            self.tell_contacts(username, mutual_contacts, online, now, fx);
        }
    }

    /// Another server made `owner` and `contact` mutual without knowing
    /// `contact` online: if `contact` is logged in here, each is told the
    /// other is online (the owner, just now adding, is). Where the contact
    /// is on several servers the owner hears it from each: the same state
    /// twice.
    fn became_mutual_here(
        &mut self,
        (owner_id, owner_name): (i64, String),
        (contact_id, contact_name): (i64, String),
        now: i64,
        fx: &mut Effects,
    ) {
        if !self.has_logged_in_connection(contact_id) {
            return;
        }
        let presence = ServerMessage::Presence(Presence {
            username: owner_name,
            online: true,
        });
        self.send_to_user(contact_id, &presence, now, fx);
        self.send_presence(owner_id, contact_name, now, fx);
    }

    /// Sends `message` to every connection of `user_id`: here, and through
    /// the bus on the other servers of a cluster.
    pub(super) fn send_to_user_everywhere(
        &mut self,
        user_id: i64,
        message: &ServerMessage,
        now: i64,
        fx: &mut Effects,
    ) {
        if self.limits.cluster {
            let frame = protocol::encode_server(message, now);
            self.publish(BusEvent::Push { user_id, frame }, fx);
        }
        self.send_to_user(user_id, message, now, fx);
    }

    /// Whether `user_id` is logged in here or, as far as the bus told, on
    /// another server.
    pub(super) fn online_anywhere(&self, user_id: i64) -> bool {
        self.has_logged_in_connection(user_id) || self.online_elsewhere(user_id)
    }

    /// Whether another server has `user_id` online, as its Presence
    /// events and heartbeats said.
    pub(super) fn online_elsewhere(&self, user_id: i64) -> bool {
        self.liveness
            .as_ref()
            .is_some_and(|liveness| liveness.elsewhere(user_id))
    }

    /// Sends Presence for `username` to this server's connections of
    /// `contacts`.
    pub(super) fn tell_contacts(
        &mut self,
        username: &str,
        contacts: &[i64],
        online: bool,
        now: i64,
        fx: &mut Effects,
    ) {
        let presence = ServerMessage::Presence(Presence {
            username: username.to_owned(),
            online,
        });
        for contact in contacts {
            self.send_to_user(*contact, &presence, now, fx);
        }
    }

    /// The connections here using the session `session_hash` (logged in or
    /// still resuming it), of `user_id` when known.
    pub(super) fn connections_of_session(
        &self,
        user_id: Option<i64>,
        session_hash: &str,
    ) -> Vec<ConnId> {
        let uses_session = |auth: &Auth| match auth {
            Auth::LoggedIn {
                session_hash: h, ..
            } => h == session_hash,
            Auth::Opening(opening) => opening.session_hash == session_hash,
            _ => false,
        };
        match user_id {
            Some(user_id) => self
                .online
                .get(&user_id)
                .into_iter()
                .flatten()
                .copied()
                .filter(|conn| {
                    self.clients
                        .get(conn)
                        .is_some_and(|client| uses_session(&client.auth))
                })
                .collect(),
            None => self
                .clients
                .iter()
                .filter(|(_, client)| uses_session(&client.auth))
                .map(|(conn, _)| *conn)
                .collect(),
        }
    }
}

/// What a Presence event says, and who said it when.
struct RemotePresence {
    node: String,
    stamp: PresenceStamp,
    user_id: i64,
    online: bool,
}
