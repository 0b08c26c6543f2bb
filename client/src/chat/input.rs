//! The keyboard (or script) side: a thread that reads one line from stdin each
//! time the main loop asks for one.
//!
//! Reading only on request keeps the order simple: the loop asks for the next
//! line once the previous command is answered, and asks for a *secret* (with
//! terminal echo off) when a command needs one, so a password can never be
//! read by a line read that was already waiting. Lines typed early stay in the
//! terminal's own buffer until asked for.
//!
//! The thread is not joined: it may be blocked in `read` on a terminal, which
//! nothing can interrupt portably, and it holds nothing that needs cleaning up
//! except terminal echo, which [`EchoOff`] restores as soon as the read ends.

use std::io::{self, BufRead, IsTerminal};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread;
use std::time::Duration;

/// What the main loop asks the reader for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    /// The next line, echoed as typed.
    Line,
    /// The next line with echo off (a password on a terminal).
    Secret,
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
    /// Starts the reader thread.
    pub fn spawn() -> io::Result<Input> {
        let (request_sender, request_receiver) = mpsc::channel();
        let (event_sender, event_receiver) = mpsc::channel();
        thread::Builder::new()
            .name("chat-stdin".into())
            .spawn(move || read_on_request(request_receiver, event_sender))?;
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

    /// Asks for the next line.
    pub fn request_line(&mut self) {
        self.request(Request::Line);
    }

    /// Asks for the next line with echo off (when stdin is a terminal).
    pub fn request_secret(&mut self) {
        self.request(Request::Secret);
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

fn read_on_request(requests: Receiver<Request>, events: Sender<InputEvent>) {
    let stdin = io::stdin();
    let terminal = stdin.is_terminal();
    let mut buffer = Vec::new();
    for request in requests {
        let _echo = (request == Request::Secret && terminal).then(EchoOff::new);
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
        let ended = event == InputEvent::End;
        if events.send(event).is_err() || ended {
            return;
        }
    }
}

/// Terminal echo switched off for as long as this value lives.
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr only read and write the `termios` value
        // we pass for file descriptor 0; a failure leaves echo as it was.
        unsafe {
            let mut settings: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut settings) != 0 {
                return EchoOff { saved: None };
            }
            let saved = settings;
            settings.c_lflag &= !libc::ECHO;
            settings.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &settings) != 0 {
                return EchoOff { saved: None };
            }
            EchoOff { saved: Some(saved) }
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = self.saved {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
            }
        }
    }
}
