//! Message (tag 11), GetHistory (5) and Sync (16).
//!
//! A message gets a ticket (the loop's name for it until it has an id) and
//! its storage command goes out in the same turn; storage gives it its id
//! inside the transaction that commits it (`storage/ids.rs`), and only then
//! is it acked and delivered. Storage runs commands in queue order and ids
//! grow in commit order, so Acks on one connection come back in sending
//! order with increasing ids.

use protocol::client::{GetHistory, SendMessage, Sync};
use protocol::server::{Ack, History, Synced};
use protocol::validate::{is_storable_text, CLIENT_MESSAGE_ID_CHARS_MAX, NUL_REFUSAL};
use protocol::ClientTag;
use protocol::{ErrorType, ServerMessage};

use super::delivery::{MessageStored, Route};
use super::{delivered, Dispatcher, Effects};
use crate::completion::ConnId;
use crate::config;
use crate::storage::{Command, Conversation, NewMessage, StoredMessage};

/// GetHistory page size when none is given, and its bounds.
const HISTORY_LIMIT_DEFAULT: i64 = 50;
const HISTORY_LIMIT_MAX: i64 = 200;
/// Sync page size when none is given, and its bounds.
const SYNC_LIMIT_DEFAULT: i64 = 500;
const SYNC_LIMIT_MAX: i64 = 1000;
/// The prefix of a group `chat_id`.
pub(super) const GROUP_CHAT_PREFIX: &str = "g:";

/// Where a Message goes.
enum Target {
    /// To this user.
    User(i64),
    /// To this group's members.
    Group(i64),
}

impl Dispatcher {
    pub(super) fn send_message(
        &mut self,
        conn: ConnId,
        sender_id: i64,
        body: SendMessage,
        now: i64,
        fx: &mut Effects,
    ) {
        let target = match self.check_message(conn, sender_id, &body) {
            Ok(target) => target,
            Err((kind, detail)) => {
                fx.error(conn, kind, &detail, ClientTag::Message, now);
                return;
            }
        };
        if !self.allow_message(conn, body.content.len()) {
            let detail = "too many messages; slow down";
            fx.error(
                conn,
                ErrorType::RateLimited,
                detail,
                ClientTag::Message,
                now,
            );
            return;
        }
        let receiver_id = match target {
            Target::User(receiver_id) => receiver_id,
            Target::Group(group_id) => {
                return self.send_group_message(conn, sender_id, group_id, body, now, fx)
            }
        };
        let ticket = self.take_ticket();
        let source = self.username_of(conn).to_owned();
        log::debug!(
            "message (ticket {ticket}): {source} -> {} ({} bytes)",
            body.dest_id.as_deref().unwrap_or(""),
            body.content.len()
        );
        // A message to yourself is already on the sending device.
        let taken = receiver_id == sender_id || self.has_legacy_connection(receiver_id, conn);
        let route = Route::User {
            receiver_id,
            name: body.dest_id.unwrap_or_default(),
        };
        self.await_commit(ticket, source, route, (conn, body.content.len()));
        fx.storage.push(Command::StoreMessage {
            to: fx.requester(conn),
            ticket,
            client_message_id: body.message_id,
            message: NewMessage {
                message_id: 0,
                sender_id,
                receiver_id: Some(receiver_id),
                group_id: None,
                content: body.content,
                is_encrypted: body.is_encrypted,
                time: now,
                delivered: taken,
            },
        });
        self.counters.messages += 1;
    }

