//! Where each kind of line goes, and the prompt.
//!
//! Scripts get results and events on stdout, failures and status notices on
//! stderr. With `--json`, stdout carries only the server's frames and every
//! human line goes to stderr. On a terminal, a line that arrives while the
//! prompt is shown first erases the prompt line, then redraws the prompt below
//! it; what the user had typed stays in the terminal's buffer (Ctrl-R shows it
//! again) — as much as a line-based tool without raw mode can do.

use std::io::{self, Write};

/// Erases the current terminal line and returns the cursor to its start.
const ERASE_LINE: &str = "\r\x1b[2K";

/// The screen (or the script's output streams).
pub struct Output {
    interactive: bool,
    json: bool,
    /// The prompt currently shown, if any.
    prompt: Option<String>,
}

enum Stream {
    Out,
    Err,
}

impl Output {
    /// `interactive`: stdin is a terminal; `json`: stdout is for frames only.
    pub fn new(interactive: bool, json: bool) -> Self {
        Output {
            interactive,
            json,
            prompt: None,
        }
    }

    /// The answer to a command (stdout; stderr with `--json`).
    pub fn result(&mut self, line: &str) {
        let stream = if self.json { Stream::Err } else { Stream::Out };
        self.write(stream, line);
    }

    /// Something that happened by itself: a message, a presence change
    /// (stdout; not shown with `--json`, where the frame itself is printed).
    pub fn event(&mut self, line: &str) {
        if !self.json {
            self.write(Stream::Out, line);
        }
    }

    /// A failed command (stderr).
    pub fn failure(&mut self, line: &str) {
        self.write(Stream::Err, line);
    }

    /// A status line about the connection or session (stderr).
    pub fn notice(&mut self, line: &str) {
        self.write(Stream::Err, line);
    }

    /// One raw server frame (stdout, `--json` only).
    pub fn frame(&mut self, text: &str) {
        if self.json {
            self.write(Stream::Out, text);
        }
    }

    /// Shows a prompt (terminal only) without a line ending.
    pub fn show_prompt(&mut self, prompt: &str) {
        if !self.interactive {
            return;
        }
        let mut stdout = io::stdout().lock();
        let _ = write!(stdout, "{prompt}");
        let _ = stdout.flush();
        self.prompt = Some(prompt.to_string());
    }

    /// The user pressed Enter: the prompt line is finished.
    pub fn prompt_answered(&mut self) {
        self.prompt = None;
    }

    fn write(&mut self, stream: Stream, line: &str) {
        // Errors writing to a closed pipe are ignored: there is no one left
        // to tell, and the exit code still says how the commands went.
        if self.prompt.is_some() {
            let mut stdout = io::stdout().lock();
            let _ = write!(stdout, "{ERASE_LINE}");
            let _ = stdout.flush();
        }
        match stream {
            Stream::Out => {
                let mut stdout = io::stdout().lock();
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
            }
            Stream::Err => {
                let _ = writeln!(io::stderr().lock(), "{line}");
            }
        }
        if let Some(prompt) = &self.prompt {
            let mut stdout = io::stdout().lock();
            let _ = write!(stdout, "{prompt}");
            let _ = stdout.flush();
        }
    }
}
