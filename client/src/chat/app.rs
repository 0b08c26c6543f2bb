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
//! Group messages are shown as `#name`; the names come from the list fetched
//! after each login and from every GroupInfo/Groups since. Messages that
//! arrive while the list is being fetched (the offline queue comes right
//! after SuccessLogin) are held until it arrives, so they show with their
//! group's name, in order.
//!
//! Receipts (see [`crate::chat::receipts`]): every login asks for them; what
//! has been shown is confirmed with `Received` once per batch, and
//! `Delivered` pushes are recorded quietly for `/status` and `/history`.
//!
//! End-to-end encryption (see [`crate::chat::e2e`]): `/msg` to someone whose
//! key is not known first sends GetKey as the command's own request, then the
//! message. Messages and history pages that need a key not yet known wait in
//! the inbox, in order, until the key arrives; the next input line is read
//! only once the inbox is empty, so output stays in order.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::client::{
    AddGroupMembers, CreateGroup, GetHistory, LeaveGroup, Login, Logout, PublishKey, Register,
    SendMessage, Sync, UserRef,
};
use protocol::server::{
    Delivered, Directory, Error as ServerError, GroupInfo, Groups, History, Key, SuccessLogin,
    Synced,
};
use protocol::{decode_reply, encode_request, ClientMessage, ErrorType, RequestId, ServerMessage};
use x25519_dalek::PublicKey;

use crate::chat::clock::{unix_now, Stamper};
use crate::chat::command::{parse_line, Chat, Command, HELP};
use crate::chat::connection::{Connection, Received, POLL_INTERVAL};
use crate::chat::e2e::KeyPair;
use crate::chat::input::{Input, InputEvent};
use crate::chat::keys::{self, PeerKey, PeerKeys};
use crate::chat::output::Output;
use crate::chat::receipts::{self, Confirmations, DeliveryStatus};
use crate::chat::render::{self, Asked, Opened};
use crate::chat::requests::{Purpose, Requests};
use crate::chat::seen::SeenIds;
use crate::chat::session::{self, SavedSession};

/// How long a command waits for its answer before it counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The first pause before reconnecting after a dropped connection; it doubles
/// with each failed attempt up to [`RECONNECT_DELAY_MAX`].
const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(250);
/// The longest pause between reconnect attempts.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(30);
/// A script gives up after this many failed reconnects in a row (about 30 s
/// of trying with the delays above); a person at a terminal never does.
const SCRIPT_RECONNECT_ATTEMPTS_MAX: u32 = 8;
/// Messages asked for per `Sync` page (the protocol allows 1–1000).
const SYNC_PAGE_LIMIT: i64 = 500;
/// The tag of `Received`, for recognising the server's refusal of it.
const RECEIVED_TAG: i64 = 17;

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
pub fn run(options: Options, input: Input) -> i32 {
    let mut app = App::new(options, input);
    app.run()
}

/// The logged-in (or about-to-be-resumed) identity.
#[derive(Clone, Debug)]
struct Identity {
    username: String,
    session_id: String,
}

/// A command sent (or waiting to be sent) to the server.
struct Pending {
    asked: Asked,
    request: ClientMessage,
    /// The request id it was sent with; `None` until sent.
    id: Option<RequestId>,
    deadline: Instant,
}

/// A catch-up with `Sync` in progress.
struct Catchup {
    /// Messages older than this server time are not "missed" (they predate
    /// this run and nothing was seen to start from); `None` shows them all.
    floor_time: Option<i64>,
}

/// The client's own GetGroups after a login, awaiting its answer.
struct GroupsFetch {
    /// Give up waiting (and show what is held) at this time.
    deadline: Instant,
    /// Messages that arrived meanwhile, in order, to be shown once the group
    /// names are known.
    held: Vec<Delivered>,
}

/// Something received that is shown once the keys it needs are known.
enum Inbound {
    /// A delivered message (live, from the offline queue, or caught up).
    Message(Delivered),
    /// The answer to `/history`.
    History(History),
}

/// Whether opening a message may wait for a key from the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// Ask for missing keys and wait; a message that decrypts ends the
    /// "asked again" state of its peer (see `App::refreshed`).
    Live,
    /// Like `Live`, but a success says nothing about the peer's other
    /// messages (a history page may mix good and tampered ones; clearing
    /// the state there could ask for the key forever).
    Page,
    /// Do not wait: what cannot be opened now is undecryptable.
    None,
}

/// The connection and what to do when there is none.
// There is exactly one `Link`, so the size of its largest variant costs
// nothing; boxing the connection would only add an indirection.
#[allow(clippy::large_enum_variant)]
enum Link {
    Up(Connection),
    /// Disconnected; try again at `retry_at`.
    Down {
        retry_at: Instant,
        attempts: u32,
    },
    /// Disconnected on purpose (after logout); connect when a command needs it.
    Idle,
}

struct App {
    options: Options,
    out: Output,
    input: Input,
    input_ended_at: Option<Instant>,
    /// A `/login` or `/register` waiting for its secret to be typed.
    awaiting_secret: Option<Command>,
    link: Link,
    ever_connected: bool,
    /// Who this client is logged in as, or is resuming as.
    identity: Option<Identity>,
    /// True while the client's own Login{session_id} awaits its answer.
    resuming: bool,
    /// Server time of the first login in this run (for [`Catchup::floor_time`]).
    first_login_time: Option<i64>,
    pending: Option<Pending>,
    catchup: Option<Catchup>,
    /// The groups the logged-in user is in, by id, as last heard.
    groups: BTreeMap<i64, GroupInfo>,
    /// True once a full list of groups arrived for the logged-in user.
    groups_loaded: bool,
    groups_fetch: Option<GroupsFetch>,
    seen: SeenIds,
    /// The user whose message ids `seen` holds.
    seen_owner: Option<String>,
    /// The highest id written to the session file.
    saved_highest: i64,
    /// What this device has shown and confirmed (receipts).
    confirmations: Confirmations,
    /// The `confirmed_through` written to the session file.
    saved_confirmed: i64,
    /// How far the user's messages are delivered (Delivered receipts).
    delivery: DeliveryStatus,
    /// The last read of the socket found nothing: a batch has ended.
    socket_quiet: bool,
    client_message_count: u64,
    /// The logged-in user's key pair; `None` while end-to-end encryption is
    /// off (not logged in, or no key file could be used).
    own_key: Option<KeyPair>,
    /// Other users' public keys, as the server gave them.
    peer_keys: PeerKeys,
    /// Every request sent and not yet answered, by request id.
    requests: Requests,
    /// True once this login sent PublishKey (at most once per login).
    key_published: bool,
    /// Peers whose key was asked for again after one of their messages did
    /// not decrypt; until one decrypts, the next failure is final.
    refreshed: HashSet<String>,
    /// Received messages and history pages waiting, in order, for keys.
    inbox: VecDeque<Inbound>,
    failures: u32,
    exit_code: Option<i32>,
}

