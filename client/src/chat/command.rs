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
    /// `/devices`: your sessions (devices), which one this is, which are
    /// online.
    Devices,
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
  /devices                where you are logged in: each device, this one marked
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
        "devices" => no_arguments(arguments, Command::Devices, "/devices"),
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
mod tests;
