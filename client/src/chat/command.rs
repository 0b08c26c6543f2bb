//! The line client's commands: one typed line in, one [`Command`] out.
//!
//! Pure parsing with no I/O, so every rule is unit-tested here. Whether a
//! missing secret is asked for (terminal) or is an error (script) is decided by
//! the caller, not here: the parser only reports `secret: None`.

use std::fmt;

use protocol::validate::is_valid_username;

/// The largest history page the protocol allows (`limit` 1–200).
pub const HISTORY_LIMIT_MAX: u32 = 200;

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
    /// `/msg USER TEXT…` or `@USER TEXT…`.
    Message {
        /// The recipient.
        to: String,
        /// The text, exactly as typed after the recipient.
        text: String,
    },
    /// `/history USER [N]`.
    History {
        /// The other side of the conversation.
        with: String,
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
    /// `/whoami`.
    Whoami,
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
            Command::Nothing | Command::Whoami | Command::Help | Command::Quit
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
        }
    }
}

/// The text of `/help`.
pub const HELP: &str = "\
commands:
  /register USER EMAIL    create an account (asks for a password)
  /login USER             log in (asks for a password; a saved session is resumed)
  /logout                 end this session and forget it
  /msg USER TEXT          send TEXT to USER (shortcut: @USER TEXT)
  /history USER [N]       the last N messages with USER (default 50, at most 200)
  /friends                your contacts, with who is online
  /add USER               add USER to your contacts (or accept their request)
  /remove USER            remove USER from your contacts
  /whoami                 who you are logged in as
  /help                   this list
  /quit                   leave (Ctrl-D works too)
In a script the password may follow on the line: /login USER PASSWORD.
Incoming messages may hide what you are typing; Ctrl-R redraws it.";

const USAGE_REGISTER: &str = "/register USER EMAIL";
const USAGE_LOGIN: &str = "/login USER";
const USAGE_MESSAGE: &str = "/msg USER TEXT";
const USAGE_HISTORY: &str = "/history USER [N]";
const USAGE_ADD: &str = "/add USER";
const USAGE_REMOVE: &str = "/remove USER";

/// Parses one input line (without its line ending).
pub fn parse_line(line: &str) -> Result<Command, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
        return Ok(Command::Nothing);
    }
    if let Some(rest) = trimmed.strip_prefix('@') {
        let (to, text) = split_word(rest);
        return message(to, text);
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
            let (to, text) = split_word(arguments);
            message(to, text)
        }
        "history" => history(arguments),
        "add" => Ok(Command::Add {
            username: single_username(arguments, USAGE_ADD)?,
        }),
        "remove" => Ok(Command::Remove {
            username: single_username(arguments, USAGE_REMOVE)?,
        }),
        "logout" => no_arguments(arguments, Command::Logout, "/logout"),
        "friends" => no_arguments(arguments, Command::Friends, "/friends"),
        "whoami" => no_arguments(arguments, Command::Whoami, "/whoami"),
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

fn message(to: &str, text: &str) -> Result<Command, ParseError> {
    // Only the line's end is trimmed: leading spaces inside TEXT were already
    // eaten as the separator, and trailing spaces are rarely meant.
    let text = text.trim_end();
    if to.is_empty() || text.is_empty() {
        return Err(ParseError::Usage(USAGE_MESSAGE));
    }
    Ok(Command::Message {
        to: username_argument(to)?,
        text: text.to_string(),
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
    Ok(Command::History {
        with: username_argument(with)?,
        limit,
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
            parse_line("@b hi"),
            Err(ParseError::InvalidUsername("b".into()))
        );
    }

    #[test]
    fn history_takes_an_optional_count_within_the_protocol_limit() {
        assert_eq!(
            parsed("/history bob"),
            Command::History {
                with: "bob".into(),
                limit: None
            }
        );
        assert_eq!(
            parsed("/history bob 200"),
            Command::History {
                with: "bob".into(),
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
