//! The line client's loop and state: commands in, frames out, answers and
//! pushed events back to the screen.
//!
//! One thread owns everything here and does blocking WebSocket I/O with a
//! short read timeout ([`POLL_INTERVAL`]); the only other thread reads stdin
//! on request ([`Input`]). Commands run one at a time: the next line is read
//! only once the previous command is answered (or has failed), which is what
//! makes piped scripts deterministic.
//!
//! Every request carries a fresh `request_id`, and every reply echoes it
//! (protocol 1.1), so each reply is matched to its request by id
//! ([`Requests`]): the command's, or one of the client's own background
//! requests — resuming a saved session, fetching the groups after a login,
//! catching up with `Sync`, looking up and publishing end-to-end keys. These
//! may be answered in any order. Frames without an id are pushes: delivered
//! messages, presence, contact requests, news about groups.
//!
//! The rest lives with its owner, each an `impl App` beside its own state:
//! `link` (connect, reconnect, resume), `account` (login, logout), `groups`
//! (the group directory), `inbox` (showing in order), [`keys`](super::keys)
//! (end-to-end keys), `catchup` (Sync, receipts, the session file),
//! [`editor`](super::editor) (what Tab knows), [`input`](super::input)
//! (asking for lines).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::{decode_reply, encode_request, ClientMessage, RequestId, ServerMessage};

use crate::chat::account::*;
use crate::chat::catchup::*;
use crate::chat::clock::frame_time;
use crate::chat::clock::Stamper;
use crate::chat::command::{Command, HELP};
use crate::chat::connection::POLL_INTERVAL;
use crate::chat::editor::{SharedVocabulary, Terminal};
use crate::chat::groups::*;
use crate::chat::inbox::*;
use crate::chat::input::Input;
use crate::chat::keys::Keyring;
use crate::chat::link::*;
use crate::chat::output::{is_key_traffic, one_line, Output};
use crate::chat::render::{self, Asked};
use crate::chat::requests::{self, Purpose, Requests};

/// How long a command waits for its answer before it counts as failed.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Every command succeeded.
pub const EXIT_OK: i32 = 0;
/// At least one command failed (its reason was printed on stderr).
pub const EXIT_COMMAND_FAILED: i32 = 1;
/// The server could not be reached (at start, or a script gave up
/// reconnecting).
pub const EXIT_NO_SERVER: i32 = 2;

/// What the command line decided.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server, e.g. `ws://127.0.0.1:8765`.
    pub url: String,
    /// Print raw server frames on stdout instead of human lines.
    pub json: bool,
    /// Where the session is saved; `None` disables saving.
    pub session_file: Option<PathBuf>,
    /// Keep listening this long after the last input line.
    pub wait: Duration,
    /// Stdin is a terminal: prompt, and ask for secrets without echo.
    pub interactive: bool,
}

/// Runs the client until `/quit`, the end of input, or a fatal error, and
/// returns the process exit code.
/// `terminal` is the line editor's side when a person types at a terminal.
pub fn run(options: Options, input: Input, terminal: Option<Terminal>) -> i32 {
    let mut app = App::new(options, input, terminal);
    app.run()
}

/// A command sent (or waiting to be sent) to the server.
pub(super) struct Pending {
    pub(super) asked: Asked,
    pub(super) request: ClientMessage,
    /// The request id it was sent with; `None` until sent.
    pub(super) id: Option<RequestId>,
    pub(super) deadline: Instant,
}

pub(super) struct App {
    pub(super) options: Options,
    pub(super) out: Output,
    pub(super) input: Input,
    pub(super) input_ended_at: Option<Instant>,
    /// A `/login` or `/register` waiting for its secret to be typed.
    pub(super) awaiting_secret: Option<Command>,
    pub(super) link: Link,
    pub(super) ever_connected: bool,
    /// Who this client is logged in as, or is resuming as.
    pub(super) identity: Option<Identity>,
    /// True while the client's own Login{session_id} awaits its answer.
    pub(super) resuming: bool,
    /// Server time of the first login in this run (for [`Catchup::floor_time`]).
    pub(super) first_login_time: Option<i64>,
    pub(super) pending: Option<Pending>,
    pub(super) catchup: Option<Catchup>,
    /// The groups the user is in (for their names), and the wait for them.
    pub(super) groups: GroupDirectory,
    /// What was seen, shown, confirmed and saved (see [`Progress`]).
    pub(super) progress: Progress,
    /// The last read of the socket found nothing: a batch has ended.
    pub(super) socket_quiet: bool,
    pub(super) client_message_count: u64,
    /// The end-to-end keys: the user's own, and the peers'.
    pub(super) keys: Keyring,
    /// Every request sent and not yet answered, by request id.
    pub(super) requests: Requests,
    /// Received messages and history pages waiting, in order, for keys.
    pub(super) inbox: VecDeque<Inbound>,
    pub(super) failures: u32,
    pub(super) exit_code: Option<i32>,
    /// What Tab completes, when a person types at a terminal.
    pub(super) vocabulary: Option<SharedVocabulary>,
}

