//! Request ids: every request `chat` sends carries a fresh `request_id`
//! (protocol 1.1), and every reply to it echoes that id, so a reply is
//! matched to its request by id alone — never by the order of replies, nor
//! by guessing from what the reply says.
//!
//! [`Requests`] hands out the ids (a counter) and remembers, for each request
//! still awaiting its reply, what it was sent for ([`Purpose`]): the user's
//! command, or one of the client's own background requests.
//!
//! [`command_request`] says what the commands that are one plain request
//! send, and what their answer is read against ([`Asked`]).

use std::collections::HashMap;

use protocol::client::{AddGroupMembers, CreateGroup, GetHistory, LeaveGroup, Register, UserRef};
use protocol::{ClientMessage, RequestId};

use crate::chat::command::{Chat, Command};
use crate::chat::render::Asked;

/// What a request was sent for, which decides what its reply means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The command being run (the app's one pending command).
    Command,
    /// The client's own Login with the saved `session_id`.
    Resume,
    /// The client's own GetGroups after a login, for the groups' names.
    GroupsFetch,
    /// The client's own GetDirectory after a login, for Tab completion of
    /// contact names.
    ContactsFetch,
    /// One page of the client's own `Sync` catch-up after a resume.
    SyncPage,
    /// The client's own GetKey for this user: to open their messages, or
    /// (for the logged-in user) to compare the server's copy of the key.
    GetKey(String),
    /// PublishKey of the logged-in user's key.
    PublishKey,
}

/// The ids handed out so far and the requests awaiting their reply.
#[derive(Debug, Default)]
pub struct Requests {
    /// How many ids were handed out; the next one is this plus one.
    issued: u64,
    /// Requests sent on the current connection and not yet answered.
    in_flight: HashMap<RequestId, Purpose>,
}

impl Requests {
    /// A fresh id for a request sent for `purpose`, remembered until the
    /// reply arrives ([`Requests::finish`]).
    pub fn start(&mut self, purpose: Purpose) -> RequestId {
        self.issued += 1;
        let id = RequestId::from(self.issued);
        self.in_flight.insert(id.clone(), purpose);
        id
    }

    /// What the request `id` was for, if it is still awaited; it no longer
    /// is afterwards (each request gets one reply).
    pub fn finish(&mut self, id: &RequestId) -> Option<Purpose> {
        self.in_flight.remove(id)
    }

    /// Stops awaiting the reply to `id` (whoever sent it gave up); a reply
    /// that still comes matches nothing.
    pub fn forget(&mut self, id: &RequestId) {
        self.in_flight.remove(id);
    }

    /// Stops awaiting every reply: the connection they would come on is gone.
    pub fn clear(&mut self) {
        self.in_flight.clear();
    }

    /// True while the client's own GetKey for `username` awaits its reply.
    pub fn is_getting_key(&self, username: &str) -> bool {
        self.in_flight
            .values()
            .any(|purpose| matches!(purpose, Purpose::GetKey(asked) if asked == username))
    }

    /// True while one of the client's own GetKey or PublishKey requests
    /// awaits its reply.
    pub fn awaits_keys(&self) -> bool {
        self.in_flight
            .values()
            .any(|purpose| matches!(purpose, Purpose::GetKey(_) | Purpose::PublishKey))
    }
}

/// The request a command sends when it is just one request, with what
/// was asked; `None` for commands that are local or take steps of their own
/// (logging in, messages, asking for a password). `group_label` names a
/// group for the failure lines (`#team`, or `#5`).
pub fn command_request(
    command: Command,
    group_label: impl Fn(i64) -> String,
) -> Option<(Asked, ClientMessage)> {
    let request = match command {
        Command::Register {
            username,
            email,
            secret: Some(secret),
        } => (
            Asked::Register {
                username: username.clone(),
            },
            ClientMessage::Register(Register {
                username,
                secret,
                email,
            }),
        ),
        Command::History { with, limit } => {
            let (asked, chat_id) = match with {
                Chat::User(with) => (Asked::History { with: with.clone() }, with),
                Chat::Group(group_id) => (
                    Asked::GroupHistory {
                        group_id,
                        label: group_label(group_id),
                    },
                    format!("g:{group_id}"),
                ),
            };
            let limit = limit.map(i64::from);
            let get_history = GetHistory {
                chat_id,
                before: None,
                limit,
            };
            (asked, ClientMessage::GetHistory(get_history))
        }
        Command::CreateGroup { name, members } => (
            Asked::CreateGroup {
                name: name.clone(),
                members: members.clone(),
            },
            ClientMessage::CreateGroup(CreateGroup { name, members }),
        ),
        Command::AddGroupMembers { group_id, members } => (
            Asked::AddGroupMembers {
                group_id,
                label: group_label(group_id),
                members: members.clone(),
            },
            ClientMessage::AddGroupMembers(AddGroupMembers { group_id, members }),
        ),
        Command::LeaveGroup { group_id } => (
            Asked::LeaveGroup {
                group_id,
                label: group_label(group_id),
            },
            ClientMessage::LeaveGroup(LeaveGroup { group_id }),
        ),
        Command::Groups => (Asked::Groups, ClientMessage::GetGroups),
        Command::Devices => (Asked::Devices, ClientMessage::GetSessions),
        Command::Friends => (Asked::Friends, ClientMessage::GetDirectory),
        Command::Add { username } => (
            Asked::Add {
                username: username.clone(),
            },
            ClientMessage::AddContact(UserRef { username }),
        ),
        Command::Remove { username } => (
            Asked::Remove {
                username: username.clone(),
            },
            ClientMessage::RemoveContact(UserRef { username }),
        ),
        _ => return None,
    };
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_gets_a_fresh_id_and_is_matched_once() {
        let mut requests = Requests::default();
        let first = requests.start(Purpose::Command);
        let second = requests.start(Purpose::GetKey("zed".into()));
        assert_ne!(first, second);
        assert_eq!(
            requests.finish(&second),
            Some(Purpose::GetKey("zed".into()))
        );
        assert_eq!(requests.finish(&second), None);
        assert_eq!(requests.finish(&first), Some(Purpose::Command));
        assert_eq!(requests.finish(&RequestId::Text("1".into())), None);
    }

    #[test]
    fn key_requests_are_visible_until_answered_or_cleared() {
        let mut requests = Requests::default();
        assert!(!requests.awaits_keys());
        let get = requests.start(Purpose::GetKey("bob".into()));
        assert!(requests.is_getting_key("bob"));
        assert!(!requests.is_getting_key("alice"));
        requests.finish(&get);
        assert!(!requests.awaits_keys());
        let publish = requests.start(Purpose::PublishKey);
        assert!(requests.awaits_keys());
        requests.forget(&publish);
        assert!(!requests.awaits_keys());
        requests.start(Purpose::PublishKey);
        requests.start(Purpose::Resume);
        requests.clear();
        assert!(!requests.awaits_keys());
    }
}
