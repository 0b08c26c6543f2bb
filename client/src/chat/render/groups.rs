//! Group lines: how a group is named (`#team`), what `/groups` and the
//! answers to `/group …` say, and the events when a group changes.

use protocol::server::{GroupInfo, Groups};

use super::printable;

/// How a group is shown: `#team`, or `#5` while its name is unknown.
pub fn group_label(group_id: i64, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("#{}", printable(name)),
        None => format!("#{group_id}"),
    }
}

/// `#team (id 3): alice, bob, carol`.
pub fn group_summary(group: &GroupInfo) -> String {
    let members: Vec<String> = group.members.iter().map(|name| printable(name)).collect();
    format!(
        "{} (id {}): {}",
        group_label(group.group_id, Some(&group.name)),
        group.group_id,
        members.join(", ")
    )
}

/// The answer to `/group create`: `created #team (id 3): alice, bob, carol`.
pub fn group_created_line(group: &GroupInfo) -> String {
    format!("created {}", group_summary(group))
}

/// The answer to `/group add`: `added dave to #team (id 3): alice, bob, dave`.
pub fn group_added_line(added: &[String], group: &GroupInfo) -> String {
    format!("added {} to {}", added.join(", "), group_summary(group))
}

/// The answer to `/group leave`: `left #team (id 3)`.
pub fn group_left_line(group_id: i64, name: Option<&str>) -> String {
    format!("left {} (id {group_id})", group_label(group_id, name))
}

/// A GroupInfo pushed by the server, worded against what was known before:
/// `* you are in #team (id 3): alice, bob, carol` for a group new to this
/// client, `* dave joined #team (id 3): alice, bob, dave` or
/// `* carol left #team (id 3): alice, bob` for a change.
pub fn group_info_event(previous: Option<&GroupInfo>, group: &GroupInfo) -> String {
    let Some(previous) = previous else {
        return format!("* you are in {}", group_summary(group));
    };
    let names = |list: &[&String]| {
        list.iter()
            .map(|name| printable(name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let joined: Vec<&String> = group
        .members
        .iter()
        .filter(|name| !previous.members.contains(name))
        .collect();
    let left: Vec<&String> = previous
        .members
        .iter()
        .filter(|name| !group.members.contains(name))
        .collect();
    let summary = group_summary(group);
    match (joined.is_empty(), left.is_empty()) {
        (false, true) => format!("* {} joined {summary}", names(&joined)),
        (true, false) => format!("* {} left {summary}", names(&left)),
        (false, false) => format!(
            "* {} joined and {} left {summary}",
            names(&joined),
            names(&left)
        ),
        (true, true) => format!("* you are in {summary}"),
    }
}

/// `/groups`: one line per group, with its id and members.
pub fn groups_lines(groups: &Groups) -> Vec<String> {
    if groups.data.is_empty() {
        return vec!["you are in no groups; /group create NAME USER... starts one".into()];
    }
    let count = groups.data.len();
    let plural = if count == 1 { "" } else { "s" };
    let mut lines = vec![format!("you are in {count} group{plural}:")];
    lines.extend(
        groups
            .data
            .iter()
            .map(|group| format!("  {}", group_summary(group))),
    );
    lines
}

/// What changed between the groups known before and a Groups list that
/// arrived unasked (after leaving on another device, or after a reconnect):
/// `* you are no longer in #team (id 3)` and `* you are in #ops (id 4): …`.
pub fn groups_changed_events(previous: &[GroupInfo], now: &Groups) -> Vec<String> {
    let mut lines = Vec::new();
    for old in previous {
        if !now.data.iter().any(|group| group.group_id == old.group_id) {
            lines.push(format!(
                "* you are no longer in {} (id {})",
                group_label(old.group_id, Some(&old.name)),
                old.group_id
            ));
        }
    }
    for group in &now.data {
        let before = previous.iter().find(|old| old.group_id == group.group_id);
        if before != Some(group) {
            lines.push(group_info_event(before, group));
        }
    }
    lines
}
