//! The line client's commands: one typed line in, one [`Command`] out.
//!
//! Pure parsing with no I/O, so every rule is unit-tested here. Whether a
//! missing secret is asked for (terminal) or is an error (script) is decided by
//! the caller, not here: the parser only reports `secret: None`.

use std::fmt;

use protocol::validate::is_valid_username;

/// The largest history page the protocol allows (`limit` 1–200).
pub const HISTORY_LIMIT_MAX: u32 = 200;
/// The longest group name the server accepts, in characters.
pub const GROUP_NAME_MAX_CHARS: usize = 64;

/// The other side of a conversation: a user, or a group by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chat {
    /// A 1:1 conversation with this user.
    User(String),
    /// A group conversation.
    Group(i64),
}

/// What one input line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A blank line or a `#` comment: nothing to do.
    Nothing,
    /// `/register USER EMAIL [SECRET]`.
    Register {
        /// The new account's name.
        username: String,
        /// The account's email address.
        email: String,
        /// The secret, when it followed on the line.
        secret: Option<String>,
    },
    /// `/login USER [SECRET]`.
    Login {
        /// Who to log in as.
        username: String,
        /// The secret, when it followed on the line.
        secret: Option<String>,
    },
    /// `/logout`.
    Logout,
    /// `/msg [--plain] USER TEXT…` or `@USER TEXT…`.
    Message {
        /// The recipient.
        to: String,
        /// The text, exactly as typed after the recipient.
        text: String,
        /// `--plain`: send unencrypted even if the recipient has a key.
        plain: bool,
    },
    /// `/gmsg ID TEXT…`.
    GroupMessage {
        /// The group.
        group_id: i64,
        /// The text, exactly as typed after the group id.
        text: String,
    },
    /// `/history USER [N]` or `/history #ID [N]`.
    History {
        /// The other side of the conversation.
        with: Chat,
        /// How many messages (1–200); the server's default when absent.
        limit: Option<u32>,
    },
    /// `/friends`: the directory with online marks.
    Friends,
    /// `/add USER`.
    Add {
        /// Who to add.
        username: String,
    },
    /// `/remove USER`.
    Remove {
        /// Who to remove.
        username: String,
    },
    /// `/group create NAME USER…`.
    CreateGroup {
        /// The group's display name (one word, 1–64 characters).
        name: String,
        /// Who to add besides the creator.
        members: Vec<String>,
    },
    /// `/group add ID USER…`.
    AddGroupMembers {
        /// The group.
        group_id: i64,
        /// Who to add.
        members: Vec<String>,
    },
    /// `/group leave ID`.
    LeaveGroup {
        /// The group.
        group_id: i64,
    },
    /// `/groups`: the groups you are in.
    Groups,
    /// `/whoami`.
    Whoami,
    /// `/status [USER]`: who you are, and how far your 1:1 messages are
    /// delivered, per recipient (or only to USER).
    Status {
        /// Only this recipient.
        with: Option<String>,
    },
    /// `/help`.
    Help,
    /// `/quit`.
    Quit,
}

impl Command {
    /// True when the command is answered without the server.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Command::Nothing
                | Command::Whoami
                | Command::Status { .. }
                | Command::Help
                | Command::Quit
        )
    }
}

/// Why a line is not a command; its `Display` is the text shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A `/word` that names no command.
    UnknownCommand(String),
    /// Text that is neither a command nor an `@USER` message.
    NotACommand,
    /// Missing or extra arguments; holds the command's usage line.
    Usage(&'static str),
    /// A username that the protocol would reject.
    InvalidUsername(String),
    /// `/history` with a count outside 1–200.
    InvalidLimit(String),
    /// A group id that is not a positive number.
    InvalidGroupId(String),
    /// A group name longer than the server accepts.
    InvalidGroupName(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownCommand(word) => {
                write!(f, "unknown command /{word} (type /help for the list)")
            }
            ParseError::NotACommand => {
                f.write_str("to send a message type /msg USER TEXT or @USER TEXT (/help for more)")
            }
            ParseError::Usage(usage) => write!(f, "usage: {usage}"),
            ParseError::InvalidUsername(name) => write!(
                f,
                "'{name}' is not a valid username (3-32 characters of A-Z a-z 0-9 _ . -)"
            ),
            ParseError::InvalidLimit(text) => write!(
                f,
                "'{text}' is not a message count between 1 and {HISTORY_LIMIT_MAX}"
            ),
            ParseError::InvalidGroupId(text) => write!(
                f,
                "'{text}' is not a group id (a number such as 5 or #5; /groups lists yours)"
            ),
            ParseError::InvalidGroupName(_) => write!(
                f,
                "a group name is one word of at most {GROUP_NAME_MAX_CHARS} characters"
            ),
        }
    }
}