impl App {
    pub(super) fn new(options: Options, input: Input, terminal: Option<Terminal>) -> Self {
        let (printer, vocabulary) = match terminal {
            Some(Terminal {
                printer,
                vocabulary,
            }) => (Some(printer), Some(vocabulary)),
            None => (None, None),
        };
        let out = Output::new(options.json, printer);
        let mut app = App {
            out,
            input,
            input_ended_at: None,
            awaiting_secret: None,
            link: Link::Down {
                retry_at: Instant::now(),
                attempts: 0,
            },
            ever_connected: false,
            identity: None,
            resuming: false,
            first_login_time: None,
            pending: None,
            catchup: None,
            groups: GroupDirectory::default(),
            progress: Progress::default(),
            socket_quiet: true,
            client_message_count: 0,
            keys: Keyring::default(),
            requests: Requests::default(),
            inbox: VecDeque::new(),
            failures: 0,
            exit_code: None,
            vocabulary,
            options,
        };
        app.load_saved_session();
        app
    }

    pub(super) fn run(&mut self) -> i32 {
        loop {
            self.maintain_link();
            if let Some(code) = self.exit_code {
                self.shut_down();
                return code;
            }
            self.send_pending_if_ready();
            self.expire_pending();
            self.expire_groups_fetch();
            self.persist_highest_seen();
            self.confirm_if_due();
            if self.finished() {
                self.shut_down();
                return self.exit_code_so_far();
            }
            self.request_input_if_ready();
            self.wait_for_something();
        }
    }

    /// Blocks for at most one poll interval on the socket (or on stdin when
    /// there is no connection), handling what arrives.
    pub(super) fn wait_for_something(&mut self) {
        match &mut self.link {
            Link::Up(connection) => {
                let received = connection.receive();
                self.on_received(received);
                while let Some(event) = self.input.next_event(Duration::ZERO) {
                    self.on_input(event);
                }
            }
            Link::Down { .. } | Link::Idle => {
                if self.input.is_reading() {
                    if let Some(event) = self.input.next_event(POLL_INTERVAL) {
                        self.on_input(event);
                    }
                } else {
                    std::thread::sleep(POLL_INTERVAL);
                }
            }
        }
    }

    pub(super) fn finished(&self) -> bool {
        let Some(ended_at) = self.input_ended_at else {
            return false;
        };
        !self.busy()
            && self.catchup.is_none()
            && self.groups.fetch.is_none()
            && !self.requests.awaits_keys()
            && ended_at.elapsed() >= self.options.wait
    }

    /// True while a command (or the client's own resume) awaits an answer,
    /// or something received waits for a key before it is shown.
    pub(super) fn busy(&self) -> bool {
        self.pending.is_some()
            || self.resuming
            || self.awaiting_secret.is_some()
            || !self.inbox.is_empty()
    }

    pub(super) fn shut_down(&mut self) {
        self.flush_inbox();
        self.persist_highest_seen();
        // Confirm what was shown before leaving (else the next resume would
        // push it again, to be dropped as a duplicate).
        if let Some(through) = self.progress.confirmations.unconfirmed() {
            self.send_received(through);
        }
        if let Link::Up(connection) = std::mem::replace(&mut self.link, Link::Idle) {
            connection.close();
        }
    }

    // ----- commands ----------------------------------------------------------

