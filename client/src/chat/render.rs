//! Server messages as the lines a person reads.
//!
//! Pure functions from protocol types to `String`s: no I/O, no clock reads
//! (times go through a [`Stamper`]), so every wording is unit-tested. Errors are
//! worded from what the user asked ([`Asked`]) and the protocol's
//! `error_type`; raw JSON never reaches the screen in human mode.

use protocol::server::{
    ContactRequest, Delivered, Directory, DirectoryEntry, Error, History, LoginError, Presence,
    RegisterError, Sessions,
};
use protocol::ErrorType;

use crate::chat::clock::Stamper;

mod groups;
pub use groups::*;

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
    /// `/devices`.
    Devices,
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
            Asked::Devices => "could not list your devices".into(),
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
            | Asked::Groups
            | Asked::Devices => None,
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

/// `/devices`: one line per session (device), oldest first, this one marked.
pub fn devices_lines(sessions: &Sessions, stamper: &Stamper) -> Vec<String> {
    let online = sessions
        .data
        .iter()
        .filter(|session| session.online)
        .count();
    let count = sessions.data.len();
    let plural = if count == 1 { "" } else { "s" };
    let mut lines = vec![format!(
        "logged in on {count} device{plural} ({online} online now):"
    )];
    lines.extend(sessions.data.iter().enumerate().map(|(index, session)| {
        let name = if session.current {
            "this device".to_string()
        } else {
            format!("device {}", index + 1)
        };
        let from = session.address.as_deref().unwrap_or("an unknown address");
        let state = if session.online {
            "online now".to_string()
        } else {
            format!("last seen {}", stamper.stamp(session.last_used_at))
        };
        let since = stamper.stamp(session.created_at);
        format!("  {name}: logged in {since} from {from}, {state}")
    }));
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
mod tests;
