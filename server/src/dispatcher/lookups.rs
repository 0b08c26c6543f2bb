//! Cluster mode: the miss path of the loop's caches. The directory
//! (username → id) and the group members are filled at start and kept
//! current by bus events; a missed event (NATS down, a queue over its
//! bound) leaves them without an account or a membership made on another
//! server. So a request that names a user the directory lacks, or a group
//! the requester is not in as far as the cache knows, first asks storage
//! ([`Command::LookUp`]) and runs once the answer is in the caches; only
//! then can it be refused `unknown_user` or `forbidden`.
//!
//! While a lookup is out, the connection's later requests wait behind it
//! (as behind a login, with the same bounds), so its requests still run in
//! order. Each costs its connection one message of its rate, and lookups
//! out at once are bounded ([`LOOKUPS_IN_FLIGHT_MAX`]); what
//! storage said does not exist is believed for [`LOOKUP_MISS_TTL`]
//! ([`LOOKUP_MISSES_MAX`] of them), so repeating a request for a made-up
//! name costs no read each time. Alone, nothing here runs: the caches are
//! the whole truth.

use std::collections::HashMap;
use std::time::Instant;

use protocol::{ClientMessage, ClientTag, ErrorType};

use super::{Auth, Dispatcher, Effects};
use crate::completion::ConnId;
use crate::config::{LOOKUPS_IN_FLIGHT_MAX, LOOKUP_MISSES_MAX, LOOKUP_MISS_TTL};
use crate::storage::{Command, GroupRow};

/// A request waiting for its lookup.
#[derive(Debug)]
pub(super) struct Lookup {
    /// The lookup's ticket (a `Failed` reply names it).
    ticket: u64,
    /// The request, run again once the answer is in.
    text: String,
    /// Its tag, for a `server_busy` answer if storage fails.
    tag: ClientTag,
    /// What was asked.
    wanted: Wanted,
}

/// What a request needs that the caches lack.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    /// Usernames the directory lacks.
    usernames: Vec<String>,
    /// A group the requester is not in as far as the cache knows.
    group_id: Option<i64>,
}

impl Wanted {
    fn is_empty(&self) -> bool {
        self.usernames.is_empty() && self.group_id.is_none()
    }
}

/// Something storage said does not exist.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Miss {
    /// No account of that name.
    User(String),
    /// `(group, user)`: no such group, or the user is not in it.
    Member(i64, i64),
}

/// What storage said does not exist, and since when.
#[derive(Debug, Default)]
pub(super) struct Misses(HashMap<Miss, Instant>);

impl Misses {
    fn knows(&self, miss: &Miss, now: Instant) -> bool {
        self.0
            .get(miss)
            .is_some_and(|since| now.saturating_duration_since(*since) < LOOKUP_MISS_TTL)
    }

    fn remember(&mut self, miss: Miss, now: Instant) {
        if self.0.len() >= LOOKUP_MISSES_MAX {
            self.0
                .retain(|_, since| now.saturating_duration_since(*since) < LOOKUP_MISS_TTL);
            if self.0.len() >= LOOKUP_MISSES_MAX {
                return;
            }
        }
        self.0.insert(miss, now);
    }

    /// An account of this name exists after all (its bus event came).
    pub(super) fn forget_user(&mut self, username: &str) {
        self.0.remove(&Miss::User(username.to_owned()));
    }
}

impl Dispatcher {
    /// Cluster mode: if `message` needs what the caches lack, asks storage
    /// and parks the request; returns whether it did (or refused it).
    pub(super) fn look_up_first(
        &mut self,
        conn: ConnId,
        text: &str,
        message: &ClientMessage,
        now: i64,
        fx: &mut Effects,
    ) -> bool {
        if !self.limits.cluster {
            return false;
        }
        let wanted = self.wanted(conn, message);
        if wanted.is_empty() {
            return false;
        }
        let tag = message.kind();
        if !self.take_lookup_token(conn) {
            let detail = "too many requests; slow down";
            fx.error(conn, ErrorType::RateLimited, detail, tag, now);
            return true;
        }
        if self.lookups.len() >= LOOKUPS_IN_FLIGHT_MAX {
            let detail = "the server is busy looking up names; try again";
            fx.error(conn, ErrorType::ServerBusy, detail, tag, now);
            return true;
        }
        let ticket = self.take_ticket();
        fx.storage.push(Command::LookUp {
            to: fx.requester(conn),
            ticket,
            usernames: wanted.usernames.clone(),
            group_id: wanted.group_id,
        });
        self.lookups.insert(ticket);
        if let Some(client) = self.clients.get_mut(&conn) {
            client.lookup = Some(Box::new(Lookup {
                ticket,
                text: text.to_owned(),
                tag,
                wanted,
            }));
        }
        true
    }

    /// A lookup costs its connection one message of its rate (a request
    /// naming made-up users is otherwise refused before any rate is
    /// charged, and now it would cost a read); whether there was one.
    fn take_lookup_token(&mut self, conn: ConnId) -> bool {
        let clock = self.clock;
        match self.clients.get_mut(&conn).map(|c| c.buckets.as_mut()) {
            Some(Some(buckets)) => buckets.messages.try_take(clock),
            _ => true,
        }
    }