    /// Runs one command: locally, through its own steps, or as the one
    /// request it sends ([`requests::command_request`]).
    pub(super) fn start(&mut self, command: Command) {
        match command {
            Command::Nothing => {}
            Command::Help => {
                for line in HELP.lines() {
                    self.out.result(line);
                }
            }
            Command::Whoami => self.whoami(),
            Command::Status { with } => self.status(with.as_deref()),
            Command::Quit => self.exit_code = Some(self.exit_code_so_far()),
            Command::Register { secret: None, .. } | Command::Login { secret: None, .. } => {
                self.start_login_without_secret(command)
            }
            Command::Login {
                username,
                secret: Some(secret),
            } => self.login(username, secret),
            Command::Logout => self.logout(),
            Command::Message { to, text, plain } => self.message(to, text, plain),
            Command::GroupMessage { group_id, text } => self.group_message(group_id, text),
            simple => {
                let label = |group_id| self.group_label(group_id);
                match requests::command_request(simple, label) {
                    Some((asked, request)) => self.submit(asked, request),
                    None => unreachable!("every other command has its own arm above"),
                }
            }
        }
    }

    pub(super) fn exit_code_so_far(&self) -> i32 {
        if self.failures > 0 {
            EXIT_COMMAND_FAILED
        } else {
            EXIT_OK
        }
    }

    /// Queues a command for the server; it is sent once the link is ready.
    pub(super) fn submit(&mut self, asked: Asked, request: ClientMessage) {
        assert!(self.pending.is_none(), "one command at a time");
        self.pending = Some(Pending {
            asked,
            request,
            id: None,
            deadline: Instant::now() + ANSWER_TIMEOUT,
        });
        self.send_pending_if_ready();
    }

    pub(super) fn send_pending_if_ready(&mut self) {
        if self.resuming || !matches!(self.link, Link::Up(_)) {
            return;
        }
        let Some(pending) = self.pending.as_mut().filter(|pending| pending.id.is_none()) else {
            return;
        };
        let id = self.requests.start(Purpose::Command);
        let frame = encode_request(&pending.request, Some(&id));
        pending.id = Some(id);
        self.send_frame(frame);
    }

    /// Sends one of the client's own requests with a fresh request id.
    pub(super) fn send_request(&mut self, purpose: Purpose, request: &ClientMessage) {
        let id = self.requests.start(purpose);
        self.send_frame(encode_request(request, Some(&id)));
    }

    pub(super) fn expire_pending(&mut self) {
        let Some(pending) = &self.pending else {
            return;
        };
        if Instant::now() < pending.deadline {
            return;
        }
        let reason = if pending.id.is_some() {
            format!(
                "no answer from the server within {} s",
                ANSWER_TIMEOUT.as_secs()
            )
        } else {
            "not connected to the server".to_string()
        };
        self.fail_pending(&reason);
    }

    pub(super) fn fail_pending(&mut self, reason: &str) {
        if let Some(pending) = self.pending.take() {
            if let Some(id) = &pending.id {
                self.requests.forget(id);
            }
            self.fail(&format!("{}: {reason}", pending.asked.failure_prefix()));
        }
    }

    pub(super) fn fail(&mut self, line: &str) {
        self.failures += 1;
        self.out.failure(line);
    }

    // ----- answers and events -----------------------------------------------

