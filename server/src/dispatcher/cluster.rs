//! Cluster mode (`--nats`): what this server tells the others, and what it
//! does with what they tell it ([`BusEvent`]s, see `bus/mod.rs`).
//!
//! Out: a committed message for recipients who may be connected elsewhere,
//! a user's presence changes on this server, an ended session, a new
//! account, a changed group — each after its commit. In: the same, for this
//! server's connections. Nothing here writes to the database except what a
//! local delivery writes anyway (a device without receipts took a message):
//! the database stays the truth, and what the bus does not carry a client
//! recovers through its cursors (ARCHITECTURE.md, "Cluster mode").

use protocol::server::{Delivered, Presence};
use protocol::ServerMessage;

use super::{Auth, CloseReason, Dispatcher, Effects, Queued, Stream};
use crate::bus::{BusEvent, Inbound};
use crate::completion::ConnId;

impl Dispatcher {
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
            } => {
                let change = RemotePresence {
                    node,
                    user_id,
                    online,
                };
                self.remote_presence(change, &username, &mutual_contacts, now, fx);
            }
            BusEvent::Push { user_id, frame } => {
                self.push_to_user(user_id, &frame, None, None, fx);
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
    /// missed message at its next login, or by Sync).
    fn read_after_gap(&mut self, fx: &mut Effects) {
        let mut read_now = Vec::new();
        for (conn, client) in &mut self.clients {
            if let Auth::LoggedIn {
                stream: Stream::FromStorage { reading, again, .. },
                ..
            } = &mut client.auth
            {
                if *reading {
                    *again = true;
                } else {
                    *reading = true;
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
        let message_id = message.message_id;
        self.saw_message_id(message_id);
        let group = message.group_id.is_some();
        let frame = protocol::encode_delivered(&message);
        for &user_id in recipients {
            let queued = Queued::Remote { group };
            self.push_to_user(user_id, &frame, Some((message_id, queued)), None, fx);
        }
    }

    /// A user came online or went away on another server: this server's
    /// connections of their mutual contacts are told only when the user was
    /// online nowhere before (or is now online nowhere).
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
            user_id,
            online,
        } = change;
        let was_online = self.online_anywhere(user_id);
        let nodes = self.remote_online.entry(user_id).or_default();
        if online {
            nodes.insert(node);
        } else {
            nodes.remove(&node);
            if nodes.is_empty() {
                self.remote_online.remove(&user_id);
            }
        }
        if was_online != self.online_anywhere(user_id) {
            self.tell_contacts(username, mutual_contacts, online, now, fx);
        }
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

    /// Whether another server said `user_id` is online there.
    pub(super) fn online_elsewhere(&self, user_id: i64) -> bool {
        self.remote_online
            .get(&user_id)
            .is_some_and(|nodes| !nodes.is_empty())
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
        let uses_session = |auth: &Auth| {
            matches!(auth,
                Auth::LoggedIn { session_hash: h, .. } | Auth::Opening { session_hash: h, .. }
                    if h == session_hash)
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

/// What a Presence event says, and who said it.
struct RemotePresence {
    node: String,
    user_id: i64,
    online: bool,
}