/// The text of `/help`.
pub const HELP: &str = "\
commands:
  /register USER EMAIL    create an account (asks for a password)
  /login USER             log in (asks for a password; a saved session is resumed)
  /logout                 end this session and forget it
  /msg USER TEXT          send TEXT to USER (shortcut: @USER TEXT); encrypted
                          end to end when USER has a key, shown with [e2e]
  /msg --plain USER TEXT  send TEXT to USER unencrypted
  /history USER [N]       the last N messages with USER (default 50, at most 200);
                          yours that reached one of USER's devices end in ✓✓
  /friends                your contacts, with who is online
  /add USER               add USER to your contacts (or accept their request)
  /remove USER            remove USER from your contacts
  /group create NAME USER...  start a group NAME with you and the USERs
  /group add ID USER...   add USERs to group ID (any member may)
  /group leave ID         leave group ID
  /groups                 the groups you are in, with their ids and members
  /gmsg ID TEXT           send TEXT to group ID (shown as #name)
  /history #ID [N]        the last N messages of group ID
  /whoami                 who you are logged in as
  /status [USER]          who you are, and per person (or only USER) how far
                          your messages are delivered (✓✓) and what still waits
  /help                   this list
  /quit                   leave (Ctrl-D works too)
In a script the password may follow on the line: /login USER PASSWORD.
At a terminal: Tab completes commands, names and group ids; Up and Down walk
the history (kept across runs, passwords left out); Ctrl-R searches it.";

const USAGE_REGISTER: &str = "/register USER EMAIL";
const USAGE_LOGIN: &str = "/login USER";
const USAGE_MESSAGE: &str = "/msg [--plain] USER TEXT";
const USAGE_HISTORY: &str = "/history USER [N]  or  /history #ID [N]";
const USAGE_GROUP: &str =
    "/group create NAME USER...  or  /group add ID USER...  or  /group leave ID";
const USAGE_GROUP_CREATE: &str = "/group create NAME USER...";
const USAGE_GROUP_ADD: &str = "/group add ID USER...";
const USAGE_GROUP_LEAVE: &str = "/group leave ID";
const USAGE_GROUP_MESSAGE: &str = "/gmsg ID TEXT";
const USAGE_ADD: &str = "/add USER";
const USAGE_REMOVE: &str = "/remove USER";
const USAGE_STATUS: &str = "/status [USER]";

/// Parses one input line (without its line ending).
pub fn parse_line(line: &str) -> Result<Command, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
        return Ok(Command::Nothing);
    }
    if let Some(rest) = trimmed.strip_prefix('@') {
        let (to, text) = split_word(rest);
        return message(to, text, false);
    }
    let Some(rest) = trimmed.strip_prefix('/') else {
        return Err(ParseError::NotACommand);
    };
    let (word, arguments) = split_word(rest);
    match word.to_ascii_lowercase().as_str() {
        "register" => {
            let (username, rest) = split_word(arguments);
            let (email, secret) = split_word(rest);
            if username.is_empty() || email.is_empty() {
                return Err(ParseError::Usage(USAGE_REGISTER));
            }
            Ok(Command::Register {
                username: username_argument(username)?,
                email: email.to_string(),
                secret: optional_rest(secret),
            })
        }
        "login" => {
            let (username, secret) = split_word(arguments);
            if username.is_empty() {
                return Err(ParseError::Usage(USAGE_LOGIN));
            }
            Ok(Command::Login {
                username: username_argument(username)?,
                secret: optional_rest(secret),
            })
        }
        "msg" | "m" => {
            let (first, rest) = split_word(arguments);
            if first == "--plain" {
                let (to, text) = split_word(rest);
                message(to, text, true)
            } else {
                message(first, rest, false)
            }
        }
        "history" => history(arguments),
        "group" => group(arguments),
        "groups" => no_arguments(arguments, Command::Groups, "/groups"),
        "gmsg" => group_message(arguments),
        "add" => Ok(Command::Add {
            username: single_username(arguments, USAGE_ADD)?,
        }),
        "remove" => Ok(Command::Remove {
            username: single_username(arguments, USAGE_REMOVE)?,
        }),
        "logout" => no_arguments(arguments, Command::Logout, "/logout"),
        "friends" => no_arguments(arguments, Command::Friends, "/friends"),
        "whoami" => no_arguments(arguments, Command::Whoami, "/whoami"),
        "status" => Ok(Command::Status {
            with: match arguments.trim() {
                "" => None,
                _ => Some(single_username(arguments, USAGE_STATUS)?),
            },
        }),
        "help" | "?" => Ok(Command::Help),
        "quit" | "exit" => Ok(Command::Quit),
        _ => Err(ParseError::UnknownCommand(word.to_string())),
    }
}

