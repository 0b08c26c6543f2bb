//! AddContact (6), RemoveContact (7), the Directory (4 → 26), ContactRequest
//! (31), PublishKey (9) and GetKey (10).
//!
//! Privacy rule: `online` and `last_activity` of a contact are shown only when
//! the contact is mutual — a user who has not added you back learns nothing
//! about when you are around.

use protocol::client::{PublishKey, UserRef};
use protocol::server::{ContactRequest, Directory, DirectoryEntry, Key, Presence};
use protocol::validate::{is_storable_text, PUBLIC_KEY_BYTES_MAX};
use protocol::ClientTag;
use protocol::{ErrorType, ServerMessage};

use super::{Dispatcher, Effects};
use crate::bus::BusEvent;
use crate::completion::ConnId;
use crate::storage::{Command, ContactRow};

/// What storage says an AddContact did.
pub(super) struct ContactAdded {
    /// The contact is new (not added before).
    pub added: bool,
    /// The contact had already added the caller.
    pub mutual: bool,
    /// The user added.
    pub contact_id: i64,
    /// The caller's name.
    pub owner_name: String,
}

impl Dispatcher {
    pub(super) fn add_contact(
        &mut self,
        conn: ConnId,
        owner_id: i64,
        body: UserRef,
        now: i64,
        fx: &mut Effects,
    ) {
        let found = self.contact_named(&body.username).and_then(|contact_id| {
            if contact_id == owner_id {
                let detail = "you cannot add yourself as a contact";
                return Err((ErrorType::BadRequest, detail.to_owned()));
            }
            Ok(contact_id)
        });
        let contact_id = match found {
            Ok(contact_id) => contact_id,
            Err((kind, detail)) => {
                return fx.error(conn, kind, &detail, ClientTag::AddContact, now)
            }
        };
        fx.storage.push(Command::AddContact {
            to: fx.requester(conn),
            owner_id,
            owner_name: self.username_of(conn).to_owned(),
            contact_id,
            now,
        });
    }

    /// The user a contact request names, or `unknown_user`.
    fn contact_named(&self, username: &str) -> Result<i64, (ErrorType, String)> {
        let found = self.users.get(username).copied();
        found.ok_or_else(|| (ErrorType::UnknownUser, "no such user".to_owned()))
    }

    pub(super) fn remove_contact(
        &mut self,
        conn: ConnId,
        owner_id: i64,
        body: UserRef,
        now: i64,
        fx: &mut Effects,
    ) {
        let contact_id = match self.contact_named(&body.username) {
            Ok(contact_id) => contact_id,
            Err((kind, detail)) => {
                return fx.error(conn, kind, &detail, ClientTag::RemoveContact, now)
            }
        };
        fx.storage.push(Command::RemoveContact {
            to: fx.requester(conn),
            owner_id,
            contact_id,
        });
    }

    pub(super) fn send_directory(
        &mut self,
        conn: ConnId,
        contacts: Vec<ContactRow>,
        now: i64,
        fx: &mut Effects,
    ) {
        let data = contacts
            .into_iter()
            .map(|row| DirectoryEntry {
                online: row.mutual && self.online_anywhere(row.user_id),
                last_activity: row.last_activity.filter(|_| row.mutual),
                username: row.username,
                user_id: row.user_id,
                mutual: row.mutual,
            })
            .collect();
        fx.send(conn, &ServerMessage::Directory(Directory { data }), now);
    }

    /// Tells `contact_id`'s live connections that `owner_name` added them.
    pub(super) fn notify_contact_request(
        &mut self,
        contact_id: i64,
        owner_name: String,
        now: i64,
        fx: &mut Effects,
    ) {
        let request = ServerMessage::ContactRequest(ContactRequest {
            username: owner_name,
        });
        self.send_to_user_everywhere(contact_id, &request, now, fx);
    }

    pub(super) fn publish_key(
        &mut self,
        conn: ConnId,
        user_id: i64,
        body: PublishKey,
        now: i64,
        fx: &mut Effects,
    ) {
        let key = &body.public_key;
        if key.len() > PUBLIC_KEY_BYTES_MAX || key.is_empty() || !is_storable_text(key) {
            let detail = format!("public_key must be 1 to {PUBLIC_KEY_BYTES_MAX} bytes, no NUL");
            fx.error(
                conn,
                ErrorType::BadRequest,
                &detail,
                ClientTag::PublishKey,
                now,
            );
            return;
        }
        fx.storage.push(Command::SetKey {
            to: fx.requester(conn),
            user_id,
            username: self.username_of(conn).to_owned(),
            public_key: body.public_key,
        });
    }

    pub(super) fn get_key(&mut self, conn: ConnId, body: UserRef, now: i64, fx: &mut Effects) {
        let Some(&user_id) = self.users.get(&body.username) else {
            fx.error(
                conn,
                ErrorType::UnknownUser,
                "no such user",
                ClientTag::GetKey,
                now,
            );
            return;
        };
        fx.storage.push(Command::GetKey {
            to: fx.requester(conn),
            user_id,
            username: body.username,
        });
    }

    /// AddContact committed: the caller gets the Directory; the added user a
    /// ContactRequest, or — when the add made the pair mutual and both are
    /// online — each gets a Presence for the other (protocol 1.1).
    pub(super) fn contact_added(
        &mut self,
        conn: ConnId,
        contacts: Vec<ContactRow>,
        outcome: ContactAdded,
        now: i64,
        fx: &mut Effects,
    ) {
        let contact_name = contacts
            .iter()
            .find(|row| row.user_id == outcome.contact_id)
            .map(|row| row.username.clone());
        self.send_directory(conn, contacts, now, fx);
        if !outcome.added {
            return;
        }
        if !outcome.mutual {
            self.notify_contact_request(outcome.contact_id, outcome.owner_name, now, fx);
            return;
        }
        let (Some(owner_id), Some(contact_name)) = (self.logged_in_user(conn), contact_name) else {
            return;
        };
        let contact_id = outcome.contact_id;
        if self.online_anywhere(contact_id) {
            self.send_presence(owner_id, contact_name, now, fx);
            self.send_presence(contact_id, outcome.owner_name, now, fx);
        } else {
            // Cluster mode: the contact may have logged in elsewhere a
            // moment ago, its Presence not here yet; where it is logged in,
            // both are told (see `became_mutual_here`).
            let event = BusEvent::BecameMutual {
                owner_id,
                owner_name: outcome.owner_name,
                contact_id,
                contact_name,
            };
            self.publish(event, fx);
        }
    }

    /// Tells every connection of `user_id` that `username` is online.
    pub(super) fn send_presence(
        &mut self,
        user_id: i64,
        username: String,
        now: i64,
        fx: &mut Effects,
    ) {
        let presence = ServerMessage::Presence(Presence {
            username,
            online: true,
        });
        self.send_to_user_everywhere(user_id, &presence, now, fx);
    }

    pub(super) fn send_key(
        &mut self,
        conn: ConnId,
        username: String,
        public_key: Option<String>,
        now: i64,
        fx: &mut Effects,
    ) {
        let key = Key {
            username,
            public_key,
        };
        fx.send(conn, &ServerMessage::Key(key), now);
    }
}
