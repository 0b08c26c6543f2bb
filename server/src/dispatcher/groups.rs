//! Groups: CreateGroup (12), AddGroupMembers (13), LeaveGroup (14),
//! GetGroups (15), group messages (11 with `group_id`) and their History.
//!
//! The dispatcher keeps every group's members in memory (loaded at start,
//! updated from storage replies after each commit), so a group message is
//! routed — and membership checked — without touching the disk. Writes go
//! to storage; the GroupInfo frames go out once storage has committed them.
//!
//! The three writes (create, add members, leave) share one token bucket per
//! connection ([`crate::rate_limit::GROUP_OPERATIONS_PER_CONNECTION`]): each
//! costs a commit and a GroupInfo to every online member, so past the bucket
//! they are answered `rate_limited` before anything else is checked.

use protocol::client::{AddGroupMembers, CreateGroup, LeaveGroup, SendMessage};
use protocol::server::{GroupInfo, Groups};
use protocol::validate::is_storable_text;
use protocol::ClientTag;
use protocol::{ErrorType, ServerMessage};

use super::delivery::Route;
use super::{Dispatcher, Effects};
use crate::bus::BusEvent;
use crate::completion::ConnId;
use crate::storage::{Command, GroupRow, NewMessage};

/// Longest group name, in characters.
const GROUP_NAME_CHARS_MAX: usize = 64;

/// What a group request was refused for.
type Refusal = (ErrorType, String);

impl Dispatcher {
    pub(super) fn create_group(
        &mut self,
        conn: ConnId,
        creator_id: i64,
        body: CreateGroup,
        now: i64,
        fx: &mut Effects,
    ) {
        if !self.allow_group_operation(conn, ClientTag::CreateGroup, now, fx) {
            return;
        }
        let name_chars = body.name.chars().count();
        if name_chars == 0 || name_chars > GROUP_NAME_CHARS_MAX || !is_storable_text(&body.name) {
            let detail = format!("a group name is 1 to {GROUP_NAME_CHARS_MAX} characters, no NUL");
            fx.error(
                conn,
                ErrorType::BadRequest,
                &detail,
                ClientTag::CreateGroup,
                now,
            );
            return;
        }
        let mut member_ids = vec![creator_id];
        let checked = self
            .resolve_members(&body.members, &mut member_ids)
            .and_then(|()| self.check_group_size(member_ids.len()));
        if let Err((kind, detail)) = checked {
            return fx.error(conn, kind, &detail, ClientTag::CreateGroup, now);
        }
        fx.storage.push(Command::CreateGroup {
            to: fx.requester(conn),
            name: body.name,
            member_ids,
            now,
        });
    }

    pub(super) fn add_group_members(
        &mut self,
        conn: ConnId,
        user_id: i64,
        body: AddGroupMembers,
        now: i64,
        fx: &mut Effects,
    ) {
        if !self.allow_group_operation(conn, ClientTag::AddGroupMembers, now, fx) {
            return;
        }
        if let Err((kind, detail)) = self.check_member(body.group_id, user_id) {
            return fx.error(conn, kind, &detail, ClientTag::AddGroupMembers, now);
        }
        let mut member_ids = Vec::new();
        let checked = self
            .resolve_members(&body.members, &mut member_ids)
            .and_then(|()| {
                let current = self
                    .groups
                    .get(&body.group_id)
                    .map_or(0, |g| g.members.len());
                let joining = member_ids
                    .iter()
                    .filter(|id| !self.is_member(body.group_id, **id))
                    .count();
                self.check_group_size(current + joining)
            });
        if let Err((kind, detail)) = checked {
            return fx.error(conn, kind, &detail, ClientTag::AddGroupMembers, now);
        }
        fx.storage.push(Command::AddGroupMembers {
            to: fx.requester(conn),
            group_id: body.group_id,
            member_ids,
            now,
        });
    }

    /// A group of `members` is within `--max-group-size`.
    fn check_group_size(&self, members: usize) -> Result<(), Refusal> {
        let max = self.limits.max_group_size;
        if members > max {
            return Err((
                ErrorType::BadRequest,
                format!("a group has at most {max} members"),
            ));
        }
        Ok(())
    }

    pub(super) fn leave_group(
        &mut self,
        conn: ConnId,
        user_id: i64,
        body: LeaveGroup,
        now: i64,
        fx: &mut Effects,
    ) {
        if !self.allow_group_operation(conn, ClientTag::LeaveGroup, now, fx) {
            return;
        }
        if let Err((kind, detail)) = self.check_member(body.group_id, user_id) {
            return fx.error(conn, kind, &detail, ClientTag::LeaveGroup, now);
        }
        fx.storage.push(Command::LeaveGroup {
            to: fx.requester(conn),
            user_id,
            group_id: body.group_id,
        });
    }