/// Splits off the first space-separated word; the rest keeps its inner spacing
/// but loses the separating whitespace.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim_start()),
        None => (text, ""),
    }
}

fn username_argument(name: &str) -> Result<String, ParseError> {
    if is_valid_username(name) {
        Ok(name.to_string())
    } else {
        Err(ParseError::InvalidUsername(name.to_string()))
    }
}

fn optional_rest(rest: &str) -> Option<String> {
    let rest = rest.trim_end();
    (!rest.is_empty()).then(|| rest.to_string())
}

fn message(to: &str, text: &str, plain: bool) -> Result<Command, ParseError> {
    // Only the line's end is trimmed: leading spaces inside TEXT were already
    // eaten as the separator, and trailing spaces are rarely meant.
    let text = text.trim_end();
    if to.is_empty() || text.is_empty() {
        return Err(ParseError::Usage(USAGE_MESSAGE));
    }
    Ok(Command::Message {
        to: username_argument(to)?,
        text: text.to_string(),
        plain,
    })
}

fn history(arguments: &str) -> Result<Command, ParseError> {
    let (with, rest) = split_word(arguments);
    let (count, extra) = split_word(rest);
    if with.is_empty() || !extra.is_empty() {
        return Err(ParseError::Usage(USAGE_HISTORY));
    }
    let limit = if count.is_empty() {
        None
    } else {
        match count.parse::<u32>() {
            Ok(n) if (1..=HISTORY_LIMIT_MAX).contains(&n) => Some(n),
            _ => return Err(ParseError::InvalidLimit(count.to_string())),
        }
    };
    let with = if with.starts_with('#') {
        Chat::Group(group_id_argument(with)?)
    } else {
        Chat::User(username_argument(with)?)
    };
    Ok(Command::History { with, limit })
}

/// A group id as typed: `5` or `#5`.
fn group_id_argument(text: &str) -> Result<i64, ParseError> {
    let digits = text.strip_prefix('#').unwrap_or(text);
    match digits.parse::<i64>() {
        Ok(id) if id > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(ParseError::InvalidGroupId(text.to_string())),
    }
}

/// One or more usernames separated by spaces (commas are allowed too).
fn usernames(text: &str, usage: &'static str) -> Result<Vec<String>, ParseError> {
    let names: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() {
        return Err(ParseError::Usage(usage));
    }
    names.into_iter().map(username_argument).collect()
}

fn group(arguments: &str) -> Result<Command, ParseError> {
    let (action, rest) = split_word(arguments);
    match action.to_ascii_lowercase().as_str() {
        "create" | "new" => {
            let (name, members) = split_word(rest);
            if name.is_empty() {
                return Err(ParseError::Usage(USAGE_GROUP_CREATE));
            }
            if name.chars().count() > GROUP_NAME_MAX_CHARS {
                return Err(ParseError::InvalidGroupName(name.to_string()));
            }
            Ok(Command::CreateGroup {
                name: name.to_string(),
                members: usernames(members, USAGE_GROUP_CREATE)?,
            })
        }
        "add" => {
            let (id, members) = split_word(rest);
            if id.is_empty() {
                return Err(ParseError::Usage(USAGE_GROUP_ADD));
            }
            Ok(Command::AddGroupMembers {
                group_id: group_id_argument(id)?,
                members: usernames(members, USAGE_GROUP_ADD)?,
            })
        }
        "leave" => {
            let (id, extra) = split_word(rest);
            if id.is_empty() || !extra.is_empty() {
                return Err(ParseError::Usage(USAGE_GROUP_LEAVE));
            }
            Ok(Command::LeaveGroup {
                group_id: group_id_argument(id)?,
            })
        }
        _ => Err(ParseError::Usage(USAGE_GROUP)),
    }
}

fn group_message(arguments: &str) -> Result<Command, ParseError> {
    let (id, text) = split_word(arguments);
    let text = text.trim_end();
    if id.is_empty() || text.is_empty() {
        return Err(ParseError::Usage(USAGE_GROUP_MESSAGE));
    }
    Ok(Command::GroupMessage {
        group_id: group_id_argument(id)?,
        text: text.to_string(),
    })
}

fn single_username(arguments: &str, usage: &'static str) -> Result<String, ParseError> {
    let (name, extra) = split_word(arguments);
    if name.is_empty() || !extra.is_empty() {
        return Err(ParseError::Usage(usage));
    }
    username_argument(name)
}

