//! The keyboard (or script) side: a thread that reads one line from stdin each
//! time the main loop asks for one.
//!
//! Reading only on request keeps the order simple: the loop asks for the next
//! line once the previous command is answered, and asks for a *secret* when a
//! command needs one, so a password can never be read by a line read that was
//! already waiting.
//!
//! A script's lines are read exactly as they come. A person at a terminal
//! types into the line editor ([`LineEditor`]), and a password at its own
//! prompt is read without echo by `rpassword`.
//!
//! The thread is not joined: it may be blocked reading a terminal, which
//! nothing can interrupt portably; the line editor puts the terminal back as
//! it was whenever a read ends.

use std::io::{self, BufRead, IsTerminal};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use crate::chat::app::App;
use crate::chat::command::parse_line;
use crate::chat::editor::LineEditor;

/// What the main loop asks the reader for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    /// The next line, after this prompt (shown on a terminal only).
    Line(String),
    /// The next line with echo off after this prompt (a password on a
    /// terminal).
    Secret(String),
}

/// What the reader hands back.
#[derive(Debug, PartialEq, Eq)]
pub enum InputEvent {
    /// One line, without its line ending (invalid UTF-8 is replaced).
    Line(String),
    /// Standard input is finished (Ctrl-D, end of file or pipe).
    End,
}

/// The handle the main loop holds.
pub struct Input {
    requests: Sender<Request>,
    events: Receiver<InputEvent>,
    outstanding: bool,
}

/// True when standard input is a terminal (a person), false for a script.
pub fn stdin_is_terminal() -> bool {
    io::stdin().is_terminal()
}

impl Input {
    /// Starts the reader thread: with the line editor when a person types
    /// at a terminal, reading stdin as it comes otherwise.
    pub fn spawn(editor: Option<LineEditor>) -> io::Result<Input> {
        let (request_sender, request_receiver) = mpsc::channel();
        let (event_sender, event_receiver) = mpsc::channel();
        thread::Builder::new()
            .name("chat-stdin".into())
            .spawn(move || match editor {
                Some(editor) => edit_on_request(editor, request_receiver, event_sender),
                None => read_on_request(request_receiver, event_sender),
            })?;
        Ok(Input {
            requests: request_sender,
            events: event_receiver,
            outstanding: false,
        })
    }

    /// True while a requested line has not arrived yet.
    pub fn is_reading(&self) -> bool {
        self.outstanding
    }

    /// Asks for the next line; a terminal shows `prompt` first.
    pub fn request_line(&mut self, prompt: &str) {
        self.request(Request::Line(prompt.to_string()));
    }

    /// Asks for the next line with echo off (when stdin is a terminal,
    /// which shows `prompt` first).
    pub fn request_secret(&mut self, prompt: &str) {
        self.request(Request::Secret(prompt.to_string()));
    }

    fn request(&mut self, request: Request) {
        assert!(!self.outstanding, "one stdin request at a time");
        // A send fails only if the reader thread ended after reporting End.
        if self.requests.send(request).is_ok() {
            self.outstanding = true;
        }
    }

    /// The answer to the outstanding request, waiting at most `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<InputEvent> {
        if !self.outstanding {
            return None;
        }
        let received = if timeout.is_zero() {
            self.events.try_recv().map_err(|error| match error {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            self.events.recv_timeout(timeout)
        };
        match received {
            Ok(event) => {
                self.outstanding = false;
                Some(event)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.outstanding = false;
                Some(InputEvent::End)
            }
        }
    }
}

/// A script's lines, as they come (prompts are for people).
fn read_on_request(requests: Receiver<Request>, events: Sender<InputEvent>) {
    let stdin = io::stdin();
    let mut buffer = Vec::new();
    for _request in requests {
        buffer.clear();
        let event = match stdin.lock().read_until(b'\n', &mut buffer) {
            Ok(0) | Err(_) => InputEvent::End,
            Ok(_) => {
                while matches!(buffer.last(), Some(b'\n' | b'\r')) {
                    buffer.pop();
                }
                InputEvent::Line(String::from_utf8_lossy(&buffer).into_owned())
            }
        };
        if !hand_over(&events, event) {
            return;
        }
    }
}

/// A person's lines, through the line editor; passwords without echo.
fn edit_on_request(
    mut editor: LineEditor,
    requests: Receiver<Request>,
    events: Sender<InputEvent>,
) {
    for request in requests {
        let event = match request {
            Request::Line(prompt) => editor.read_line(&prompt),
            Request::Secret(prompt) => match rpassword::prompt_password(prompt) {
                Ok(secret) => InputEvent::Line(secret),
                Err(_) => InputEvent::End,
            },
        };
        if !hand_over(&events, event) {
            return;
        }
    }
}

/// Sends `event` to the loop; false when reading should stop (the input
/// ended, or the loop is gone).
fn hand_over(events: &Sender<InputEvent>, event: InputEvent) -> bool {
    let ended = event == InputEvent::End;
    events.send(event).is_ok() && !ended
}

// ----- the loop's side ---------------------------------------------------------

impl App {
    /// Asks for the next line once nothing is in progress.
    pub(super) fn request_input_if_ready(&mut self) {
        if self.input.is_reading()
            || self.input_ended_at.is_some()
            || self.busy()
            || !self.ever_connected
        {
            return;
        }
        let prompt = match &self.identity {
            Some(identity) => format!("{}> ", identity.username),
            None => "> ".to_string(),
        };
        self.input.request_line(&prompt);
    }

    /// A line (or the end of input) arrived.
    pub(super) fn on_input(&mut self, event: InputEvent) {
        match (event, self.awaiting_secret.take()) {
            (InputEvent::Line(secret), Some(command)) => self.on_secret(command, secret),
            (InputEvent::Line(line), None) => match parse_line(&line) {
                Ok(command) => self.start(command),
                Err(error) => self.fail(&error.to_string()),
            },
            (InputEvent::End, waiting) => {
                if waiting.is_some() {
                    self.fail("no password given");
                }
                if self.options.interactive {
                    // Ctrl-D at the prompt: end the prompt line neatly.
                    println!();
                }
                self.input_ended_at = Some(Instant::now());
            }
        }
    }
}