    /// Validates a Message; returns where it goes or the error to send.
    fn check_message(
        &self,
        conn: ConnId,
        sender_id: i64,
        body: &SendMessage,
    ) -> Result<Target, (ErrorType, String)> {
        let refuse = |kind, detail: &str| Err((kind, detail.to_owned()));
        let addressed = match (&body.dest_id, body.group_id) {
            (Some(dest), None) => Addressed::User(dest),
            (None, Some(group_id)) => Addressed::Group(group_id),
            (Some(_), Some(_)) => {
                return refuse(ErrorType::BadRequest, "give dest_id or group_id, not both")
            }
            (None, None) => {
                return refuse(ErrorType::BadRequest, "dest_id or group_id is required")
            }
        };
        if body.content.is_empty() {
            return refuse(ErrorType::BadRequest, "content is empty");
        }
        let texts = [Some(&body.content), body.message_id.as_ref()];
        if !texts
            .into_iter()
            .flatten()
            .all(|text| is_storable_text(text))
        {
            return refuse(ErrorType::BadRequest, NUL_REFUSAL);
        }
        if body
            .message_id
            .as_ref()
            .is_some_and(|id| id.chars().count() > CLIENT_MESSAGE_ID_CHARS_MAX)
        {
            let detail =
                format!("message_id is longer than {CLIENT_MESSAGE_ID_CHARS_MAX} characters");
            return refuse(ErrorType::BadRequest, &detail);
        }
        if body
            .source_id
            .as_ref()
            .is_some_and(|source| source != self.username_of(conn))
        {
            return refuse(ErrorType::Forbidden, "source_id must be your own username");
        }
        let target = match addressed {
            Addressed::User(dest) => match self.users.get(dest) {
                Some(&receiver_id) => Target::User(receiver_id),
                None => return refuse(ErrorType::UnknownUser, "no such user"),
            },
            Addressed::Group(group_id) => {
                self.check_member(group_id, sender_id)?;
                Target::Group(group_id)
            }
        };
        if self.storage_backlog >= self.limits.storage_backlog_max
            || !self.storage_budget_allows(conn, body.content.len())
        {
            return refuse(
                ErrorType::ServerBusy,
                "storage is behind; try again shortly",
            );
        }
        Ok(target)
    }

    /// Whether `conn` has used up its message rate and its refusals for now
    /// (it was told `rate_limited` as often as its rate): the loop then
    /// leaves its frames in the socket (TCP back-pressure) instead of
    /// decoding frames only to refuse them, so a flooding client costs the
    /// loop about twice its rate, not what it can write.
    pub fn over_message_rate(&self, conn: ConnId) -> bool {
        self.clients
            .get(&conn)
            .and_then(|client| client.buckets.as_ref())
            .is_some_and(|buckets| {
                let over = !buckets.messages.has_token(self.clock)
                    || !buckets.message_bytes.has_token(self.clock);
                over && !buckets.refusals.has_token(self.clock)
            })
    }

    /// Takes a token from the connection's message bucket and its content's
    /// bytes from its bytes bucket; a message over either rate takes a token
    /// from its refusals instead.
    fn allow_message(&mut self, conn: ConnId, bytes: usize) -> bool {
        let clock = self.clock;
        let Some(buckets) = self.clients.get_mut(&conn).and_then(|c| c.buckets.as_mut()) else {
            return true;
        };
        let allowed = buckets.message_bytes.has_token(clock) && buckets.messages.try_take(clock);
        if allowed {
            // May go below zero for one large message: the next waits longer.
            buckets.message_bytes.charge(bytes as f64, clock);
        } else {
            buckets.refusals.try_take(clock);
        }
        allowed
    }

    /// The message is committed: Ack the sender (with the first message's
    /// id for a resend), then deliver it — only now, so no recipient ever
    /// holds a message the server did not keep.
    pub(super) fn message_stored(
        &mut self,
        conn: ConnId,
        stored: MessageStored,
        now: i64,
        fx: &mut Effects,
    ) {
        let MessageStored {
            ticket,
            message_id,
            client_message_id,
            duplicate_of,
            message,
        } = stored;
        if duplicate_of.is_none() {
            self.counters.messages_stored += 1;
            self.saw_message_id(message_id);
        }
        if self.clients.contains_key(&conn) {
            let ack = Ack {
                message_id: duplicate_of.unwrap_or(message_id),
                client_message_id,
            };
            fx.send(conn, &ServerMessage::Ack(ack), now);
        }
        match message {
            Some(message) => self.deliver_committed(ticket, message, fx),
            None => self.forget_delivery(ticket),
        }
    }