fn no_arguments(
    arguments: &str,
    command: Command,
    usage: &'static str,
) -> Result<Command, ParseError> {
    if arguments.trim().is_empty() {
        Ok(command)
    } else {
        Err(ParseError::Usage(usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Command {
        parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn blank_lines_and_comments_do_nothing() {
        for line in ["", "   ", "\n", "# a comment", "  # indented"] {
            assert_eq!(parsed(line), Command::Nothing, "{line:?}");
        }
    }

    #[test]
    fn register_and_login_take_an_optional_secret_to_the_end_of_the_line() {
        assert_eq!(
            parsed("/register alice a@example.com"),
            Command::Register {
                username: "alice".into(),
                email: "a@example.com".into(),
                secret: None
            }
        );
        assert_eq!(
            parsed("/register alice a@example.com correct horse\r\n"),
            Command::Register {
                username: "alice".into(),
                email: "a@example.com".into(),
                secret: Some("correct horse".into())
            }
        );
        assert_eq!(
            parsed("/login bob"),
            Command::Login {
                username: "bob".into(),
                secret: None
            }
        );
        assert_eq!(
            parsed("/LOGIN bob  s3cret-pw "),
            Command::Login {
                username: "bob".into(),
                secret: Some("s3cret-pw".into())
            }
        );
        assert_eq!(
            parse_line("/register alice"),
            Err(ParseError::Usage(USAGE_REGISTER))
        );
        assert_eq!(parse_line("/login"), Err(ParseError::Usage(USAGE_LOGIN)));
    }

    #[test]
    fn messages_keep_their_text_and_the_at_shortcut_is_the_same_command() {
        let expected = Command::Message {
            to: "bob".into(),
            text: "hello,  world  ✓".into(),
            plain: false,
        };
        assert_eq!(parsed("/msg bob hello,  world  ✓"), expected);
        assert_eq!(parsed("@bob hello,  world  ✓  "), expected);
        assert_eq!(parsed("/m   bob   hello,  world  ✓"), expected);
        assert_eq!(
            parse_line("/msg bob"),
            Err(ParseError::Usage(USAGE_MESSAGE))
        );
        assert_eq!(parse_line("@bob   "), Err(ParseError::Usage(USAGE_MESSAGE)));
        assert_eq!(
            parsed("/msg --plain bob hello,  world  ✓"),
            Command::Message {
                to: "bob".into(),
                text: "hello,  world  ✓".into(),
                plain: true,
            }
        );
        assert_eq!(
            parse_line("/msg --plain bob"),
            Err(ParseError::Usage(USAGE_MESSAGE))
        );
        assert_eq!(
            parse_line("@b hi"),
            Err(ParseError::InvalidUsername("b".into()))
        );
    }

    #[test]
    fn history_takes_an_optional_count_within_the_protocol_limit() {
        assert_eq!(
            parsed("/history bob"),
            Command::History {
                with: Chat::User("bob".into()),
                limit: None
            }
        );
        assert_eq!(
            parsed("/history bob 200"),
            Command::History {
                with: Chat::User("bob".into()),
                limit: Some(200)
            }
        );
        for bad in ["0", "201", "-1", "ten"] {
            assert_eq!(
                parse_line(&format!("/history bob {bad}")),
                Err(ParseError::InvalidLimit(bad.into()))
            );
        }
        assert_eq!(
            parse_line("/history bob 5 6"),
            Err(ParseError::Usage(USAGE_HISTORY))
        );
    }

    #[test]
    fn group_history_takes_a_hash_and_the_group_id() {
        assert_eq!(
            parsed("/history #5 20"),
            Command::History {
                with: Chat::Group(5),
                limit: Some(20)
            }
        );
        assert_eq!(
            parse_line("/history #team"),
            Err(ParseError::InvalidGroupId("#team".into()))
        );
        assert_eq!(
            parse_line("/history #0"),
            Err(ParseError::InvalidGroupId("#0".into()))
        );
    }

    #[test]
    fn group_commands() {
        assert_eq!(
            parsed("/group create team bob carol"),
            Command::CreateGroup {
                name: "team".into(),
                members: vec!["bob".into(), "carol".into()]
            }
        );
        assert_eq!(
            parsed("/GROUP create   team  bob, carol "),
            Command::CreateGroup {
                name: "team".into(),
                members: vec!["bob".into(), "carol".into()]
            }
        );
        assert_eq!(
            parse_line("/group create team"),
            Err(ParseError::Usage(USAGE_GROUP_CREATE))
        );
        assert_eq!(
            parse_line("/group create"),
            Err(ParseError::Usage(USAGE_GROUP_CREATE))
        );
        let long = "x".repeat(GROUP_NAME_MAX_CHARS + 1);
        assert_eq!(
            parse_line(&format!("/group create {long} bob")),
            Err(ParseError::InvalidGroupName(long))
        );
        assert_eq!(
            parse_line("/group create team bob b"),
            Err(ParseError::InvalidUsername("b".into()))
        );
        assert_eq!(
            parsed("/group add 3 dave"),
            Command::AddGroupMembers {
                group_id: 3,
                members: vec!["dave".into()]
            }
        );
        assert_eq!(
            parsed("/group add #3 dave erin"),
            Command::AddGroupMembers {
                group_id: 3,
                members: vec!["dave".into(), "erin".into()]
            }
        );
        assert_eq!(
            parse_line("/group add 3"),
            Err(ParseError::Usage(USAGE_GROUP_ADD))
        );
        assert_eq!(
            parse_line("/group add team dave"),
            Err(ParseError::InvalidGroupId("team".into()))
        );
        assert_eq!(
            parsed("/group leave 3"),
            Command::LeaveGroup { group_id: 3 }
        );
        assert_eq!(
            parse_line("/group leave 3 4"),
            Err(ParseError::Usage(USAGE_GROUP_LEAVE))
        );
        for bad in ["-1", "+3", "1.5", "99999999999999999999"] {
            assert_eq!(
                parse_line(&format!("/group leave {bad}")),
                Err(ParseError::InvalidGroupId(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(parse_line("/group"), Err(ParseError::Usage(USAGE_GROUP)));
        assert_eq!(
            parse_line("/group rename 3 x"),
            Err(ParseError::Usage(USAGE_GROUP))
        );
        assert_eq!(parsed("/groups"), Command::Groups);
        assert_eq!(parse_line("/groups 3"), Err(ParseError::Usage("/groups")));
        assert!(!parsed("/groups").is_local());
    }

    #[test]
    fn group_messages_keep_their_text() {
        let expected = Command::GroupMessage {
            group_id: 7,
            text: "stand-up  in 5".into(),
        };
        assert_eq!(parsed("/gmsg 7 stand-up  in 5  "), expected);
        assert_eq!(parsed("/gmsg #7 stand-up  in 5"), expected);
        assert_eq!(
            parse_line("/gmsg 7"),
            Err(ParseError::Usage(USAGE_GROUP_MESSAGE))
        );
        assert_eq!(
            parse_line("/gmsg team hi"),
            Err(ParseError::InvalidGroupId("team".into()))
        );
        assert!(HELP.contains("/gmsg ID TEXT") && HELP.contains("/history #ID [N]"));
    }

    #[test]
    fn contact_and_local_commands() {
        assert_eq!(
            parsed("/add carol"),
            Command::Add {
                username: "carol".into()
            }
        );
        assert_eq!(
            parsed("/remove carol"),
            Command::Remove {
                username: "carol".into()
            }
        );
        assert_eq!(parse_line("/add"), Err(ParseError::Usage(USAGE_ADD)));
        assert_eq!(parse_line("/add a b"), Err(ParseError::Usage(USAGE_ADD)));
        assert_eq!(parsed("/friends"), Command::Friends);
        assert_eq!(parsed("/logout"), Command::Logout);
        assert_eq!(parsed("/whoami"), Command::Whoami);
        assert_eq!(parsed("/help"), Command::Help);
        assert_eq!(parsed("/quit"), Command::Quit);
        assert_eq!(parse_line("/friends x"), Err(ParseError::Usage("/friends")));
        assert!(parsed("/quit").is_local() && !parsed("/friends").is_local());
        assert_eq!(parsed("/status"), Command::Status { with: None });
        assert_eq!(
            parsed("/status  bob "),
            Command::Status {
                with: Some("bob".into())
            }
        );
        assert_eq!(
            parse_line("/status bob carol"),
            Err(ParseError::Usage(USAGE_STATUS))
        );
        assert!(parsed("/status").is_local());
        assert!(HELP.contains("/status [USER]") && HELP.contains("✓✓"));
    }

    #[test]
    fn unknown_input_is_explained() {
        assert_eq!(
            parse_line("/frobnicate"),
            Err(ParseError::UnknownCommand("frobnicate".into()))
        );
        assert_eq!(parse_line("hello there"), Err(ParseError::NotACommand));
        assert_eq!(
            parse_line("/add has/slash"),
            Err(ParseError::InvalidUsername("has/slash".into()))
        );
        assert!(ParseError::NotACommand
            .to_string()
            .contains("/msg USER TEXT"));
    }
}
