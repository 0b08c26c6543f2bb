//! Request ids: every request `chat` sends carries a fresh `request_id`
//! (protocol 1.1), and every reply to it echoes that id, so a reply is
//! matched to its request by id alone — never by the order of replies, nor
//! by guessing from what the reply says.
//!
//! [`Requests`] hands out the ids (a counter) and remembers, for each request
//! still awaiting its reply, what it was sent for ([`Purpose`]): the user's
//! command, or one of the client's own background requests.

use std::collections::HashMap;

use protocol::RequestId;

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
