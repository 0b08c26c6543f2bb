//! Server messages as the lines a person reads.
//!
//! Pure functions from protocol types to `String`s: no I/O, no clock reads
//! (times go through a [`Stamper`]), so every wording is unit-tested. Errors are
//! worded from what the user asked ([`Asked`]) and the protocol's
//! `error_type`; raw JSON never reaches the screen in human mode.

use protocol::server::{
    ContactRequest, Delivered, Directory, DirectoryEntry, Error, History, LoginError, Presence,
    RegisterError,
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
    /// `/msg`.
    Message {
        /// The recipient.
        to: String,
        /// The text sent, shown again once the server acknowledges it.
        text: String,
    },
    /// `/history`.
    History {
        /// The other side of the conversation.
        with: String,
    },
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
            Asked::Logout | Asked::Friends => None,
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

fn content_of(message: &Delivered) -> String {
    if message.is_encrypted {
        "[encrypted message]".into()
    } else {
        printable(&message.content)
    }
}

/// A live (or caught-up) message as seen by `me`:
/// `[14:03:07] bob: hello`, or `[14:03:09] alice → bob: hi` for one `me` sent.
pub fn message_line(message: &Delivered, me: Option<&str>, stamper: &Stamper) -> String {
    let stamp = stamper.stamp(message.time);
    let content = content_of(message);
    let from = printable(&message.source_id);
    let mine = me == Some(message.source_id.as_str());
    match (&message.dest_id, message.group_id) {
        (_, Some(group)) if mine => format!("[{stamp}] {from} → group {group}: {content}"),
        (_, Some(group)) => format!("[{stamp}] {from} in group {group}: {content}"),
        (Some(dest), None) if mine => {
            format!("[{stamp}] {from} → {}: {content}", printable(dest))
        }
        _ => format!("[{stamp}] {from}: {content}"),
    }
}

/// One line of a conversation's history: `[14:03:07] bob: hello`.
pub fn conversation_line(message: &Delivered, stamper: &Stamper) -> String {
    format!(
        "[{}] {}: {}",
        stamper.stamp(message.time),
        printable(&message.source_id),
        content_of(message)
    )
}

/// A History page, oldest first, with a note when older messages exist.
pub fn history_lines(history: &History, stamper: &Stamper) -> Vec<String> {
    let with = printable(&history.chat_id);
    if history.data.is_empty() {
        return vec![format!("no messages with {with} yet")];
    }
    let mut lines: Vec<String> = history
        .data
        .iter()
        .map(|message| conversation_line(message, stamper))
        .collect();
    if history.has_more {
        lines.push(format!(
            "(older messages with {with} exist; /history {with} 200 shows more)"
        ));
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
    let reason = match error.error_type {
        ErrorType::BadRequest if detail.is_empty() => "the server rejected the request".into(),
        ErrorType::BadRequest => format!("the server rejected the request ({detail})"),
        ErrorType::UnknownTag => "the server does not support this request".into(),
        ErrorType::NotLoggedIn => "you are not logged in (/login USER first)".into(),
        ErrorType::Forbidden if detail.is_empty() => "not allowed".into(),
        ErrorType::Forbidden => format!("not allowed ({detail})"),
        ErrorType::UnknownUser => match asked.and_then(Asked::named_user) {
            Some(name) => format!("there is no user named '{name}'"),
            None => "no such user".into(),
        },
        ErrorType::UnknownGroup => "no such group".into(),
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
            message_line(&incoming, Some("alice"), &stamper()),
            "[13:43:07] bob: hello"
        );
        let own = delivered("alice", "bob", "hi");
        assert_eq!(
            message_line(&own, Some("alice"), &stamper()),
            "[13:43:07] alice → bob: hi"
        );
        let mut group = delivered("bob", "", "standup");
        group.dest_id = None;
        group.group_id = Some(3);
        assert_eq!(
            message_line(&group, Some("alice"), &stamper()),
            "[13:43:07] bob in group 3: standup"
        );
    }

    #[test]
    fn content_cannot_break_the_line_or_drive_the_terminal() {
        let sneaky = delivered("bob", "alice", "two\nlines\x1b[2J");
        let line = message_line(&sneaky, Some("alice"), &stamper());
        assert_eq!(line, "[13:43:07] bob: two\\nlines\\u{1b}[2J");
        let mut secret = delivered("bob", "alice", "b64==");
        secret.is_encrypted = true;
        assert!(message_line(&secret, None, &stamper()).ends_with("bob: [encrypted message]"));
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
            history_lines(&page, &stamper()),
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
            history_lines(&empty, &stamper()),
            vec!["no messages with bob yet"]
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
