//! Server messages as the lines a person reads.
//!
//! Pure functions from protocol types to `String`s: no I/O, no clock reads
//! (times go through a [`Stamper`]), so every wording is unit-tested. Errors are
//! worded from what the user asked ([`Asked`]) and the protocol's
//! `error_type`; raw JSON never reaches the screen in human mode.

use protocol::server::{
    ContactRequest, Delivered, Directory, DirectoryEntry, Error, GroupInfo, Groups, History,
    LoginError, Presence, RegisterError,
};
use protocol::ErrorType;

use crate::chat::clock::Stamper;

/// What the user asked the server for, kept with the request so its answer (or
/// failure) can be worded in the user's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    /// `/register`.
    Register {
        /// The requested name.
        username: String,
    },
    /// `/login`, or the client resuming a saved session by itself.
    Login {
        /// Who.
        username: String,
        /// True when logging in with a saved `session_id`.
        resume: bool,
    },
    /// `/logout`.
    Logout,
    /// `/msg` (while its recipient's key is looked up, then while sent).
    Message {
        /// The recipient.
        to: String,
        /// The text sent, shown again once the server acknowledges it.
        text: String,
        /// Sent end-to-end encrypted (or, while looking up the key, meant
        /// to be).
        encrypted: bool,
    },
    /// `/history USER`.
    History {
        /// The other side of the conversation.
        with: String,
    },
    /// `/history #ID`.
    GroupHistory {
        /// The group.
        group_id: i64,
        /// How the group is shown (`#team`, or `#5` if its name is unknown).
        label: String,
    },
    /// `/gmsg`.
    GroupMessage {
        /// The group.
        group_id: i64,
        /// How the group is shown.
        label: String,
        /// The text sent, shown again once the server acknowledges it.
        text: String,
    },
    /// `/group create`.
    CreateGroup {
        /// The requested name.
        name: String,
        /// The users asked to join besides the creator.
        members: Vec<String>,
    },
    /// `/group add`.
    AddGroupMembers {
        /// The group.
        group_id: i64,
        /// How the group is shown.
        label: String,
        /// Who was asked to be added.
        members: Vec<String>,
    },
    /// `/group leave`.
    LeaveGroup {
        /// The group.
        group_id: i64,
        /// How the group is shown.
        label: String,
    },
    /// `/groups`.
    Groups,
    /// `/friends`.
    Friends,
    /// `/add`.
    Add {
        /// Who.
        username: String,
    },
    /// `/remove`.
    Remove {
        /// Who.
        username: String,
    },
}

impl Asked {
    /// The start of a failure line: "login failed", "message to bob not sent".
    pub fn failure_prefix(&self) -> String {
        match self {
            Asked::Register { .. } => "register failed".into(),
            Asked::Login { resume: false, .. } => "login failed".into(),
            Asked::Login { resume: true, .. } => "could not resume the saved session".into(),
            Asked::Logout => "logout failed".into(),
            Asked::Message { to, .. } => format!("message to {to} not sent"),
            Asked::History { with } => format!("history with {with} failed"),
            Asked::GroupHistory { label, .. } => format!("history of {label} failed"),
            Asked::GroupMessage { label, .. } => format!("message to {label} not sent"),
            Asked::CreateGroup { name, .. } => {
                format!("could not create group '{}'", printable(name))
            }
            Asked::AddGroupMembers { label, members, .. } => {
                format!("could not add {} to {label}", members.join(", "))
            }
            Asked::LeaveGroup { label, .. } => format!("could not leave {label}"),
            Asked::Groups => "could not list groups".into(),
            Asked::Friends => "could not list friends".into(),
            Asked::Add { username } => format!("could not add {username}"),
            Asked::Remove { username } => format!("could not remove {username}"),
        }
    }