    pub(super) fn history(
        &mut self,
        conn: ConnId,
        user_id: i64,
        body: GetHistory,
        now: i64,
        fx: &mut Effects,
    ) {
        let limit = match page_limit(body.limit, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX) {
            Some(limit) if body.before.is_none_or(|before| before >= 0) => limit,
            _ => {
                let detail = format!(
                    "limit must be 1-{HISTORY_LIMIT_MAX} and before a non-negative message_id"
                );
                fx.error(
                    conn,
                    ErrorType::BadRequest,
                    &detail,
                    ClientTag::GetHistory,
                    now,
                );
                return;
            }
        };
        let with = match body.chat_id.strip_prefix(GROUP_CHAT_PREFIX) {
            Some(id) => {
                let Ok(group_id) = id.parse::<i64>() else {
                    let detail = "a group chat_id is g:<group_id>";
                    return fx.error(
                        conn,
                        ErrorType::BadRequest,
                        detail,
                        ClientTag::GetHistory,
                        now,
                    );
                };
                if let Err((kind, detail)) = self.check_member(group_id, user_id) {
                    return fx.error(conn, kind, &detail, ClientTag::GetHistory, now);
                }
                Conversation::Group(group_id)
            }
            None => match self.users.get(&body.chat_id) {
                Some(&peer_id) => Conversation::Peer(peer_id),
                None => {
                    let detail = "no such user";
                    return fx.error(
                        conn,
                        ErrorType::UnknownUser,
                        detail,
                        ClientTag::GetHistory,
                        now,
                    );
                }
            },
        };
        if !self.begin_read(conn, ClientTag::GetHistory, now, fx) {
            return;
        }
        fx.storage.push(Command::History {
            to: fx.requester(conn),
            user_id,
            with,
            chat_id: body.chat_id,
            before: body.before,
            limit,
        });
    }

    pub(super) fn history_page(
        &mut self,
        conn: ConnId,
        chat_id: String,
        messages: Vec<StoredMessage>,
        has_more: bool,
        now: i64,
        fx: &mut Effects,
    ) {
        self.end_read(conn);
        let page = History {
            chat_id,
            data: messages.into_iter().map(delivered).collect(),
            has_more,
        };
        fx.send(conn, &ServerMessage::History(page), now);
    }

    pub(super) fn sync(
        &mut self,
        conn: ConnId,
        user_id: i64,
        body: Sync,
        now: i64,
        fx: &mut Effects,
    ) {
        let limit = match page_limit(body.limit, SYNC_LIMIT_DEFAULT, SYNC_LIMIT_MAX) {
            Some(limit) if body.since >= 0 => limit,
            _ => {
                let detail =
                    format!("limit must be 1-{SYNC_LIMIT_MAX} and since a non-negative message_id");
                fx.error(conn, ErrorType::BadRequest, &detail, ClientTag::Sync, now);
                return;
            }
        };
        if !self.begin_read(conn, ClientTag::Sync, now, fx) {
            return;
        }
        fx.storage.push(Command::Sync {
            to: fx.requester(conn),
            user_id,
            since: body.since,
            limit,
        });
    }

    pub(super) fn synced_page(
        &mut self,
        conn: ConnId,
        messages: Vec<StoredMessage>,
        has_more: bool,
        now: i64,
        fx: &mut Effects,
    ) {
        self.end_read(conn);
        let page = Synced {
            data: messages.into_iter().map(delivered).collect(),
            has_more,
        };
        fx.send(conn, &ServerMessage::Synced(page), now);
    }
}

impl Dispatcher {
    /// Counts a History or Sync page asked of storage for `conn`; refuses it
    /// (`rate_limited`) when [`config::READS_IN_FLIGHT_MAX`] are already
    /// there, so a connection's pages in flight fit its output budget.
    fn begin_read(&mut self, conn: ConnId, tag: ClientTag, now: i64, fx: &mut Effects) -> bool {
        let Some(client) = self.clients.get_mut(&conn) else {
            return false;
        };
        if client.reads_in_flight >= config::READS_IN_FLIGHT_MAX {
            let detail = format!(
                "at most {} History/Sync requests in flight per connection; \
                 send the next when a page arrives",
                config::READS_IN_FLIGHT_MAX
            );
            fx.error(conn, ErrorType::RateLimited, &detail, tag, now);
            return false;
        }
        client.reads_in_flight += 1;
        true
    }

    /// A History or Sync page for `conn` is answered (or failed).
    pub(super) fn end_read(&mut self, conn: ConnId) {
        if let Some(client) = self.clients.get_mut(&conn) {
            client.reads_in_flight = client.reads_in_flight.saturating_sub(1);
        }
    }
}

/// Whom a Message names, before the name is looked up.
enum Addressed<'a> {
    /// A user, by name.
    User(&'a str),
    /// A group, by id.
    Group(i64),
}

/// The page size to use, or `None` when the requested one is out of bounds.
fn page_limit(requested: Option<i64>, default: i64, max: i64) -> Option<u32> {
    let limit = requested.unwrap_or(default);
    if (1..=max).contains(&limit) {
        u32::try_from(limit).ok()
    } else {
        None
    }
}