/// The pause before reconnect attempt number `attempts` (0-based).
fn reconnect_delay(attempts: u32) -> Duration {
    RECONNECT_DELAY_FIRST
        .saturating_mul(1 << attempts.min(16))
        .min(RECONNECT_DELAY_MAX)
}

impl App {
    fn new(options: Options, input: Input) -> Self {
        let out = Output::new(options.interactive, options.json);
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
            groups: BTreeMap::new(),
            groups_loaded: false,
            groups_fetch: None,
            seen: SeenIds::default(),
            seen_owner: None,
            saved_highest: 0,
            confirmations: Confirmations::default(),
            saved_confirmed: 0,
            delivery: DeliveryStatus::default(),
            socket_quiet: true,
            client_message_count: 0,
            own_key: None,
            peer_keys: PeerKeys::default(),
            requests: Requests::default(),
            key_published: false,
            refreshed: HashSet::new(),
            inbox: VecDeque::new(),
            failures: 0,
            exit_code: None,
            options,
        };
        app.load_saved_session();
        app
    }

    /// Picks up a saved session for this server, to be resumed on connect.
    fn load_saved_session(&mut self) {
        let Some(path) = &self.options.session_file else {
            return;
        };
        match session::load(path) {
            Ok(Some(saved)) if saved.url == self.options.url => {
                self.seen = SeenIds::resuming(saved.last_message_id, saved.confirmed_through);
                self.saved_highest = saved.last_message_id;
                self.confirmations = Confirmations::starting_at(saved.confirmed_through);
                self.saved_confirmed = saved.confirmed_through;
                self.delivery = DeliveryStatus::from_saved(&saved.delivered);
                self.seen_owner = Some(saved.username.clone());
                self.identity = Some(Identity {
                    username: saved.username,
                    session_id: saved.session_id,
                });
            }
            Ok(_) => {}
            Err(error) => self.out.notice(&format!(
                "* ignoring the session file {}: {error}",
                path.display()
            )),
        }
    }

    fn run(&mut self) -> i32 {
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
                return if self.failures > 0 {
                    EXIT_COMMAND_FAILED
                } else {
                    EXIT_OK
                };
            }
            self.request_input_if_ready();
            self.wait_for_something();
        }
    }

    /// Blocks for at most one poll interval on the socket (or on stdin when
    /// there is no connection), handling what arrives.
    fn wait_for_something(&mut self) {
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

    fn finished(&self) -> bool {
        let Some(ended_at) = self.input_ended_at else {
            return false;
        };
        !self.busy()
            && self.catchup.is_none()
            && self.groups_fetch.is_none()
            && !self.requests.awaits_keys()
            && ended_at.elapsed() >= self.options.wait
    }

    /// True while a command (or the client's own resume) awaits an answer,
    /// or something received waits for a key before it is shown.
    fn busy(&self) -> bool {
        self.pending.is_some()
            || self.resuming
            || self.awaiting_secret.is_some()
            || !self.inbox.is_empty()
    }

    fn shut_down(&mut self) {
        self.flush_inbox();
        self.persist_highest_seen();
        // Confirm what was shown before leaving (else the next resume would
        // push it again, to be dropped as a duplicate).
        if let Some(through) = self.confirmations.unconfirmed() {
            self.send_received(through);
        }
        if let Link::Up(connection) = std::mem::replace(&mut self.link, Link::Idle) {
            connection.close();
        }
    }

    // ----- input -------------------------------------------------------------

    fn request_input_if_ready(&mut self) {
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
        self.out.show_prompt(&prompt);
        self.input.request_line();
    }

    fn on_input(&mut self, event: InputEvent) {
        self.out.prompt_answered();
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

    fn on_secret(&mut self, command: Command, secret: String) {
        if secret.is_empty() {
            self.fail("no password given");
            return;
        }
        let command = match command {
            Command::Register {
                username, email, ..
            } => Command::Register {
                username,
                email,
                secret: Some(secret),
            },
            Command::Login { username, .. } => Command::Login {
                username,
                secret: Some(secret),
            },
            other => other,
        };
        self.start(command);
    }

    /// Asks for the secret of `command` on a terminal; a script must give it
    /// on the line.
    fn ask_secret(&mut self, command: Command) {
        if !self.options.interactive {
            let usage = match command {
                Command::Register { .. } => "/register USER EMAIL PASSWORD",
                _ => "/login USER PASSWORD",
            };
            self.fail(&format!(
                "a password is needed; in a script it follows on the line: {usage}"
            ));
            return;
        }
        self.awaiting_secret = Some(command);
        self.out.show_prompt("password: ");
        self.input.request_secret();
    }

    // ----- commands ----------------------------------------------------------

    fn start(&mut self, command: Command) {
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
            Command::Register {
                username,
                email,
                secret: Some(secret),
            } => self.submit(
                Asked::Register {
                    username: username.clone(),
                },
                ClientMessage::Register(Register {
                    username,
                    secret,
                    email,
                }),
            ),
            Command::Login {
                username,
                secret: Some(secret),
            } => self.login(username, secret),
            Command::Logout => self.logout(),
            Command::Message { to, text, plain } => self.message(to, text, plain),
            Command::History { with, limit } => {
                let (asked, chat_id) = match with {
                    Chat::User(with) => (Asked::History { with: with.clone() }, with),
                    Chat::Group(group_id) => (
                        Asked::GroupHistory {
                            group_id,
                            label: self.group_label(group_id),
                        },
                        format!("g:{group_id}"),
                    ),
                };
                self.submit(
                    asked,
                    ClientMessage::GetHistory(GetHistory {
                        chat_id,
                        before: None,
                        limit: limit.map(i64::from),
                    }),
                )
            }
            Command::GroupMessage { group_id, text } => self.group_message(group_id, text),
            Command::CreateGroup { name, members } => self.submit(
                Asked::CreateGroup {
                    name: name.clone(),
                    members: members.clone(),
                },
                ClientMessage::CreateGroup(CreateGroup { name, members }),
            ),
            Command::AddGroupMembers { group_id, members } => self.submit(
                Asked::AddGroupMembers {
                    group_id,
                    label: self.group_label(group_id),
                    members: members.clone(),
                },
                ClientMessage::AddGroupMembers(AddGroupMembers { group_id, members }),
            ),
            Command::LeaveGroup { group_id } => self.submit(
                Asked::LeaveGroup {
                    group_id,
                    label: self.group_label(group_id),
                },
                ClientMessage::LeaveGroup(LeaveGroup { group_id }),
            ),
            Command::Groups => self.submit(Asked::Groups, ClientMessage::GetGroups),
            Command::Friends => self.submit(Asked::Friends, ClientMessage::GetDirectory),
            Command::Add { username } => self.submit(
                Asked::Add {
                    username: username.clone(),
                },
                ClientMessage::AddContact(UserRef { username }),
            ),
            Command::Remove { username } => self.submit(
                Asked::Remove {
                    username: username.clone(),
                },
                ClientMessage::RemoveContact(UserRef { username }),
            ),
        }
    }

    fn exit_code_so_far(&self) -> i32 {
        if self.failures > 0 {
            EXIT_COMMAND_FAILED
        } else {
            EXIT_OK
        }
    }

    fn whoami(&mut self) {
        let line = match &self.identity {
            Some(identity) if !self.resuming => {
                format!("logged in as {} on {}", identity.username, self.options.url)
            }
            _ => format!("not logged in (server {})", self.options.url),
        };
        self.out.result(&line);
    }

    /// `/status`: who you are, then how far your messages are delivered.
    fn status(&mut self, only: Option<&str>) {
        self.whoami();
        for line in self.delivery.status_lines(only, &Stamper::local_now()) {
            self.out.result(&line);
        }
    }

    /// `/login USER` with no secret: nothing to ask if already logged in as
    /// USER (for example by a resumed session).
    fn start_login_without_secret(&mut self, command: Command) {
        if let Command::Login { username, .. } = &command {
            if self.logged_in_as(username) {
                let line = format!("already logged in as {username}");
                self.out.result(&line);
                return;
            }
        }
        self.ask_secret(command);
    }

    fn logged_in_as(&self, username: &str) -> bool {
        matches!(&self.identity, Some(identity) if identity.username == username)
    }

    fn login(&mut self, username: String, secret: String) {
        if self.logged_in_as(&username) {
            self.out.result(&format!("already logged in as {username}"));
            return;
        }
        if let Some(previous) = self.identity.take() {
            // Switching users: leave the old session alive on the server (it
            // can still be resumed elsewhere) and log in on a new connection,
            // because a connection is logged in as at most one user.
            self.out.notice(&format!(
                "* leaving {}'s session to log in as {username}",
                previous.username
            ));
            self.drop_link_quietly();
        }
        self.submit(
            Asked::Login {
                username: username.clone(),
                resume: false,
            },
            ClientMessage::Login(Login {
                username,
                secret: Some(secret),
                session_id: None,
                receipts: true,
            }),
        );
    }

    fn logout(&mut self) {
        let Some(identity) = &self.identity else {
            self.fail("logout failed: you are not logged in");
            return;
        };
        let username = Some(identity.username.clone());
        self.submit(Asked::Logout, ClientMessage::Logout(Logout { username }));
    }

    /// `/msg`: encrypted when both sides have a key (looked up first if
    /// not known), plain with `--plain` or when the recipient has none.
    fn message(&mut self, to: String, text: String, plain: bool) {
        let Some(own_key) = self.own_key.as_ref().filter(|_| !plain) else {
            self.send_message(to, text, None);
            return;
        };
        if self.logged_in_as(&to) {
            let own_public = *own_key.public();
            self.send_message(to, text, Some(own_public));
            return;
        }
        match self.peer_keys.get(&to) {
            Some(PeerKey::Known(public)) => self.send_message(to, text, Some(public)),
            // Unknown, or none published when last asked (there may be one
            // by now): ask, and send once the answer is in (`on_key`).
            _ => self.submit(
                Asked::Message {
                    to: to.clone(),
                    text,
                    encrypted: true,
                },
                ClientMessage::GetKey(UserRef { username: to }),
            ),
        }
    }

    /// Sends a message, sealed for `peer_public` when given.
    fn send_message(&mut self, to: String, text: String, peer_public: Option<PublicKey>) {
        let me = self.my_name().unwrap_or_default();
        let sealed = match (&self.own_key, peer_public) {
            (Some(own_key), Some(peer_public)) => Some(
                own_key
                    .conversation_key(&me, &to, &peer_public)
                    .and_then(|key| key.seal(&me, &to, &text)),
            ),
            _ => None,
        };
        let (content, is_encrypted) = match sealed {
            None => (text.clone(), false),
            Some(Ok(content)) => (content, true),
            Some(Err(error)) => {
                self.fail(&format!(
                    "message to {to} not sent: it could not be encrypted ({error:?}); \
                     /msg --plain sends it unencrypted"
                ));
                return;
            }
        };
        self.client_message_count += 1;
        // The client's own id makes the Ack traceable in --json output.
        let message_id = format!("chat-{}-{}", std::process::id(), self.client_message_count);
        self.submit(
            Asked::Message {
                to: to.clone(),
                text,
                encrypted: is_encrypted,
            },
            ClientMessage::Message(SendMessage {
                dest_id: Some(to),
                group_id: None,
                content,
                message_id: Some(message_id),
                source_id: None,
                is_encrypted,
            }),
        );
    }

    fn group_message(&mut self, group_id: i64, text: String) {
        self.client_message_count += 1;
        let message_id = format!("chat-{}-{}", std::process::id(), self.client_message_count);
        self.submit(
            Asked::GroupMessage {
                group_id,
                label: self.group_label(group_id),
                text: text.clone(),
            },
            ClientMessage::Message(SendMessage {
                dest_id: None,
                group_id: Some(group_id),
                content: text,
                message_id: Some(message_id),
                source_id: None,
                is_encrypted: false,
            }),
        );
    }

    fn group_name(&self, group_id: i64) -> Option<&str> {
        self.groups.get(&group_id).map(|group| group.name.as_str())
    }

    /// `#team`, or `#5` while the name is unknown.
    fn group_label(&self, group_id: i64) -> String {
        render::group_label(group_id, self.group_name(group_id))
    }

    /// Queues a command for the server; it is sent once the link is ready.
    fn submit(&mut self, asked: Asked, request: ClientMessage) {
        assert!(self.pending.is_none(), "one command at a time");
        self.pending = Some(Pending {
            asked,
            request,
            id: None,
            deadline: Instant::now() + ANSWER_TIMEOUT,
        });
        self.send_pending_if_ready();
    }

    fn send_pending_if_ready(&mut self) {
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
    fn send_request(&mut self, purpose: Purpose, request: &ClientMessage) {
        let id = self.requests.start(purpose);
        self.send_frame(encode_request(request, Some(&id)));
    }

    fn expire_pending(&mut self) {
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

    fn fail_pending(&mut self, reason: &str) {
        if let Some(pending) = self.pending.take() {
            if let Some(id) = &pending.id {
                self.requests.forget(id);
            }
            self.fail(&format!("{}: {reason}", pending.asked.failure_prefix()));
        }
    }

    fn fail(&mut self, line: &str) {
        self.failures += 1;
        self.out.failure(line);
    }

    // ----- the connection ----------------------------------------------------

    fn maintain_link(&mut self) {
        match self.link {
            Link::Idle
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|pending| pending.id.is_none()) =>
            {
                self.link = Link::Down {
                    retry_at: Instant::now(),
                    attempts: 0,
                };
            }
            Link::Down { retry_at, attempts } if Instant::now() >= retry_at => {
                self.connect(attempts);
            }
            _ => {}
        }
    }

    fn connect(&mut self, attempts: u32) {
        match Connection::open(&self.options.url) {
            Ok(connection) => {
                if self.ever_connected && self.identity.is_some() {
                    self.out.notice("* reconnected");
                }
                self.ever_connected = true;
                self.link = Link::Up(connection);
                self.resume_if_logged_in();
            }
            Err(why) if !self.ever_connected => {
                self.out
                    .failure(&format!("cannot connect to {}: {why}", self.options.url));
                self.exit_code = Some(EXIT_NO_SERVER);
            }
            Err(why) => {
                let attempts = attempts + 1;
                if !self.options.interactive && attempts >= SCRIPT_RECONNECT_ATTEMPTS_MAX {
                    self.fail_pending("the server cannot be reached");
                    self.out.failure(&format!(
                        "giving up after {attempts} attempts to reconnect: {why}"
                    ));
                    self.exit_code = Some(EXIT_NO_SERVER);
                    return;
                }
                let delay = reconnect_delay(attempts);
                self.out.notice(&format!(
                    "* cannot reconnect ({why}); trying again in {:.1} s",
                    delay.as_secs_f64()
                ));
                self.link = Link::Down {
                    retry_at: Instant::now() + delay,
                    attempts,
                };
            }
        }
    }

    fn resume_if_logged_in(&mut self) {
        let Some(identity) = &self.identity else {
            return;
        };
        let resume = ClientMessage::Login(Login {
            username: identity.username.clone(),
            secret: None,
            session_id: Some(identity.session_id.clone()),
            receipts: true,
        });
        self.resuming = true;
        self.send_request(Purpose::Resume, &resume);
    }

    fn send_frame(&mut self, frame: String) {
        let Link::Up(connection) = &mut self.link else {
            return;
        };
        if let Err(why) = connection.send(frame) {
            self.on_link_lost(why);
        }
    }

    /// Closes the connection without treating it as a failure (after logout,
    /// or to log in as someone else).
    fn drop_link_quietly(&mut self) {
        if let Link::Up(connection) = std::mem::replace(&mut self.link, Link::Idle) {
            connection.close();
        }
        self.resuming = false;
        self.catchup = None;
        self.requests.clear();
        self.end_groups_fetch();
    }

    fn on_link_lost(&mut self, why: String) {
        self.resuming = false;
        self.catchup = None;
        // Their answers will not come; what waits for them asks again after
        // the session is resumed.
        self.requests.clear();
        self.end_groups_fetch();
        if self
            .pending
            .as_ref()
            .is_some_and(|pending| pending.id.is_some())
        {
            self.fail_pending("the connection was lost before the server answered");
        }
        if self.identity.is_some() {
            self.out.notice(&format!("* {why}; reconnecting"));
            self.link = Link::Down {
                retry_at: Instant::now() + reconnect_delay(0),
                attempts: 0,
            };
        } else {
            // Nothing to resume: connect again when a command needs it.
            self.out.notice(&format!("* {why}"));
            self.link = Link::Idle;
        }
    }

    fn on_received(&mut self, received: Received) {
        match received {
            Received::Idle => self.socket_quiet = true,
            Received::Frame(text) => {
                self.socket_quiet = false;
                self.on_frame(&text);
                // Saved before anything else happens, so the file is never
                // behind what the user has been shown.
                self.persist_highest_seen();
            }
            Received::Binary => self.out.notice("* ignoring a binary frame from the server"),
            Received::Closed(why) => self.on_link_lost(why),
        }
    }

    // ----- answers and events -----------------------------------------------

    fn on_frame(&mut self, text: &str) {
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
    fn on_command_answer(&mut self, message: ServerMessage, server_time: Option<i64>) {
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
    fn on_own_answer(&mut self, purpose: Purpose, message: ServerMessage, time: Option<i64>) {
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
            (Purpose::SyncPage, ServerMessage::Synced(synced)) => self.on_synced(synced),
            (Purpose::SyncPage, ServerMessage::Error(error)) => {
                self.catchup = None;
                let text = render::error_failure(None, &error);
                self.out
                    .notice(&format!("* could not fetch missed messages: {text}"));
            }
            (Purpose::GetKey(_), ServerMessage::Key(key)) => self.on_key(&key),
            (Purpose::GetKey(username), ServerMessage::Error(_)) => {
                self.peer_keys.record(&username, None);
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

    /// A frame that answers no request in flight: a push, or a reply whose
    /// request was given up (or that carries no request id).
    fn on_push(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::Message(delivered) => self.on_delivered(delivered),
            ServerMessage::Presence(presence) => self.out.event(&render::presence_line(&presence)),
            ServerMessage::ContactRequest(request) => {
                self.out.event(&render::contact_request_line(&request))
            }
            ServerMessage::GroupInfo(group) => {
                let previous = self.groups.insert(group.group_id, group.clone());
                self.out
                    .event(&render::group_info_event(previous.as_ref(), &group));
            }
            ServerMessage::Delivered(receipt) => {
                self.delivery.delivered(&receipt.username, receipt.through)
            }
            ServerMessage::Error(error) if error.ref_tag == Some(RECEIVED_TAG) => {
                self.on_received_refused(&error)
            }
            ServerMessage::Error(error) => self.out.notice(&render::error_failure(None, &error)),
            _ => {}
        }
    }

    /// The server answered `Received` with an error: say so once, and stop
    /// confirming.
    fn on_received_refused(&mut self, error: &ServerError) {
        if self.confirmations.refuse() {
            let text = render::error_failure(None, error);
            self.out.notice(&format!(
                "* the server does not take delivery confirmations ({text}); \
                 a resumed session may show messages again"
            ));
        }
    }

    /// Sends `Received` when a batch of shown messages awaits it.
    fn confirm_if_due(&mut self) {
        if let Some(through) = self.confirmations.due(Instant::now(), self.socket_quiet) {
            self.send_received(through);
        }
    }

    /// Sends `Received{through}` (when logged in on a live connection).
    fn send_received(&mut self, through: i64) {
        if !self.can_send_requests() {
            return;
        }
        // It gets no reply, so it carries no request id.
        self.send_frame(encode_request(&receipts::received_request(through), None));
        self.confirmations.sent(through, Instant::now());
    }

    /// A sent message is shown once the server has stored it.
    fn on_ack(&mut self, asked: Asked, message_id: i64, server_time: Option<i64>) {
        let (dest_id, group_id, content, encrypted) = match asked {
            Asked::Message {
                to,
                text,
                encrypted,
            } => (Some(to), None, text, encrypted),
            Asked::GroupMessage { group_id, text, .. } => (None, Some(group_id), text, false),
            _ => return,
        };
        self.seen.record(message_id);
        let time = server_time.unwrap_or_else(unix_now);
        if let Some(to) = &dest_id {
            self.delivery.sent(to, message_id, time);
        }
        let me = self.my_name().unwrap_or_default();
        // The text as typed is shown, encrypted or not (the sender knows it).
        let opened = if encrypted {
            Opened::Decrypted(content.clone())
        } else {
            Opened::AsSent
        };
        let sent = Delivered {
            message_id,
            source_id: me.clone(),
            dest_id,
            group_id,
            content,
            is_encrypted: encrypted,
            time,
        };
        let name = group_id.and_then(|group_id| self.group_name(group_id));
        let line = render::message_line(&sent, &opened, Some(&me), name, &Stamper::local_now());
        self.out.result(&line);
    }

    /// A GroupInfo answering `/group create` or `/group add`.
    fn on_group_answer(&mut self, asked: Asked, group: GroupInfo) {
        self.groups.insert(group.group_id, group.clone());
        match asked {
            Asked::CreateGroup { .. } => self.out.result(&render::group_created_line(&group)),
            Asked::AddGroupMembers { members, .. } => {
                self.out.result(&render::group_added_line(&members, &group))
            }
            _ => {}
        }
    }

    /// A Groups list answering `/groups` or `/group leave`.
    fn on_groups_answer(&mut self, asked: Asked, groups: &Groups) {
        let previous = self.replace_groups(groups);
        match asked {
            Asked::Groups => {
                for line in render::groups_lines(groups) {
                    self.out.result(&line);
                }
            }
            Asked::LeaveGroup { group_id, .. } => {
                let name = previous
                    .iter()
                    .find(|group| group.group_id == group_id)
                    .map(|group| group.name.as_str());
                self.out.result(&render::group_left_line(group_id, name));
            }
            _ => {}
        }
    }

    /// Takes `groups` as the full list of the user's groups; returns the
    /// previous one.
    fn replace_groups(&mut self, groups: &Groups) -> Vec<GroupInfo> {
        self.groups_loaded = true;
        let previous = std::mem::take(&mut self.groups).into_values().collect();
        self.groups = groups
            .data
            .iter()
            .map(|group| (group.group_id, group.clone()))
            .collect();
        previous
    }

    /// The answer to the client's own GetGroups after a login (late or not).
    fn on_groups_fetched(&mut self, groups: &Groups) {
        let was_loaded = self.groups_loaded;
        let previous = self.replace_groups(groups);
        if was_loaded {
            // After a reconnect: say what changed while away.
            for line in render::groups_changed_events(&previous, groups) {
                self.out.event(&line);
            }
        }
        self.end_groups_fetch();
    }

    fn on_groups_fetch_failed(&mut self, error: &ServerError) {
        // A server without groups says unknown_tag: nothing to report.
        if error.error_type != ErrorType::UnknownTag {
            let text = render::error_failure(None, error);
            self.out
                .notice(&format!("* could not fetch your groups: {text}"));
        }
        self.end_groups_fetch();
    }

    /// Fetches the user's groups (for their names) right after a login.
    /// Not with `--json`, whose stdout holds only the frames of what was
    /// asked and what was pushed; group messages then show as `#<id>` on
    /// stderr until a GroupInfo or `/groups` names the group.
    fn start_groups_fetch(&mut self) {
        if self.options.json {
            return;
        }
        self.groups_fetch = Some(GroupsFetch {
            deadline: Instant::now() + ANSWER_TIMEOUT,
            held: Vec::new(),
        });
        self.send_request(Purpose::GroupsFetch, &ClientMessage::GetGroups);
    }

    /// Stops waiting for the group list and shows what was held.
    fn end_groups_fetch(&mut self) {
        if let Some(fetch) = self.groups_fetch.take() {
            self.show_held(fetch.held);
        }
    }

    fn expire_groups_fetch(&mut self) {
        if self
            .groups_fetch
            .as_ref()
            .is_some_and(|fetch| Instant::now() >= fetch.deadline)
        {
            self.out
                .notice("* the server did not list your groups; groups show as #<id>");
            self.end_groups_fetch();
        }
    }

    fn show_held(&mut self, held: Vec<Delivered>) {
        for delivered in held {
            self.show_delivered(delivered);
        }
    }

    fn forget_groups(&mut self) {
        self.groups.clear();
        self.groups_loaded = false;
    }

    fn my_name(&self) -> Option<String> {
        self.identity
            .as_ref()
            .map(|identity| identity.username.clone())
    }

    fn on_delivered(&mut self, delivered: Delivered) {
        if let Some(fetch) = &mut self.groups_fetch {
            fetch.held.push(delivered);
            return;
        }
        self.show_delivered(delivered);
    }

    fn show_delivered(&mut self, delivered: Delivered) {
        if !self.seen.record(delivered.message_id) {
            return;
        }
        self.inbox.push_back(Inbound::Message(delivered));
        self.drive_inbox();
    }

    // ----- end-to-end encryption ---------------------------------------------

    /// Shows what waits in the inbox, in order, up to the first item that
    /// still needs a key (asked for by now).
    fn drive_inbox(&mut self) {
        while let Some(item) = self.inbox.pop_front() {
            if let Err(item) = self.show_inbound(item, Patience::Live) {
                self.inbox.push_front(item);
                return;
            }
        }
    }

    /// Shows everything in the inbox now; what still lacks a key is shown
    /// as undecryptable (the session ended, or the client is exiting).
    fn flush_inbox(&mut self) {
        while let Some(item) = self.inbox.pop_front() {
            let shown = self.show_inbound(item, Patience::None);
            debug_assert!(shown.is_ok(), "Patience::None never waits");
        }
    }

    /// Shows one received item, or gives it back when a key is awaited.
    fn show_inbound(&mut self, item: Inbound, patience: Patience) -> Result<(), Inbound> {
        match item {
            Inbound::Message(delivered) => {
                let Some(opened) = self.open(&delivered, patience) else {
                    return Err(Inbound::Message(delivered));
                };
                let me = self.my_name();
                let name = delivered
                    .group_id
                    .and_then(|group_id| self.group_name(group_id));
                let line = render::message_line(
                    &delivered,
                    &opened,
                    me.as_deref(),
                    name,
                    &Stamper::local_now(),
                );
                self.out.event(&line);
                if me
                    .as_deref()
                    .is_some_and(|me| receipts::counts_as_received(&delivered, me))
                {
                    self.confirmations
                        .shown(delivered.message_id, Instant::now());
                }
            }
            Inbound::History(history) => {
                let patience = match patience {
                    Patience::None => Patience::None,
                    _ => Patience::Page,
                };
                let mut opened = Vec::with_capacity(history.data.len());
                for delivered in &history.data {
                    // Every message is tried, so all missing keys are asked
                    // for at once.
                    opened.push(self.open(delivered, patience));
                }
                let Some(opened) = opened.into_iter().collect::<Option<Vec<Opened>>>() else {
                    return Err(Inbound::History(history));
                };
                let group_id = render::group_chat_id(&history.chat_id);
                let name = group_id.and_then(|group_id| self.group_name(group_id));
                let mut lines =
                    render::history_lines(&history, &opened, name, &Stamper::local_now());
                if let (None, Some(me)) = (group_id, self.my_name()) {
                    self.delivery.mark_history(&history, &me, &mut lines);
                }
                for line in lines {
                    self.out.result(&line);
                }
            }
        }
        Ok(())
    }

    /// Decrypts a message for display; `None` when a key was asked for and
    /// the message must wait for it.
    fn open(&mut self, delivered: &Delivered, patience: Patience) -> Option<Opened> {
        if !delivered.is_encrypted {
            return Some(Opened::AsSent);
        }
        // Without a key of our own (end-to-end encryption off) nothing opens.
        let (Some(me), Some(own_public)) = (
            self.my_name(),
            self.own_key.as_ref().map(|own_key| *own_key.public()),
        ) else {
            return Some(Opened::Undecryptable);
        };
        // Group messages are never encrypted by this client; one that
        // claims to be cannot be opened.
        let (None, Some(dest)) = (delivered.group_id, delivered.dest_id.as_deref()) else {
            return Some(Opened::Undecryptable);
        };
        let peer = if delivered.source_id == me {
            dest
        } else if dest == me {
            delivered.source_id.as_str()
        } else {
            return Some(Opened::Undecryptable);
        };
        let peer_public = if peer == me {
            own_public
        } else {
            match self.peer_keys.get(peer) {
                Some(PeerKey::Known(public)) => public,
                Some(PeerKey::Missing) => return self.ask_again_or_give_up(peer, patience),
                None if patience == Patience::None => return Some(Opened::Undecryptable),
                None => {
                    self.request_key(peer);
                    return None;
                }
            }
        };
        let own_key = self.own_key.as_ref()?;
        let opened = own_key
            .conversation_key(&me, peer, &peer_public)
            .and_then(|key| key.open(&delivered.source_id, dest, &delivered.content));
        match opened {
            Ok(text) => {
                if patience == Patience::Live {
                    self.refreshed.remove(peer);
                }
                Some(Opened::Decrypted(text))
            }
            Err(_) if peer != me => self.ask_again_or_give_up(peer, patience),
            Err(_) => Some(Opened::Undecryptable),
        }
    }

    /// A message from `peer` did not decrypt with the key known for them:
    /// ask the server for their key once (it may have changed), then give up.
    fn ask_again_or_give_up(&mut self, peer: &str, patience: Patience) -> Option<Opened> {
        if patience == Patience::None || !self.refreshed.insert(peer.to_string()) {
            return Some(Opened::Undecryptable);
        }
        self.peer_keys.forget(peer);
        self.request_key(peer);
        None
    }

    /// True when a request can be sent now and will be answered.
    fn can_send_requests(&self) -> bool {
        matches!(self.link, Link::Up(_)) && !self.resuming && self.identity.is_some()
    }

    /// Sends GetKey for `username` unless one is already on its way. When
    /// it cannot be sent now, what waits for it asks again after the next
    /// login (`on_success_login` drives the inbox).
    fn request_key(&mut self, username: &str) {
        if self.requests.is_getting_key(username) || !self.can_send_requests() {
            return;
        }
        let get_key = ClientMessage::GetKey(UserRef {
            username: username.to_string(),
        });
        self.send_request(Purpose::GetKey(username.to_string()), &get_key);
    }

    /// After a login: loads (or creates) the user's key pair and asks for
    /// the server's copy of the public key, to publish it if it differs.
    fn set_up_own_key(&mut self, username: &str) {
        self.key_published = false;
        self.own_key = None;
        let Some(session_file) = &self.options.session_file else {
            self.out.notice(
                "* end-to-end encryption is off: there is no place to keep your key \
                 (give --session-file PATH)",
            );
            return;
        };
        let path = keys::key_path(session_file, username);
        match keys::load_or_create(&path, username) {
            Ok(pair) => self.own_key = Some(pair),
            Err(error) => {
                self.out.notice(&format!(
                    "* end-to-end encryption is off: cannot use the key file {}: {error}",
                    path.display()
                ));
                return;
            }
        }
        self.request_key(username);
    }

    /// A Key answering the client's own GetKey.
    fn on_key(&mut self, key: &Key) {
        self.peer_keys
            .record(&key.username, key.public_key.as_deref());
        if self.logged_in_as(&key.username) {
            self.publish_own_key_unless(key.public_key.as_deref());
        }
        self.drive_inbox();
    }

    /// The recipient's Key, looked up by `/msg`: the message goes now,
    /// sealed for the key if there is one.
    fn on_recipient_key(&mut self, to: String, text: String, key: &Key) {
        let recorded = self
            .peer_keys
            .record(&key.username, key.public_key.as_deref());
        let public = match recorded {
            PeerKey::Known(public) => Some(public),
            PeerKey::Missing => None,
        };
        self.send_message(to, text, public);
        self.drive_inbox();
    }

    /// Publishes the user's key when the server's copy (`published`)
    /// differs, once per login.
    fn publish_own_key_unless(&mut self, published: Option<&str>) {
        let Some(own_key) = &self.own_key else {
            return;
        };
        let public_key = own_key.public_base64();
        if published == Some(public_key.as_str()) || self.key_published {
            return;
        }
        self.key_published = true;
        let publish = ClientMessage::PublishKey(PublishKey { public_key });
        self.send_request(Purpose::PublishKey, &publish);
    }

    /// A SuccessLogin answering `/login` or the client's own resume.
    fn on_success_login(&mut self, success: SuccessLogin, server_time: Option<i64>, resumed: bool) {
        self.resuming = false;
        let first_login = self.first_login_time.is_none();
        self.first_login_time = self.first_login_time.or(server_time).or(Some(unix_now()));
        if self.seen_owner.as_deref() != Some(success.username.as_str()) {
            // Another user's high-water mark says nothing about this one's.
            self.seen = SeenIds::default();
            self.saved_highest = 0;
            self.confirmations = Confirmations::default();
            self.saved_confirmed = 0;
            self.delivery = DeliveryStatus::default();
            self.seen_owner = Some(success.username.clone());
        }
        self.confirmations.logged_in(Instant::now());
        if self.my_name().as_deref() != Some(success.username.as_str()) {
            self.forget_groups();
            self.peer_keys.clear();
            self.refreshed.clear();
        }
        let session_id = success.session_id.or_else(|| {
            self.identity
                .as_ref()
                .map(|identity| identity.session_id.clone())
        });
        if let Some(session_id) = session_id {
            self.identity = Some(Identity {
                username: success.username.clone(),
                session_id,
            });
            self.save_session();
        }
        if resumed {
            self.out
                .notice(&format!("* resumed the session of {}", success.username));
        } else {
            self.out
                .result(&format!("logged in as {}", success.username));
        }
        self.set_up_own_key(&success.username);
        self.start_groups_fetch();
        if resumed {
            self.start_catchup(!first_login);
        }
        // What waited for a key when the connection dropped asks again.
        self.drive_inbox();
    }

    fn on_resume_failed(&mut self, reason: &str) {
        self.resuming = false;
        self.flush_inbox();
        self.own_key = None;
        self.identity = None;
        self.forget_groups();
        self.forget_session();
        self.out.notice(&format!("* {reason}"));
    }

    fn on_logged_out(&mut self) {
        let name = self.my_name().unwrap_or_default();
        self.flush_inbox();
        self.identity = None;
        self.own_key = None;
        self.forget_groups();
        self.forget_session();
        self.out.result(&format!("logged out {name}"));
        // The server closes this connection now; a later command opens a
        // fresh one.
        self.drop_link_quietly();
    }

    /// A Directory answering `/friends`, `/add` or `/remove`.
    fn on_directory(&mut self, asked: Asked, directory: &Directory) {
        let lines = match asked {
            Asked::Add { username } => vec![render::added_line(&username, directory)],
            Asked::Remove { username } => vec![format!("removed {username}")],
            _ => render::directory_lines(directory, &Stamper::local_now()),
        };
        for line in lines {
            self.out.result(&line);
        }
    }

    // ----- catching up -------------------------------------------------------

    /// After a resume, fetches what was missed since the highest id seen.
    /// With nothing seen yet, only a reconnect has anything to catch up on:
    /// what arrived since this run first logged in, not the whole history.
    fn start_catchup(&mut self, reconnected: bool) {
        let since = self.seen.highest();
        let floor_time = match (since, reconnected) {
            (0, true) => self.first_login_time,
            (0, false) => return,
            _ => None,
        };
        self.catchup = Some(Catchup { floor_time });
        self.request_sync_page(since);
    }

    fn request_sync_page(&mut self, since: i64) {
        let page = ClientMessage::Sync(Sync {
            since,
            limit: Some(SYNC_PAGE_LIMIT),
        });
        self.send_request(Purpose::SyncPage, &page);
    }

    fn on_synced(&mut self, synced: Synced) {
        let Some(catchup) = &self.catchup else {
            return;
        };
        let floor_time = catchup.floor_time;
        let mut page_top = self.seen.highest();
        for delivered in synced.data {
            page_top = page_top.max(delivered.message_id);
            if floor_time.is_some_and(|floor| delivered.time < floor) {
                self.seen.record(delivered.message_id);
            } else {
                self.on_delivered(delivered);
            }
        }
        if synced.has_more {
            self.request_sync_page(page_top);
        } else {
            self.catchup = None;
        }
    }

    // ----- the session file --------------------------------------------------

    fn save_session(&mut self) {
        let (Some(path), Some(identity)) = (&self.options.session_file, &self.identity) else {
            return;
        };
        let saved = SavedSession {
            url: self.options.url.clone(),
            username: identity.username.clone(),
            session_id: identity.session_id.clone(),
            last_message_id: self.seen.highest(),
            confirmed_through: self.confirmations.shown_through(),
            delivered: self.delivery.to_saved(),
        };
        match session::save(path, &saved) {
            Ok(()) => {
                self.saved_highest = saved.last_message_id;
                self.saved_confirmed = saved.confirmed_through;
            }
            Err(error) => self.out.notice(&format!(
                "* could not save the session to {}: {error}",
                path.display()
            )),
        }
    }

    /// Saves the session file when what it keeps has changed: the highest
    /// id seen, the highest shown (confirmed), the Delivered receipts.
    fn persist_highest_seen(&mut self) {
        if self.identity.is_none() || self.resuming {
            return;
        }
        let delivery_changed = self.delivery.take_dirty();
        if delivery_changed
            || self.seen.highest() > self.saved_highest
            || self.confirmations.shown_through() > self.saved_confirmed
        {
            self.save_session();
        }
    }

    fn forget_session(&mut self) {
        self.saved_highest = 0;
        self.saved_confirmed = 0;
        if let Some(path) = &self.options.session_file {
            if let Err(error) = session::forget(path) {
                self.out.notice(&format!(
                    "* could not remove the session file {}: {error}",
                    path.display()
                ));
            }
        }
    }
}

/// Key traffic is the client's own business (the user never asks for a key
/// directly), so `--json` does not print it: stdout keeps only the frames of
/// what was asked and what was pushed.
fn is_key_traffic(message: &ServerMessage) -> bool {
    match message {
        ServerMessage::Key(_) => true,
        ServerMessage::Error(error) => matches!(error.ref_tag, Some(9) | Some(10)),
        _ => false,
    }
}

/// The `time` of a server frame (every server frame carries one); the
/// protocol types do not keep it for answers, so it is read separately.
fn frame_time(text: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Timed {
        time: Option<i64>,
    }
    serde_json::from_str::<Timed>(text).ok()?.time
}

/// A frame on one line for `--json` (the server sends compact JSON already;
/// this only matters if a frame holds a raw line break between fields).
fn one_line(text: &str) -> String {
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
    fn reconnect_delay_doubles_up_to_the_cap() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(250));
        assert_eq!(reconnect_delay(1), Duration::from_millis(500));
        assert_eq!(reconnect_delay(3), Duration::from_secs(2));
        assert_eq!(reconnect_delay(10), RECONNECT_DELAY_MAX);
        assert_eq!(reconnect_delay(u32::MAX), RECONNECT_DELAY_MAX);
    }

    #[test]
    fn frame_time_and_one_line() {
        assert_eq!(
            frame_time(r#"{"tag":24,"time":17,"message_id":3}"#),
            Some(17)
        );
        assert_eq!(frame_time(r#"{"tag":24}"#), None);
        assert_eq!(
            one_line("{\"tag\":\n32,\"time\":1}"),
            r#"{"tag":32,"time":1}"#
        );
    }
}