    /// The user this request names, for "there is no user named …".
    fn named_user(&self) -> Option<&str> {
        match self {
            Asked::Register { username }
            | Asked::Login { username, .. }
            | Asked::Add { username }
            | Asked::Remove { username } => Some(username),
            Asked::Message { to, .. } => Some(to),
            Asked::History { with } => Some(with),
            Asked::CreateGroup { members, .. } | Asked::AddGroupMembers { members, .. } => {
                match members.as_slice() {
                    [only] => Some(only),
                    _ => None,
                }
            }
            Asked::Logout
            | Asked::Friends
            | Asked::GroupHistory { .. }
            | Asked::GroupMessage { .. }
            | Asked::LeaveGroup { .. }
            | Asked::Groups => None,
        }
    }

    /// Which of the several users this request names occurs as a word in
    /// the server's `detail` (`no such user: zed`).
    fn user_named_in(&self, detail: &str) -> Option<&str> {
        let (Asked::CreateGroup { members, .. } | Asked::AddGroupMembers { members, .. }) = self
        else {
            return None;
        };
        let mut words = detail.split(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)));
        let found = words.find(|word| members.iter().any(|member| member == word))?;
        members
            .iter()
            .find(|member| *member == found)
            .map(String::as_str)
    }

    /// The group this request is about, for "you are not a member of group 5".
    fn named_group(&self) -> Option<i64> {
        match self {
            Asked::GroupHistory { group_id, .. }
            | Asked::GroupMessage { group_id, .. }
            | Asked::AddGroupMembers { group_id, .. }
            | Asked::LeaveGroup { group_id, .. } => Some(*group_id),
            _ => None,
        }
    }
}

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

/// Text from the network made safe for one terminal line: control characters
/// (newlines, escape sequences) are shown escaped instead of acted upon.
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// What a message's content turned out to be once the client tried to
/// decrypt it (the app decides; rendering stays pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Shown as sent: plain text (an encrypted message left unopened is
    /// shown as undecryptable, never as its ciphertext).
    AsSent,
    /// Decrypted end to end: this text, marked `[e2e]`.
    Decrypted(String),
    /// Encrypted, but it could not be decrypted (tampered, or sealed under
    /// a key this client does not have).
    Undecryptable,
}

/// Shown instead of a message that could not be decrypted.
pub const UNDECRYPTABLE: &str = "[encrypted message could not be decrypted]";
/// Marks a message that was end-to-end encrypted, before its sender. It
/// comes before the sender's name, so no message text can fake it.
pub const E2E_MARKER: &str = "[e2e] ";

/// The marker and the text of a message.
fn content_of(message: &Delivered, opened: &Opened) -> (&'static str, String) {
    match opened {
        Opened::Decrypted(text) => (E2E_MARKER, printable(text)),
        Opened::AsSent if !message.is_encrypted => ("", printable(&message.content)),
        Opened::AsSent | Opened::Undecryptable => ("", UNDECRYPTABLE.into()),
    }
}

/// A live (or caught-up) message as seen by `me`:
/// `[14:03:07] bob: hello`, or `[14:03:09] alice → bob: hi` for one `me` sent;
/// a group message is `[14:03:07] #team bob: hello` whoever sent it
/// (`group_name` is the group's name if known, else it shows as `#5`).
/// A decrypted message reads `[14:03:07] [e2e] bob: hello`.
pub fn message_line(
    message: &Delivered,
    opened: &Opened,
    me: Option<&str>,
    group_name: Option<&str>,
    stamper: &Stamper,
) -> String {
    let stamp = stamper.stamp(message.time);
    let (marker, content) = content_of(message, opened);
    let from = printable(&message.source_id);
    let mine = me == Some(message.source_id.as_str());
    match (&message.dest_id, message.group_id) {
        (_, Some(group)) => {
            let label = group_label(group, group_name);
            format!("[{stamp}] {marker}{label} {from}: {content}")
        }
        (Some(dest), None) if mine => {
            format!("[{stamp}] {marker}{from} → {}: {content}", printable(dest))
        }
        _ => format!("[{stamp}] {marker}{from}: {content}"),
    }
}