    /// What `message` from `conn` names that the caches lack (and storage
    /// has not just said is missing).
    fn wanted(&self, conn: ConnId, message: &ClientMessage) -> Wanted {
        let Some(client) = self.clients.get(&conn) else {
            return Wanted::default();
        };
        let user_id = match client.auth {
            Auth::LoggedIn { user_id, .. } => user_id,
            // Anonymous: only a resume names a user (whose account may be
            // new); anything else is refused `not_logged_in` anyway.
            _ => {
                let ClientMessage::Login(login) = message else {
                    return Wanted::default();
                };
                let name = login.session_id.as_ref().map(|_| login.username.as_str());
                return self.wanted_from(0, name.into_iter(), None);
            }
        };
        let (names, group): (Vec<&str>, Option<i64>) = match message {
            ClientMessage::Message(body) => {
                (body.dest_id.as_deref().into_iter().collect(), body.group_id)
            }
            ClientMessage::GetHistory(body) => {
                match body
                    .chat_id
                    .strip_prefix(super::messages::GROUP_CHAT_PREFIX)
                {
                    Some(group) => (Vec::new(), group.parse().ok()),
                    None => (vec![body.chat_id.as_str()], None),
                }
            }
            ClientMessage::AddContact(body)
            | ClientMessage::RemoveContact(body)
            | ClientMessage::GetKey(body) => (vec![body.username.as_str()], None),
            ClientMessage::CreateGroup(body) => {
                (body.members.iter().map(String::as_str).collect(), None)
            }
            ClientMessage::AddGroupMembers(body) => (
                body.members.iter().map(String::as_str).collect(),
                Some(body.group_id),
            ),
            ClientMessage::LeaveGroup(body) => (Vec::new(), Some(body.group_id)),
            _ => (Vec::new(), None),
        };
        self.wanted_from(user_id, names.into_iter(), group)
    }

    fn wanted_from<'n>(
        &self,
        user_id: i64,
        names: impl Iterator<Item = &'n str>,
        group_id: Option<i64>,
    ) -> Wanted {
        let clock = self.clock;
        let mut usernames: Vec<String> = Vec::new();
        for name in names {
            let known = self.users.contains_key(name)
                || self.misses.knows(&Miss::User(name.to_owned()), clock);
            if !known
                && protocol::validate::is_valid_username(name)
                && !usernames.iter().any(|n| n == name)
            {
                usernames.push(name.to_owned());
            }
        }
        // More names than a group may hold: the request is refused for its
        // size, not looked up.
        if usernames.len() > self.limits.max_group_size {
            usernames.clear();
        }
        let group_id = group_id.filter(|&group_id| {
            !self.is_member(group_id, user_id)
                && !self.misses.knows(&Miss::Member(group_id, user_id), clock)
        });
        Wanted {
            usernames,
            group_id,
        }
    }

    /// Storage answered a lookup: the caches learn what exists and what
    /// does not, then the request runs, then what waited behind it.
    pub(super) fn found(
        &mut self,
        conn: ConnId,
        ticket: u64,
        (users, group): (Vec<(String, i64)>, Option<GroupRow>),
        now: i64,
        fx: &mut Effects,
    ) {
        let Some(lookup) = self.end_lookup(conn, ticket) else {
            return;
        };
        let clock = self.clock;
        for name in &lookup.wanted.usernames {
            if !users.iter().any(|(found, _)| found == name) {
                self.misses.remember(Miss::User(name.clone()), clock);
            }
        }
        for (name, user_id) in users {
            self.users.insert(name, user_id);
        }
        if let Some(group_id) = lookup.wanted.group_id {
            match group {
                Some(row) => {
                    self.groups.insert(group_id, row);
                }
                None => {
                    self.groups.remove(&group_id);
                }
            }
            let user_id = self.logged_in_user(conn).unwrap_or(0);
            if !self.is_member(group_id, user_id) {
                self.misses.remember(Miss::Member(group_id, user_id), clock);
            }
        }
        self.handle_request(conn, &lookup.text, false, now, fx);
        self.run_deferred(conn, now, fx);
    }

    /// A lookup failed in storage (or could not be queued): its request is
    /// answered `server_busy`; what waited behind it runs. Returns whether
    /// `ticket` was a lookup of `conn`.
    pub(super) fn lookup_failed(
        &mut self,
        conn: ConnId,
        ticket: Option<u64>,
        now: i64,
        fx: &mut Effects,
    ) -> bool {
        let Some(lookup) = ticket.and_then(|ticket| self.end_lookup(conn, ticket)) else {
            return false;
        };
        let detail = "the server could not look this up; try again";
        fx.error(conn, ErrorType::ServerBusy, detail, lookup.tag, now);
        self.run_deferred(conn, now, fx);
        true
    }

    /// The lookup `ticket` of `conn` is answered: no longer in flight. (A
    /// lookup of a connection gone meanwhile is counted until its answer:
    /// the bound is on storage's work.)
    fn end_lookup(&mut self, conn: ConnId, ticket: u64) -> Option<Lookup> {
        if !self.lookups.remove(&ticket) {
            return None;
        }
        let client = self.clients.get_mut(&conn)?;
        client
            .lookup
            .take_if(|lookup| lookup.ticket == ticket)
            .map(|lookup| *lookup)
    }
}