    /// The members of `group_id` (none for an unknown group).
    pub(super) fn group_member_ids(&self, group_id: i64) -> Vec<i64> {
        self.groups
            .get(&group_id)
            .map(|group| group.members.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }

    pub(super) fn get_groups(&mut self, conn: ConnId, user_id: i64, now: i64, fx: &mut Effects) {
        let groups = ServerMessage::Groups(Groups {
            data: self.groups_of(user_id),
        });
        fx.send(conn, &groups, now);
    }

    /// Delivers a group message (already checked: the sender is a member)
    /// to every member's connections except the sending one; stores it once.
    pub(super) fn send_group_message(
        &mut self,
        conn: ConnId,
        sender_id: i64,
        group_id: i64,
        body: SendMessage,
        now: i64,
        fx: &mut Effects,
    ) {
        let ticket = self.take_ticket();
        let source = self.username_of(conn).to_owned();
        log::debug!(
            "message (ticket {ticket}): {source} -> group {group_id} ({} bytes)",
            body.content.len()
        );
        let charge = (conn, body.content.len());
        self.await_commit(ticket, source, Route::Group(group_id), charge);
        fx.storage.push(Command::StoreMessage {
            to: fx.requester(conn),
            ticket,
            client_message_id: body.message_id,
            message: NewMessage {
                message_id: 0,
                sender_id,
                receiver_id: None,
                group_id: Some(group_id),
                content: body.content,
                is_encrypted: body.is_encrypted,
                time: now,
                // Group delivery is tracked per member (storage's cursors).
                delivered: true,
            },
        });
        self.counters.messages += 1;
    }

    /// A group was created or grew (committed here): tell the other
    /// servers, then as [`Dispatcher::group_changed_here`].
    pub(super) fn group_changed(&mut self, group: GroupRow, now: i64, fx: &mut Effects) {
        let event = BusEvent::GroupChanged {
            group: group.clone(),
        };
        self.publish(event, fx);
        self.group_changed_here(group, now, fx);
    }

    /// A group was created or grew (here or on another server): remember it
    /// and tell every member's connections here.
    pub(super) fn group_changed_here(&mut self, group: GroupRow, now: i64, fx: &mut Effects) {
        let info = ServerMessage::GroupInfo(group_info(&group));
        let members: Vec<i64> = group.members.iter().map(|(id, _)| *id).collect();
        self.groups.insert(group.group_id, group);
        for member in members {
            self.send_to_user(member, &info, now, fx);
        }
    }

    /// A member left: the leaver's connection gets its remaining groups,
    /// the remaining members the updated group.
    pub(super) fn group_left(
        &mut self,
        conn: ConnId,
        user_id: i64,
        group_id: i64,
        remaining: Option<GroupRow>,
        now: i64,
        fx: &mut Effects,
    ) {
        let event = BusEvent::GroupLeft {
            group_id,
            remaining: remaining.clone(),
        };
        self.publish(event, fx);
        self.group_left_here(group_id, remaining, now, fx);
        if self.clients.contains_key(&conn) {
            let groups = ServerMessage::Groups(Groups {
                data: self.groups_of(user_id),
            });
            fx.send(conn, &groups, now);
        }
    }

    /// A member left (here or on another server): remember the group as it
    /// is now (or forget it) and tell the remaining members' connections
    /// here.
    pub(super) fn group_left_here(
        &mut self,
        group_id: i64,
        remaining: Option<GroupRow>,
        now: i64,
        fx: &mut Effects,
    ) {
        match remaining {
            Some(group) => {
                let info = ServerMessage::GroupInfo(group_info(&group));
                let members: Vec<i64> = group.members.iter().map(|(id, _)| *id).collect();
                self.groups.insert(group_id, group);
                for member in members {
                    self.send_to_user(member, &info, now, fx);
                }
            }
            None => {
                self.groups.remove(&group_id);
            }
        }
    }

    /// Takes a token from the connection's group-operation bucket, or
    /// answers `rate_limited` (to the request tagged `tag`) and says no.
    fn allow_group_operation(
        &mut self,
        conn: ConnId,
        tag: ClientTag,
        now: i64,
        fx: &mut Effects,
    ) -> bool {
        let clock = self.clock;
        let allowed = match self.clients.get_mut(&conn).and_then(|c| c.buckets.as_mut()) {
            Some(buckets) => buckets.group_operations.try_take(clock),
            None => true,
        };
        if !allowed {
            let detail = "too many group changes; slow down";
            fx.error(conn, ErrorType::RateLimited, detail, tag, now);
        }
        allowed
    }

    /// Checks that the group exists and `user_id` is in it.
    pub(super) fn check_member(&self, group_id: i64, user_id: i64) -> Result<(), Refusal> {
        if !self.groups.contains_key(&group_id) {
            return Err((
                ErrorType::UnknownGroup,
                format!("there is no group {group_id}"),
            ));
        }
        if !self.is_member(group_id, user_id) {
            let detail = format!("you are not a member of group {group_id}");
            return Err((ErrorType::Forbidden, detail));
        }
        Ok(())
    }

    pub(super) fn is_member(&self, group_id: i64, user_id: i64) -> bool {
        self.groups
            .get(&group_id)
            .is_some_and(|group| group.members.iter().any(|(id, _)| *id == user_id))
    }

    /// Adds the ids of `names` to `ids` (skipping duplicates), or names the
    /// first unknown user.
    fn resolve_members(&self, names: &[String], ids: &mut Vec<i64>) -> Result<(), Refusal> {
        for name in names {
            let Some(&id) = self.users.get(name) else {
                return Err((ErrorType::UnknownUser, format!("no such user: {name}")));
            };
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(())
    }

    /// The groups `user_id` is in, by id.
    fn groups_of(&self, user_id: i64) -> Vec<GroupInfo> {
        let mut groups: Vec<GroupInfo> = self
            .groups
            .values()
            .filter(|group| group.members.iter().any(|(id, _)| *id == user_id))
            .map(group_info)
            .collect();
        groups.sort_by_key(|group| group.group_id);
        groups
    }
}

/// The protocol's view of a group.
fn group_info(group: &GroupRow) -> GroupInfo {
    GroupInfo {
        group_id: group.group_id,
        name: group.name.clone(),
        members: group.members.iter().map(|(_, name)| name.clone()).collect(),
    }
}
