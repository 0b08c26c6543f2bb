//! Where each kind of line goes.
//!
//! Scripts get results and events on stdout, failures and status notices on
//! stderr. With `--json`, stdout carries only the server's frames and every
//! human line goes to stderr. On a terminal every line goes through the line
//! editor's [`Printer`], which prints it above the line being typed and
//! redraws that line as it was.

use std::io::{self, IsTerminal, Write};

use crate::chat::editor::Printer;

/// The screen (or the script's output streams).
pub struct Output {
    json: bool,
    /// The line editor's printer when a person types at a terminal.
    printer: Option<Printer>,
    /// Which of stdout and stderr are that terminal (the others were
    /// redirected and are written as in a script).
    stdout_is_terminal: bool,
    stderr_is_terminal: bool,
}

enum Stream {
    Out,
    Err,
}

impl Output {
    /// `json`: stdout is for frames only; `printer`: the line editor's,
    /// when stdin is a terminal.
    pub fn new(json: bool, printer: Option<Printer>) -> Self {
        Output {
            json,
            printer,
            stdout_is_terminal: io::stdout().is_terminal(),
            stderr_is_terminal: io::stderr().is_terminal(),
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

    fn write(&mut self, stream: Stream, line: &str) {
        // Errors writing to a closed pipe are ignored: there is no one left
        // to tell, and the exit code still says how the commands went.
        let to_terminal = match stream {
            Stream::Out => self.stdout_is_terminal,
            Stream::Err => self.stderr_is_terminal,
        };
        if let Some(printer) = self.printer.as_mut().filter(|_| to_terminal) {
            // The printer keeps the line being typed intact.
            printer.print(line);
            return;
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
    }
}
