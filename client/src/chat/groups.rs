//! The group directory: the groups the user is in (for their `#names`),
//! fetched after every login and kept up to date by GroupInfo/Groups, and
//! the messages held while that list is on its way, so they show with their
//! group's name, in order.

use std::collections::BTreeMap;
use std::time::Instant;

use protocol::client::SendMessage;
use protocol::server::{Delivered, Error as ServerError, GroupInfo, Groups};
use protocol::{ClientMessage, ErrorType};

use crate::chat::app::*;
use crate::chat::render::{self, Asked};
use crate::chat::requests::Purpose;

/// The groups the logged-in user is in, as last heard.
#[derive(Default)]
pub(super) struct GroupDirectory {
    /// By id.
    pub(super) by_id: BTreeMap<i64, GroupInfo>,
    /// True once a full list of groups arrived for the logged-in user.
    pub(super) loaded: bool,
    /// The client's own GetGroups after a login, while it is awaited.
    pub(super) fetch: Option<GroupsFetch>,
}

/// The client's own GetGroups after a login, awaiting its answer.
pub(super) struct GroupsFetch {
    /// Give up waiting (and show what is held) at this time.
    pub(super) deadline: Instant,
    /// Messages that arrived meanwhile, in order, to be shown once the group
    /// names are known.
    pub(super) held: Vec<Delivered>,
}

impl App {
    pub(super) fn group_message(&mut self, group_id: i64, text: String) {
        self.client_message_count += 1;
        let message_id = format!("chat-{}-{}", std::process::id(), self.client_message_count);
        self.submit(
            Asked::GroupMessage {
                group_id,
                label: self.group_label(group_id),
                text: text.clone(),
            },
            ClientMessage::Message(SendMessage {
                dest_id: None,
                group_id: Some(group_id),
                content: text,
                message_id: Some(message_id),
                source_id: None,
                is_encrypted: false,
            }),
        );
    }

    pub(super) fn group_name(&self, group_id: i64) -> Option<&str> {
        self.groups
            .by_id
            .get(&group_id)
            .map(|group| group.name.as_str())
    }

    /// `#team`, or `#5` while the name is unknown.
    pub(super) fn group_label(&self, group_id: i64) -> String {
        render::group_label(group_id, self.group_name(group_id))
    }

    /// A GroupInfo answering `/group create` or `/group add`.
    pub(super) fn on_group_answer(&mut self, asked: Asked, group: GroupInfo) {
        self.remember_group(&group);
        match asked {
            Asked::CreateGroup { .. } => self.out.result(&render::group_created_line(&group)),
            Asked::AddGroupMembers { members, .. } => {
                self.out.result(&render::group_added_line(&members, &group))
            }
            _ => {}
        }
    }

    /// A Groups list answering `/groups` or `/group leave`.
    pub(super) fn on_groups_answer(&mut self, asked: Asked, groups: &Groups) {
        let previous = self.replace_groups(groups);
        match asked {
            Asked::Groups => {
                for line in render::groups_lines(groups) {
                    self.out.result(&line);
                }
            }
            Asked::LeaveGroup { group_id, .. } => {
                let name = previous
                    .iter()
                    .find(|group| group.group_id == group_id)
                    .map(|group| group.name.as_str());
                self.out.result(&render::group_left_line(group_id, name));
            }
            _ => {}
        }
    }

    /// Takes in one group's news; returns what was known of it before.
    pub(super) fn remember_group(&mut self, group: &GroupInfo) -> Option<GroupInfo> {
        let previous = self.groups.by_id.insert(group.group_id, group.clone());
        self.groups_changed();
        previous
    }

    /// Tells the line editor's completion the groups' ids and members.
    fn groups_changed(&self) {
        let groups = &self.groups.by_id;
        self.learn(|vocabulary| {
            vocabulary.set_group_ids(groups.keys().copied());
            let members = groups.values().flat_map(|group| &group.members);
            vocabulary.learn_names(members.map(String::as_str));
        });
    }

    /// Takes `groups` as the full list of the user's groups; returns the
    /// previous one.
    pub(super) fn replace_groups(&mut self, groups: &Groups) -> Vec<GroupInfo> {
        self.groups.loaded = true;
        let previous = std::mem::take(&mut self.groups.by_id)
            .into_values()
            .collect();
        self.groups.by_id = groups
            .data
            .iter()
            .map(|group| (group.group_id, group.clone()))
            .collect();
        self.groups_changed();
        previous
    }

    /// The answer to the client's own GetGroups after a login (late or not).
    pub(super) fn on_groups_fetched(&mut self, groups: &Groups) {
        let was_loaded = self.groups.loaded;
        let previous = self.replace_groups(groups);
        if was_loaded {
            // After a reconnect: say what changed while away.
            for line in render::groups_changed_events(&previous, groups) {
                self.out.event(&line);
            }
        }
        self.end_groups_fetch();
    }

    pub(super) fn on_groups_fetch_failed(&mut self, error: &ServerError) {
        // A server without groups says unknown_tag: nothing to report.
        if error.error_type != ErrorType::UnknownTag {
            let text = render::error_failure(None, error);
            self.out
                .notice(&format!("* could not fetch your groups: {text}"));
        }
        self.end_groups_fetch();
    }

    /// Fetches the user's groups (for their names) right after a login.
    /// Not with `--json`, whose stdout holds only the frames of what was
    /// asked and what was pushed; group messages then show as `#<id>` on
    /// stderr until a GroupInfo or `/groups` names the group.
    pub(super) fn start_groups_fetch(&mut self) {
        if self.options.json {
            return;
        }
        self.groups.fetch = Some(GroupsFetch {
            deadline: Instant::now() + ANSWER_TIMEOUT,
            held: Vec::new(),
        });
        self.send_request(Purpose::GroupsFetch, &ClientMessage::GetGroups);
    }

    /// Stops waiting for the group list and shows what was held.
    pub(super) fn end_groups_fetch(&mut self) {
        if let Some(fetch) = self.groups.fetch.take() {
            self.show_held(fetch.held);
        }
    }

    pub(super) fn expire_groups_fetch(&mut self) {
        if self
            .groups
            .fetch
            .as_ref()
            .is_some_and(|fetch| Instant::now() >= fetch.deadline)
        {
            self.out
                .notice("* the server did not list your groups; groups show as #<id>");
            self.end_groups_fetch();
        }
    }

    pub(super) fn show_held(&mut self, held: Vec<Delivered>) {
        for delivered in held {
            self.show_delivered(delivered);
        }
    }

    pub(super) fn forget_groups(&mut self) {
        self.groups.by_id.clear();
        self.groups.loaded = false;
        self.groups_changed();
    }
}