    pub(super) fn on_frame(&mut self, text: &str) {
        let decoded = decode_reply(text);
        if !decoded
            .as_ref()
            .is_ok_and(|(message, _)| is_key_traffic(message))
        {
            self.out.frame(&one_line(text));
        }
        let (message, request_id) = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                self.out.notice(&format!(
                    "* ignoring a frame this client does not understand: {error}"
                ));
                return;
            }
        };
        // Every request this client sends carries an id, so a reply without
        // one (only a 1.0 server sends those) matches nothing and is handled
        // like a push: an Error is shown as a notice, the rest is ignored,
        // and a command waiting for it fails by its timeout. Falling back to
        // matching by order is what issue 16 was about: this client needs a
        // server that speaks protocol 1.1.
        let purpose = request_id
            .filter(|_| message.is_reply())
            .and_then(|id| self.requests.finish(&id));
        let server_time = frame_time(text);
        match purpose {
            Some(Purpose::Command) => self.on_command_answer(message, server_time),
            Some(purpose) => self.on_own_answer(purpose, message, server_time),
            None => self.on_push(message),
        }
    }

    /// The reply to the pending command.
    pub(super) fn on_command_answer(&mut self, message: ServerMessage, server_time: Option<i64>) {
        let Some(Pending { asked, .. }) = self.pending.take() else {
            return;
        };
        match (asked, message) {
            (Asked::Register { .. }, ServerMessage::SuccessRegister(registered)) => {
                let name = registered.username;
                self.out
                    .result(&format!("registered {name}; now /login {name}"));
            }
            (Asked::Register { username }, ServerMessage::FailRegister(failed)) => {
                self.fail(&render::register_failure(&username, failed.error_type));
            }
            (Asked::Login { .. }, ServerMessage::SuccessLogin(success)) => {
                self.on_success_login(success, server_time, false)
            }
            (Asked::Login { .. }, ServerMessage::FailLogin(failed)) => {
                self.fail(&render::login_failure(false, failed.error_type));
            }
            (Asked::Logout, ServerMessage::SuccessLogout(_)) => self.on_logged_out(),
            (asked, ServerMessage::Ack(ack)) => self.on_ack(asked, ack.message_id, server_time),
            (Asked::Message { to, text, .. }, ServerMessage::Key(key)) => {
                self.on_recipient_key(to, text, &key)
            }
            (_, ServerMessage::History(history)) => {
                self.inbox.push_back(Inbound::History(history));
                self.drive_inbox();
            }
            (asked, ServerMessage::Directory(directory)) => self.on_directory(asked, &directory),
            (asked, ServerMessage::GroupInfo(group)) => self.on_group_answer(asked, group),
            (asked, ServerMessage::Groups(groups)) => self.on_groups_answer(asked, &groups),
            (_, ServerMessage::Sessions(sessions)) => {
                for line in render::devices_lines(&sessions, &Stamper::local_now()) {
                    self.out.result(&line);
                }
            }
            (asked, ServerMessage::Error(error)) => {
                self.fail(&render::error_failure(Some(&asked), &error));
            }
            (asked, other) => self.fail(&format!(
                "{}: the server answered with an unexpected frame (tag {})",
                asked.failure_prefix(),
                other.tag()
            )),
        }
    }

    /// The reply to one of the client's own background requests.
    pub(super) fn on_own_answer(
        &mut self,
        purpose: Purpose,
        message: ServerMessage,
        time: Option<i64>,
    ) {
        match (purpose, message) {
            (Purpose::Resume, ServerMessage::SuccessLogin(success)) => {
                self.on_success_login(success, time, true)
            }
            (Purpose::Resume, ServerMessage::FailLogin(failed)) => {
                self.on_resume_failed(&render::login_failure(true, failed.error_type))
            }
            (Purpose::Resume, ServerMessage::Error(error)) => {
                let asked = Asked::Login {
                    username: self.my_name().unwrap_or_default(),
                    resume: true,
                };
                self.on_resume_failed(&render::error_failure(Some(&asked), &error));
            }
            (Purpose::GroupsFetch, ServerMessage::Groups(groups)) => {
                self.on_groups_fetched(&groups)
            }
            (Purpose::GroupsFetch, ServerMessage::Error(error)) => {
                self.on_groups_fetch_failed(&error)
            }
            (Purpose::ContactsFetch, ServerMessage::Directory(directory)) => {
                self.learn_contacts(&directory)
            }
            (Purpose::SyncPage, ServerMessage::Synced(synced)) => self.on_synced(synced),
            (Purpose::SyncPage, ServerMessage::Error(error)) => {
                self.catchup = None;
                let text = render::error_failure(None, &error);
                self.out
                    .notice(&format!("* could not fetch missed messages: {text}"));
            }
            (Purpose::GetKey(_), ServerMessage::Key(key)) => self.on_key(&key),
            (Purpose::GetKey(username), ServerMessage::Error(_)) => {
                self.keys.peers.record(&username, None);
                self.drive_inbox();
            }
            (Purpose::PublishKey, ServerMessage::Error(error)) => {
                let text = render::error_failure(None, &error);
                self.out
                    .notice(&format!("* could not publish your encryption key: {text}"));
            }
            // PublishKey's Key repeats what was published; a reply of a type
            // the request never gets means nothing either.
            _ => {}
        }
    }
}