/// One line of a conversation's history: `[14:03:07] bob: hello`
/// (`[14:03:07] [e2e] bob: hello` when it was decrypted).
pub fn conversation_line(message: &Delivered, opened: &Opened, stamper: &Stamper) -> String {
    let (marker, content) = content_of(message, opened);
    format!(
        "[{}] {marker}{}: {content}",
        stamper.stamp(message.time),
        printable(&message.source_id),
    )
}

/// The group id in a `chat_id` of the form `g:<group_id>`.
pub fn group_chat_id(chat_id: &str) -> Option<i64> {
    chat_id.strip_prefix("g:")?.parse().ok()
}

/// A History page, oldest first, with a note when older messages exist.
/// `opened[i]` says how message `i` was decrypted (missing: as sent).
/// For a group (`chat_id` `g:<id>`), `group_name` names it if known.
pub fn history_lines(
    history: &History,
    opened: &[Opened],
    group_name: Option<&str>,
    stamper: &Stamper,
) -> Vec<String> {
    let (with, more) = match group_chat_id(&history.chat_id) {
        Some(group_id) => {
            let label = group_label(group_id, group_name);
            (
                format!("in {label}"),
                format!("(older messages in {label} exist; /history #{group_id} 200 shows more)"),
            )
        }
        None => {
            let with = printable(&history.chat_id);
            (
                format!("with {with}"),
                format!("(older messages with {with} exist; /history {with} 200 shows more)"),
            )
        }
    };
    if history.data.is_empty() {
        return vec![format!("no messages {with} yet")];
    }
    let mut lines: Vec<String> = history
        .data
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let opened = opened.get(index).unwrap_or(&Opened::AsSent);
            conversation_line(message, opened, stamper)
        })
        .collect();
    if history.has_more {
        lines.push(more);
    }
    lines
}

fn directory_entry_line(entry: &DirectoryEntry, stamper: &Stamper) -> String {
    let name = printable(&entry.username);
    let (mark, status) = match (entry.mutual, entry.online, entry.last_activity) {
        (true, true, _) => ('*', "online".to_string()),
        (true, false, Some(when)) => (' ', format!("offline, last seen {}", stamper.stamp(when))),
        (true, false, None) => (' ', "offline".to_string()),
        (false, _, _) => (' ', format!("waiting for {name} to add you")),
    };
    format!("{mark} {name:<16} {status}")
}

/// `/friends`: one line per contact, `*` marking who is online.
pub fn directory_lines(directory: &Directory, stamper: &Stamper) -> Vec<String> {
    if directory.data.is_empty() {
        return vec!["no contacts yet; /add USER to add one".into()];
    }
    let online = directory.data.iter().filter(|entry| entry.online).count();
    let mut lines = vec![format!(
        "contacts ({online} online of {}):",
        directory.data.len()
    )];
    lines.extend(
        directory
            .data
            .iter()
            .map(|entry| directory_entry_line(entry, stamper)),
    );
    lines
}

/// The answer to `/add USER`, from the updated directory.
pub fn added_line(username: &str, directory: &Directory) -> String {
    let entry = directory
        .data
        .iter()
        .find(|entry| entry.username == username);
    match entry {
        Some(entry) if entry.mutual && entry.online => {
            format!("{username} is now a friend (online)")
        }
        Some(entry) if entry.mutual => format!("{username} is now a friend (offline)"),
        _ => format!("added {username}; waiting for {username} to add you"),
    }
}

/// `* bob is online` / `* bob is offline`.
pub fn presence_line(presence: &Presence) -> String {
    let state = if presence.online { "online" } else { "offline" };
    format!("* {} is {state}", printable(&presence.username))
}

/// `* carol added you — /add carol to accept`.
pub fn contact_request_line(request: &ContactRequest) -> String {
    let name = printable(&request.username);
    format!("* {name} added you — /add {name} to accept")
}

