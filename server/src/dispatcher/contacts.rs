//! AddContact (6), RemoveContact (7), the Directory (4 → 26), ContactRequest
//! (31), PublishKey (9) and GetKey (10).
//!
//! Privacy rule: `online` and `last_activity` of a contact are shown only when
//! the contact is mutual — a user who has not added you back learns nothing
//! about when you are around.

use protocol::client::{PublishKey, UserRef};
use protocol::server::{ContactRequest, Directory, DirectoryEntry, Key};
use protocol::validate::PUBLIC_KEY_BYTES_MAX;
use protocol::{ErrorType, ServerMessage};

use super::{Dispatcher, Effects};
use crate::completion::ConnId;
use crate::storage::{Command, ContactRow};

const TAG_ADD_CONTACT: i64 = 6;
const TAG_REMOVE_CONTACT: i64 = 7;
const TAG_PUBLISH_KEY: i64 = 9;
const TAG_GET_KEY: i64 = 10;

impl Dispatcher {
    pub(super) fn add_contact(
        &mut self,
        conn: ConnId,
        owner_id: i64,
        body: UserRef,
        now: i64,
        fx: &mut Effects,
    ) {
        let Some(&contact_id) = self.users.get(&body.username) else {
            fx.error(
                conn,
                ErrorType::UnknownUser,
                "no such user",
                TAG_ADD_CONTACT,
                now,
            );
            return;
        };
        if contact_id == owner_id {
            let detail = "you cannot add yourself as a contact";
            fx.error(conn, ErrorType::BadRequest, detail, TAG_ADD_CONTACT, now);
            return;
        }
        fx.storage.push(Command::AddContact {
            to: fx.requester(conn),
            owner_id,
            owner_name: self.username_of(conn).to_owned(),
            contact_id,
            now,
        });
    }

    pub(super) fn remove_contact(
        &mut self,
        conn: ConnId,
        owner_id: i64,
        body: UserRef,
        now: i64,
        fx: &mut Effects,
    ) {
        let Some(&contact_id) = self.users.get(&body.username) else {
            fx.error(
                conn,
                ErrorType::UnknownUser,
                "no such user",
                TAG_REMOVE_CONTACT,
                now,
            );
            return;
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
                online: row.mutual && self.has_logged_in_connection(row.user_id),
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
        self.send_to_user(contact_id, &request, now, fx);
    }

    pub(super) fn publish_key(
        &mut self,
        conn: ConnId,
        user_id: i64,
        body: PublishKey,
        now: i64,
        fx: &mut Effects,
    ) {
        if body.public_key.len() > PUBLIC_KEY_BYTES_MAX || body.public_key.is_empty() {
            let detail = "public_key must be 1 to 4096 bytes";
            fx.error(conn, ErrorType::BadRequest, detail, TAG_PUBLISH_KEY, now);
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
                TAG_GET_KEY,
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
