//! The line editor for a person at a terminal (rustyline): editing keys,
//! history kept across runs beside the session file, Tab completion of
//! commands, contact names and group ids, and a [`Printer`] through which
//! every line the client shows goes, printed *above* the line being typed
//! without disturbing it.
//!
//! A script (stdin not a terminal) never meets this module: its lines are
//! read as they come ([`crate::chat::input`]).
//!
//! What completes comes from the [`Vocabulary`], which the client's loop
//! fills as it learns names (the contact list fetched after each login,
//! `/friends`, presence, senders, group members) and group ids; the editor
//! thread only reads it.
//!
//! Secrets never reach the history: `/login USER PASSWORD` is kept as
//! `/login USER` ([`history_entry`]), and a password asked for at its own
//! prompt is read without echo by `rpassword`, outside the editor.

use std::collections::BTreeSet;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustyline::completion::{Completer, Pair};
use rustyline::config::Config;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Context, Editor, ExternalPrinter, Helper};

use protocol::server::Directory;
use protocol::ClientMessage;

use crate::chat::app::App;
use crate::chat::command::{parse_line, Command};
use crate::chat::input::InputEvent;
use crate::chat::requests::Purpose;

/// Lines kept in the history file: a few weeks of typing, and a file small
/// enough to read at every start.
pub const HISTORY_ENTRIES_MAX: usize = 1000;

/// The commands Tab completes at the start of a line.
const COMMANDS: &[&str] = &[
    "/add",
    "/devices",
    "/friends",
    "/gmsg",
    "/group",
    "/groups",
    "/help",
    "/history",
    "/login",
    "/logout",
    "/msg",
    "/quit",
    "/register",
    "/remove",
    "/status",
    "/whoami",
];

/// The words Tab completes after `/group`.
const GROUP_ACTIONS: &[&str] = &["add", "create", "leave"];

/// Names and group ids Tab can complete, shared by the client's loop
/// (which learns them) and the editor thread (which reads them).
#[derive(Debug, Default)]
pub struct Vocabulary {
    names: BTreeSet<String>,
    group_ids: BTreeSet<i64>,
}

/// The vocabulary as the loop and the editor share it.
pub type SharedVocabulary = Arc<Mutex<Vocabulary>>;

impl Vocabulary {
    /// Remembers usernames (the user's contacts, people heard from).
    pub fn learn_names<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        self.names.extend(names.into_iter().map(str::to_string));
    }

    /// Replaces the group ids with the user's groups now.
    pub fn set_group_ids(&mut self, ids: impl IntoIterator<Item = i64>) {
        self.group_ids = ids.into_iter().collect();
    }

    /// Forgets everything (another user logged in, or nobody is).
    pub fn clear(&mut self) {
        self.names.clear();
        self.group_ids.clear();
    }
}

/// What a Tab at `pos` in `line` offers: where the replaced word starts,
/// and the candidates for it (each with a space after it).
pub fn complete(line: &str, pos: usize, vocabulary: &Vocabulary) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before
        .rfind(char::is_whitespace)
        .map_or(0, |space| space + 1);
    let word = &before[start..];
    let previous: Vec<&str> = before[..start].split_whitespace().collect();
    let names = || vocabulary.names.iter().cloned();
    let groups = || vocabulary.group_ids.iter().map(i64::to_string);
    let words: Vec<String> = match (previous.as_slice(), word) {
        ([], word) if word.starts_with('@') => names().map(|name| format!("@{name}")).collect(),
        ([], _) => COMMANDS.iter().map(|command| command.to_string()).collect(),
        (["/gmsg"], _) | (["/group", "add" | "leave"], _) => groups().collect(),
        (["/group"], _) => GROUP_ACTIONS.iter().map(|word| word.to_string()).collect(),
        (["/group", "create", _, ..], _) | (["/group", "add", _, ..], _) => names().collect(),
        (["/history"], _) => names().chain(groups().map(|id| format!("#{id}"))).collect(),
        (["/msg" | "/m"], _) => names().chain(["--plain".to_string()]).collect(),
        (["/msg" | "/m", "--plain"], _) => names().collect(),
        (["/add" | "/remove" | "/status" | "/login"], _) => names().collect(),
        _ => Vec::new(),
    };
    let candidates = words
        .into_iter()
        .filter(|candidate| candidate.starts_with(word))
        .map(|candidate| candidate + " ")
        .collect();
    (start, candidates)
}

