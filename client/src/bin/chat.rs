//! `chat`: the line client for chat-server. The "Talking from a terminal"
//! section of README.md has a transcript; the work happens in `client::chat`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use client::chat::app::{self, Options};
use client::chat::editor::{self, LineEditor, SharedVocabulary, Terminal};
use client::chat::input::{stdin_is_terminal, Input};
use client::chat::session;

/// Talk to a chat-server from a terminal, or run chat commands from a script.
///
/// Type /help at the prompt for the commands. At a terminal, lines are
/// edited with history (kept beside the session file, passwords left out)
/// and Tab completion of commands, contact names and group ids; messages
/// that arrive are printed above the line being typed. When stdin is not a
/// terminal, each line runs in order after the previous one is answered,
/// results go to stdout and errors to stderr, and the exit status is 1 if
/// any command failed (2 if the server could not be reached).
#[derive(Parser, Debug)]
#[command(name = "chat", version)]
struct Cli {
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8765")]
    url: String,

    /// Print the server's raw frames on stdout, one JSON object per line,
    /// instead of human-readable lines (which then go to stderr).
    #[arg(long)]
    json: bool,

    /// Where to save the session [default: $XDG_CONFIG_HOME/chat/session.json
    /// or ~/.config/chat/session.json]; the line editor's history is kept
    /// beside it (session.history).
    #[arg(long, value_name = "PATH")]
    session_file: Option<PathBuf>,

    /// After the last input line, keep listening for incoming messages this
    /// many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    wait: f64,

    /// For wss:// URLs: a PEM file of certificates to trust besides the
    /// system's trust store (which honours SSL_CERT_FILE and SSL_CERT_DIR):
    /// the CA that signed the server's certificate (e.g. the ca.pem of
    /// `chat-server gen-cert`), or the server's own self-signed certificate,
    /// which is then accepted exactly as it is.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Ok(wait) = Duration::try_from_secs_f64(cli.wait) else {
        eprintln!("chat: --wait must be a number of seconds, 0 or more");
        return ExitCode::from(2);
    };
    if let Some(ca_file) = &cli.ca_file {
        if let Err(problem) = client::chat::connection::trust(Some(ca_file)) {
            eprintln!("chat: {problem}");
            return ExitCode::from(2);
        }
    }
    let session_file = cli.session_file.or_else(session::default_path);
    let interactive = stdin_is_terminal();
    let (editor, terminal) = if interactive {
        match start_editor(session_file.as_deref()) {
            Ok((editor, terminal)) => (Some(editor), Some(terminal)),
            Err(error) => {
                eprintln!("chat: cannot start the line editor: {error}");
                return ExitCode::from(2);
            }
        }
    } else {
        (None, None)
    };
    let input = match Input::spawn(editor) {
        Ok(input) => input,
        Err(error) => {
            eprintln!("chat: cannot start reading stdin: {error}");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        url: cli.url,
        json: cli.json,
        session_file,
        wait,
        interactive,
    };
    let code = app::run(options, input, terminal);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The line editor for a person at a terminal, its history beside the
/// session file (none kept without one).
fn start_editor(session_file: Option<&Path>) -> std::io::Result<(LineEditor, Terminal)> {
    let vocabulary = SharedVocabulary::default();
    let history = session_file.map(editor::history_path);
    let (line_editor, printer) = LineEditor::new(history, vocabulary.clone())?;
    Ok((
        line_editor,
        Terminal {
            printer,
            vocabulary,
        },
    ))
}