/// A FailRegister in plain words.
pub fn register_failure(username: &str, error: RegisterError) -> String {
    let reason = match error {
        RegisterError::UsernameTaken => format!("the username '{username}' is already taken"),
        RegisterError::InvalidUsername => {
            format!("'{username}' is not a valid username (3-32 characters of A-Z a-z 0-9 _ . -)")
        }
        RegisterError::InvalidEmail => "that is not a valid email address".into(),
        RegisterError::WeakSecret => "the password is too short (at least 8 characters)".into(),
        RegisterError::RateLimited => "too many attempts; wait a moment and try again".into(),
    };
    format!("register failed: {reason}")
}

/// A FailLogin in plain words.
pub fn login_failure(resume: bool, error: LoginError) -> String {
    let asked = Asked::Login {
        username: String::new(),
        resume,
    };
    let reason = match error {
        LoginError::InvalidCredentials => "wrong username or password",
        LoginError::InvalidSession => "the session has ended; log in with your password",
        LoginError::AlreadyLoggedIn => "this connection is already logged in (/logout first)",
        LoginError::RateLimited => "too many attempts; wait a moment and try again",
    };
    format!("{}: {reason}", asked.failure_prefix())
}

/// An Error frame in plain words, prefixed by what was asked (when known).
pub fn error_failure(asked: Option<&Asked>, error: &Error) -> String {
    let detail = printable(error.detail.trim());
    let group = asked.and_then(Asked::named_group);
    let reason = match error.error_type {
        ErrorType::BadRequest if detail.is_empty() => "the server rejected the request".into(),
        ErrorType::BadRequest => format!("the server rejected the request ({detail})"),
        ErrorType::UnknownTag => "the server does not support this request".into(),
        ErrorType::NotLoggedIn => "you are not logged in (/login USER first)".into(),
        ErrorType::Forbidden => match group {
            Some(group_id) => format!("you are not a member of group {group_id}"),
            None if detail.is_empty() => "not allowed".into(),
            None => format!("not allowed ({detail})"),
        },
        ErrorType::UnknownUser => match asked.and_then(Asked::named_user) {
            Some(name) => format!("there is no user named '{name}'"),
            None => match asked.and_then(|asked| asked.user_named_in(&error.detail)) {
                // Several users were named: the server's detail says which.
                Some(name) => format!("there is no user named '{name}'"),
                None => "no such user".into(),
            },
        },
        ErrorType::UnknownGroup => match group {
            Some(group_id) => format!("there is no group {group_id}"),
            None => "no such group".into(),
        },
        ErrorType::TooLarge => "the message is too large".into(),
        ErrorType::RateLimited => "too many requests; wait a moment and try again".into(),
        ErrorType::ServerBusy => "the server is busy; try again shortly".into(),
    };
    let prefix = asked.map_or_else(|| "server error".into(), Asked::failure_prefix);
    format!("{prefix}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_709_214_330; // 2024-02-29 13:45:30 UTC

    fn stamper() -> Stamper {
        Stamper::utc_at(NOW)
    }

    fn delivered(from: &str, to: &str, content: &str) -> Delivered {
        Delivered {
            message_id: 7,
            source_id: from.into(),
            dest_id: Some(to.into()),
            group_id: None,
            content: content.into(),
            is_encrypted: false,
            time: NOW - 143,
        }
    }

    #[test]
    fn incoming_and_own_messages() {
        let incoming = delivered("bob", "alice", "hello");
        assert_eq!(
            message_line(&incoming, &Opened::AsSent, Some("alice"), None, &stamper()),
            "[13:43:07] bob: hello"
        );
        let own = delivered("alice", "bob", "hi");
        assert_eq!(
            message_line(&own, &Opened::AsSent, Some("alice"), None, &stamper()),
            "[13:43:07] alice → bob: hi"
        );
        let mut group = delivered("bob", "", "standup");
        group.dest_id = None;
        group.group_id = Some(3);
        assert_eq!(
            message_line(
                &group,
                &Opened::AsSent,
                Some("alice"),
                Some("team"),
                &stamper()
            ),
            "[13:43:07] #team bob: standup"
        );
        assert_eq!(
            message_line(&group, &Opened::AsSent, Some("alice"), None, &stamper()),
            "[13:43:07] #3 bob: standup"
        );
        group.source_id = "alice".into();
        assert_eq!(
            message_line(
                &group,
                &Opened::AsSent,
                Some("alice"),
                Some("team"),
                &stamper()
            ),
            "[13:43:07] #team alice: standup"
        );
        // A name from the network cannot drive the terminal either.
        assert_eq!(
            message_line(&group, &Opened::AsSent, None, Some("a\x1bb"), &stamper()),
            "[13:43:07] #a\\u{1b}b alice: standup"
        );
    }

    #[test]
    fn content_cannot_break_the_line_or_drive_the_terminal() {
        let sneaky = delivered("bob", "alice", "two\nlines\x1b[2J");
        let line = message_line(&sneaky, &Opened::AsSent, Some("alice"), None, &stamper());
        assert_eq!(line, "[13:43:07] bob: two\\nlines\\u{1b}[2J");
        let mut secret = delivered("bob", "alice", "b64==");
        secret.is_encrypted = true;
        assert!(
            message_line(&secret, &Opened::AsSent, None, None, &stamper())
                .ends_with("] bob: [encrypted message could not be decrypted]")
        );
        let opened = Opened::Decrypted("psst\x1b[2J".into());
        assert!(message_line(&secret, &opened, None, None, &stamper())
            .ends_with("] [e2e] bob: psst\\u{1b}[2J"));
    }

    #[test]
    fn history_is_a_conversation_with_notes_for_empty_and_more() {
        let page = History {
            chat_id: "bob".into(),
            data: vec![
                delivered("alice", "bob", "hi"),
                Delivered {
                    time: 1_640_995_200,
                    ..delivered("bob", "alice", "old")
                },
            ],
            has_more: true,
        };
        assert_eq!(
            history_lines(&page, &[], None, &stamper()),
            vec![
                "[13:43:07] alice: hi".to_string(),
                "[2022-01-01 00:00:00] bob: old".to_string(),
                "(older messages with bob exist; /history bob 200 shows more)".to_string(),
            ]
        );
        let empty = History {
            chat_id: "bob".into(),
            data: vec![],
            has_more: false,
        };
        assert_eq!(
            history_lines(&empty, &[], None, &stamper()),
            vec!["no messages with bob yet"]
        );
    }

    #[test]
    fn group_history_is_titled_by_the_group() {
        let mut message = delivered("bob", "", "standup");
        message.dest_id = None;
        message.group_id = Some(5);
        let page = History {
            chat_id: "g:5".into(),
            data: vec![message],
            has_more: true,
        };
        assert_eq!(
            history_lines(&page, &[], Some("team"), &stamper()),
            vec![
                "[13:43:07] bob: standup",
                "(older messages in #team exist; /history #5 200 shows more)",
            ]
        );
        let empty = History {
            chat_id: "g:5".into(),
            data: vec![],
            has_more: false,
        };
        assert_eq!(
            history_lines(&empty, &[], None, &stamper()),
            vec!["no messages in #5 yet"]
        );
        assert_eq!(group_chat_id("g:5"), Some(5));
        assert_eq!(group_chat_id("bob"), None);
    }

    fn team(members: &[&str]) -> GroupInfo {
        GroupInfo {
            group_id: 3,
            name: "team".into(),
            members: members.iter().map(|name| name.to_string()).collect(),
        }
    }

    #[test]
    fn group_answers_and_pushes() {
        let group = team(&["alice", "bob", "carol"]);
        assert_eq!(group_summary(&group), "#team (id 3): alice, bob, carol");
        assert_eq!(
            group_created_line(&group),
            "created #team (id 3): alice, bob, carol"
        );
        assert_eq!(
            group_added_line(&["carol".into()], &group),
            "added carol to #team (id 3): alice, bob, carol"
        );
        assert_eq!(group_left_line(3, Some("team")), "left #team (id 3)");
        assert_eq!(group_left_line(3, None), "left #3 (id 3)");
        assert_eq!(
            group_info_event(None, &group),
            "* you are in #team (id 3): alice, bob, carol"
        );
        let before = team(&["alice", "bob"]);
        assert_eq!(
            group_info_event(Some(&before), &group),
            "* carol joined #team (id 3): alice, bob, carol"
        );
        assert_eq!(
            group_info_event(Some(&group), &before),
            "* carol left #team (id 3): alice, bob"
        );
        assert_eq!(
            group_info_event(Some(&team(&["alice", "dave"])), &before),
            "* bob joined and dave left #team (id 3): alice, bob"
        );
        assert_eq!(
            group_info_event(Some(&group), &group),
            "* you are in #team (id 3): alice, bob, carol"
        );
    }

    #[test]
    fn groups_list_and_unasked_changes() {
        let ops = GroupInfo {
            group_id: 4,
            name: "ops".into(),
            members: vec!["alice".into()],
        };
        let groups = Groups {
            data: vec![team(&["alice", "bob"]), ops.clone()],
        };
        assert_eq!(
            groups_lines(&groups),
            vec![
                "you are in 2 groups:",
                "  #team (id 3): alice, bob",
                "  #ops (id 4): alice",
            ]
        );
        assert_eq!(
            groups_lines(&Groups { data: vec![] }),
            vec!["you are in no groups; /group create NAME USER... starts one"]
        );
        let previous = vec![team(&["alice", "bob"])];
        let now = Groups { data: vec![ops] };
        assert_eq!(
            groups_changed_events(&previous, &now),
            vec![
                "* you are no longer in #team (id 3)",
                "* you are in #ops (id 4): alice",
            ]
        );
        assert!(groups_changed_events(
            &previous,
            &Groups {
                data: previous.clone()
            }
        )
        .is_empty());
    }

    #[test]
    fn group_errors_in_plain_words() {
        let error = |error_type| Error {
            error_type,
            detail: "whatever the server says".into(),
            ref_tag: Some(11),
        };
        let message = Asked::GroupMessage {
            group_id: 5,
            label: "#5".into(),
            text: "hi".into(),
        };
        assert_eq!(
            error_failure(Some(&message), &error(ErrorType::Forbidden)),
            "message to #5 not sent: you are not a member of group 5"
        );
        assert_eq!(
            error_failure(Some(&message), &error(ErrorType::UnknownGroup)),
            "message to #5 not sent: there is no group 5"
        );
        let leave = Asked::LeaveGroup {
            group_id: 5,
            label: "#team".into(),
        };
        assert_eq!(
            error_failure(Some(&leave), &error(ErrorType::Forbidden)),
            "could not leave #team: you are not a member of group 5"
        );
        let history = Asked::GroupHistory {
            group_id: 9,
            label: "#9".into(),
        };
        assert_eq!(
            error_failure(Some(&history), &error(ErrorType::UnknownGroup)),
            "history of #9 failed: there is no group 9"
        );
        let add = Asked::AddGroupMembers {
            group_id: 5,
            label: "#team".into(),
            members: vec!["zed".into()],
        };
        assert_eq!(
            error_failure(Some(&add), &error(ErrorType::UnknownUser)),
            "could not add zed to #team: there is no user named 'zed'"
        );
        let create = Asked::CreateGroup {
            name: "team".into(),
            members: vec!["bob".into(), "zed".into()],
        };
        assert_eq!(
            error_failure(Some(&create), &error(ErrorType::UnknownUser)),
            "could not create group 'team': no such user"
        );
        let named = Error {
            detail: "no such user: zed".into(),
            ..error(ErrorType::UnknownUser)
        };
        assert_eq!(
            error_failure(Some(&create), &named),
            "could not create group 'team': there is no user named 'zed'"
        );
        assert_eq!(
            error_failure(Some(&Asked::Groups), &error(ErrorType::UnknownTag)),
            "could not list groups: the server does not support this request"
        );
    }

    fn entry(name: &str, mutual: bool, online: bool, last: Option<i64>) -> DirectoryEntry {
        DirectoryEntry {
            username: name.into(),
            user_id: 1,
            mutual,
            online,
            last_activity: last,
        }
    }

    #[test]
    fn directory_marks_who_is_online() {
        let directory = Directory {
            data: vec![
                entry("bob", true, true, Some(NOW)),
                entry("carol", true, false, Some(NOW - 60)),
                entry("dave", false, false, None),
            ],
        };
        assert_eq!(
            directory_lines(&directory, &stamper()),
            vec![
                "contacts (1 online of 3):",
                "* bob              online",
                "  carol            offline, last seen 13:44:30",
                "  dave             waiting for dave to add you",
            ]
        );
        assert_eq!(
            directory_lines(&Directory { data: vec![] }, &stamper()),
            vec!["no contacts yet; /add USER to add one"]
        );
        assert_eq!(
            added_line("bob", &directory),
            "bob is now a friend (online)"
        );
        assert_eq!(
            added_line("dave", &directory),
            "added dave; waiting for dave to add you"
        );
    }

    #[test]
    fn pushed_events() {
        let online = Presence {
            username: "bob".into(),
            online: true,
        };
        assert_eq!(presence_line(&online), "* bob is online");
        let offline = Presence {
            online: false,
            ..online
        };
        assert_eq!(presence_line(&offline), "* bob is offline");
        let request = ContactRequest {
            username: "carol".into(),
        };
        assert_eq!(
            contact_request_line(&request),
            "* carol added you — /add carol to accept"
        );
    }

    #[test]
    fn login_and_register_failures_in_plain_words() {
        assert_eq!(
            login_failure(false, LoginError::InvalidCredentials),
            "login failed: wrong username or password"
        );
        assert!(login_failure(true, LoginError::InvalidSession)
            .starts_with("could not resume the saved session: "));
        assert_eq!(
            register_failure("alice", RegisterError::UsernameTaken),
            "register failed: the username 'alice' is already taken"
        );
        for (error, wire) in [
            (RegisterError::InvalidUsername, "invalid_username"),
            (RegisterError::InvalidEmail, "invalid_email"),
            (RegisterError::WeakSecret, "weak_secret"),
            (RegisterError::RateLimited, "rate_limited"),
        ] {
            let text = register_failure("alice", error);
            assert!(text.starts_with("register failed: "), "{text}");
            assert!(!text.contains(wire) && !text.contains('{'), "{text}");
        }
    }

    #[test]
    fn every_error_type_has_plain_words() {
        let all = [
            ErrorType::BadRequest,
            ErrorType::UnknownTag,
            ErrorType::NotLoggedIn,
            ErrorType::Forbidden,
            ErrorType::UnknownUser,
            ErrorType::UnknownGroup,
            ErrorType::TooLarge,
            ErrorType::RateLimited,
            ErrorType::ServerBusy,
        ];
        let asked = Asked::Message {
            to: "zed".into(),
            text: "hi".into(),
            encrypted: false,
        };
        for error_type in all {
            let error = Error {
                error_type,
                detail: String::new(),
                ref_tag: Some(11),
            };
            let text = error_failure(Some(&asked), &error);
            assert!(text.starts_with("message to zed not sent: "), "{text}");
            assert!(!text.contains(error_type.as_str()), "{text}");
        }
        let unknown = Error {
            error_type: ErrorType::UnknownUser,
            detail: "no such user".into(),
            ref_tag: Some(11),
        };
        assert_eq!(
            error_failure(Some(&asked), &unknown),
            "message to zed not sent: there is no user named 'zed'"
        );
        assert_eq!(error_failure(None, &unknown), "server error: no such user");
    }
}
