//! Where each kind of line goes.
//!
//! Scripts get results and events on stdout, failures and status notices on
//! stderr. With `--json`, stdout carries only the server's frames and every
//! human line goes to stderr. On a terminal every line goes through the line
//! editor's [`Printer`], which prints it above the line being typed and
//! redraws that line as it was.

use std::io::{self, IsTerminal, Write};

use protocol::ServerMessage;

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

/// Key traffic is the client's own business (the user never asks for a key
/// directly), so `--json` does not print it: stdout keeps only the frames of
/// what was asked and what was pushed.
pub fn is_key_traffic(message: &ServerMessage) -> bool {
    match message {
        ServerMessage::Key(_) => true,
        ServerMessage::Error(error) => matches!(error.ref_tag, Some(9) | Some(10)),
        _ => false,
    }
}

/// A frame on one line for `--json` (the server sends compact JSON already;
/// this only matters if a frame holds a raw line break between fields).
pub fn one_line(text: &str) -> String {
    if !text.contains('\n') {
        return text.to_string();
    }
    serde_json::from_str::<serde_json::Value>(text)
        .map(|value| value.to_string())
        .unwrap_or_else(|_| text.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_printed_on_one_line() {
        assert_eq!(
            one_line("{\"tag\":\n32,\"time\":1}"),
            r#"{"tag":32,"time":1}"#
        );
        assert_eq!(one_line(r#"{"tag":32}"#), r#"{"tag":32}"#);
    }
}