/// What the history keeps of a typed line: the line, less a password
/// typed on it; nothing for a blank line.
pub fn history_entry(line: &str) -> Option<String> {
    match parse_line(line) {
        Ok(Command::Nothing) => None,
        Ok(Command::Login {
            username,
            secret: Some(_),
        }) => Some(format!("/login {username}")),
        Ok(Command::Register {
            username,
            email,
            secret: Some(_),
        }) => Some(format!("/register {username} {email}")),
        _ => Some(line.trim().to_string()),
    }
}

/// The history file of a client whose session file is `session_file`:
/// `alice.json` → `alice.history`, beside it.
pub fn history_path(session_file: &Path) -> PathBuf {
    session_file.with_extension("history")
}

/// Creates `path` empty with mode 0600 (its directory 0700) unless it
/// exists.
fn create_private(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(|_| ())
}

/// rustyline's helper: completion only (no hints, colours or validation).
struct ChatHelper {
    vocabulary: SharedVocabulary,
}

impl Completer for ChatHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let vocabulary = self
            .vocabulary
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (start, words) = complete(line, pos, &vocabulary);
        let pairs = words
            .into_iter()
            .map(|word| Pair {
                display: word.trim_end().to_string(),
                replacement: word,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for ChatHelper {
    type Hint = String;
}
impl Highlighter for ChatHelper {}
impl Validator for ChatHelper {}
impl Helper for ChatHelper {}

/// Prints lines above the one being typed (or plainly when none is).
pub struct Printer(Box<dyn ExternalPrinter + Send>);

impl Printer {
    /// Prints one line (a line ending is added).
    pub fn print(&mut self, line: &str) {
        // A failure means the terminal is gone; nobody is left to tell.
        let _ = self.0.print(format!("{line}\n"));
    }
}

/// The loop's side of the line editor: where it prints, and where it puts
/// what Tab should know.
pub struct Terminal {
    /// Prints above the line being typed.
    pub printer: Printer,
    /// Names and group ids for completion.
    pub vocabulary: SharedVocabulary,
}

/// The editor: one per run, used by the input thread.
pub struct LineEditor {
    editor: Editor<ChatHelper, FileHistory>,
    history_file: Option<PathBuf>,
}

impl LineEditor {
    /// An editor completing from `vocabulary`, with the history of
    /// `history_file` (created mode 0600 if missing), and the printer that
    /// goes with it.
    pub fn new(
        history_file: Option<PathBuf>,
        vocabulary: SharedVocabulary,
    ) -> io::Result<(LineEditor, Printer)> {
        let config = Config::builder()
            .completion_type(CompletionType::List)
            .max_history_size(HISTORY_ENTRIES_MAX)
            .map_err(io::Error::other)?
            .auto_add_history(false)
            .build();
        let mut editor = Editor::with_config(config).map_err(io::Error::other)?;
        editor.set_helper(Some(ChatHelper { vocabulary }));
        if let Some(path) = &history_file {
            // Typed messages are private: the file is its owner's alone.
            create_private(path)?;
            if let Err(error) = editor.load_history(path) {
                eprintln!("* ignoring the history in {}: {error}", path.display());
            }
        }
        let printer = Printer(Box::new(
            editor.create_external_printer().map_err(io::Error::other)?,
        ));
        let line_editor = LineEditor {
            editor,
            history_file,
        };
        Ok((line_editor, printer))
    }

    /// Reads one line with editing; Ctrl-D or Ctrl-C ends the input.
    pub fn read_line(&mut self, prompt: &str) -> InputEvent {
        match self.editor.readline(prompt) {
            Ok(line) => {
                self.remember(&line);
                InputEvent::Line(line)
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => InputEvent::End,
            Err(error) => {
                eprintln!("* cannot read the terminal: {error}");
                InputEvent::End
            }
        }
    }

    /// Adds `line` to the history (without a password) and appends it to
    /// the history file.
    fn remember(&mut self, line: &str) {
        let Some(entry) = history_entry(line) else {
            return;
        };
        if self.editor.history().iter().last() == Some(&entry) {
            return;
        }
        let _ = self.editor.add_history_entry(entry);
        if let Some(path) = &self.history_file {
            if let Err(error) = self.editor.append_history(path) {
                eprintln!("* cannot save the history to {}: {error}", path.display());
            }
        }
    }
}

// ----- the loop's side: what Tab knows -----------------------------------------

impl App {
    /// Tells the line editor's completion something (only when a person
    /// types at a terminal).
    pub(super) fn learn(&self, change: impl FnOnce(&mut Vocabulary)) {
        if let Some(shared) = &self.vocabulary {
            change(&mut shared.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// The user's contacts, for completion.
    pub(super) fn learn_contacts(&self, directory: &Directory) {
        let names = directory.data.iter().map(|entry| entry.username.as_str());
        self.learn(|vocabulary| vocabulary.learn_names(names));
    }

    /// Fetches the contact list after a login, for completion only (so
    /// not in a script, nor with `--json`, whose stdout is frames asked for).
    pub(super) fn start_contacts_fetch(&mut self) {
        if self.vocabulary.is_some() && !self.options.json {
            self.send_request(Purpose::ContactsFetch, &ClientMessage::GetDirectory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command the help lists is one Tab completes (the two lists are
    /// kept by hand).
    #[test]
    fn tab_knows_every_command_in_the_help() {
        let listed = crate::chat::command::HELP
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|word| word.starts_with('/') && word.len() > 1);
        for command in listed {
            assert!(COMMANDS.contains(&command), "{command} is not completed");
        }
    }

    fn vocabulary() -> Vocabulary {
        let mut vocabulary = Vocabulary::default();
        vocabulary.learn_names(["bob", "bea", "carol"]);
        vocabulary.set_group_ids([5, 12]);
        vocabulary
    }

    fn offered(line: &str) -> Vec<String> {
        complete(line, line.len(), &vocabulary()).1
    }

    #[test]
    fn commands_complete_at_the_start_of_the_line() {
        assert_eq!(offered("/hi"), ["/history "]);
        assert_eq!(offered("/gr"), ["/group ", "/groups "]);
        assert_eq!(complete("/hi", 3, &vocabulary()).0, 0);
        assert!(offered("/nothing").is_empty());
    }

    #[test]
    fn names_and_group_ids_complete_where_the_command_takes_them() {
        assert_eq!(offered("/msg b"), ["bea ", "bob "]);
        assert_eq!(offered("/msg --plain c"), ["carol "]);
        assert_eq!(offered("@c"), ["@carol "]);
        assert_eq!(offered("/gmsg 1"), ["12 "]);
        assert_eq!(offered("/group leave "), ["5 ", "12 "]);
        assert_eq!(offered("/group add 5 ca"), ["carol "]);
        assert_eq!(offered("/history #"), ["#5 ", "#12 "]);
        assert_eq!(complete("/msg bo", 7, &vocabulary()).0, 5);
        // The text of a message is not completed.
        assert!(offered("/msg bob b").is_empty());
    }

    #[test]
    fn passwords_stay_out_of_the_history() {
        assert_eq!(
            history_entry("/login alice s3cret words").as_deref(),
            Some("/login alice")
        );
        assert_eq!(
            history_entry("/register alice a@example.com s3cret").as_deref(),
            Some("/register alice a@example.com")
        );
        assert_eq!(
            history_entry(" /msg bob hi ").as_deref(),
            Some("/msg bob hi")
        );
        assert_eq!(history_entry("   "), None);
    }

    #[test]
    fn the_history_file_sits_beside_the_session_file() {
        assert_eq!(
            history_path(Path::new("/home/a/.config/chat/session.json")),
            Path::new("/home/a/.config/chat/session.history")
        );
    }
}
