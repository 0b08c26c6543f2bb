//! Who the client is: `/login` and `/register` (and the password asked
//! for on a terminal), `/logout`, `/whoami`, `/status`, and what a login or
//! a failed resume changes.

use std::time::Instant;

use crate::chat::editor::Vocabulary;

use protocol::client::{Login, Logout};
use protocol::server::{Directory, SuccessLogin};
use protocol::ClientMessage;

use crate::chat::app::*;
use crate::chat::clock::{unix_now, Stamper};
use crate::chat::command::Command;
use crate::chat::receipts::{Confirmations, DeliveryStatus};
use crate::chat::render::{self, Asked};
use crate::chat::seen::SeenIds;

/// The logged-in (or about-to-be-resumed) identity.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub(super) username: String,
    pub(super) session_id: String,
}

impl App {
    pub(super) fn on_secret(&mut self, command: Command, secret: String) {
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
    pub(super) fn ask_secret(&mut self, command: Command) {
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
        self.input.request_secret("password: ");
    }

    pub(super) fn whoami(&mut self) {
        let line = match &self.identity {
            Some(identity) if !self.resuming => {
                format!("logged in as {} on {}", identity.username, self.options.url)
            }
            _ => format!("not logged in (server {})", self.options.url),
        };
        self.out.result(&line);
    }

    /// `/status`: who you are, then how far your messages are delivered.
    pub(super) fn status(&mut self, only: Option<&str>) {
        self.whoami();
        for line in self
            .progress
            .delivery
            .status_lines(only, &Stamper::local_now())
        {
            self.out.result(&line);
        }
    }

    /// `/login USER` with no secret: nothing to ask if already logged in as
    /// USER (for example by a resumed session).
    pub(super) fn start_login_without_secret(&mut self, command: Command) {
        if let Command::Login { username, .. } = &command {
            if self.logged_in_as(username) {
                let line = format!("already logged in as {username}");
                self.out.result(&line);
                return;
            }
        }
        self.ask_secret(command);
    }

    pub(super) fn logged_in_as(&self, username: &str) -> bool {
        matches!(&self.identity, Some(identity) if identity.username == username)
    }

    pub(super) fn login(&mut self, username: String, secret: String) {
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

    pub(super) fn logout(&mut self) {
        let Some(identity) = &self.identity else {
            self.fail("logout failed: you are not logged in");
            return;
        };
        let username = Some(identity.username.clone());
        self.submit(Asked::Logout, ClientMessage::Logout(Logout { username }));
    }

    pub(super) fn my_name(&self) -> Option<String> {
        self.identity
            .as_ref()
            .map(|identity| identity.username.clone())
    }

    /// A SuccessLogin answering `/login` or the client's own resume.
    pub(super) fn on_success_login(
        &mut self,
        success: SuccessLogin,
        server_time: Option<i64>,
        resumed: bool,
    ) {
        self.resuming = false;
        let first_login = self.first_login_time.is_none();
        self.first_login_time = self.first_login_time.or(server_time).or(Some(unix_now()));
        if self.progress.owner.as_deref() != Some(success.username.as_str()) {
            // Another user's high-water mark says nothing about this one's.
            self.progress.seen = SeenIds::default();
            self.progress.saved_highest = 0;
            self.progress.confirmations = Confirmations::default();
            self.progress.saved_confirmed = 0;
            self.progress.delivery = DeliveryStatus::default();
            self.progress.owner = Some(success.username.clone());
        }
        self.progress.confirmations.logged_in(Instant::now());
        if self.my_name().as_deref() != Some(success.username.as_str()) {
            self.learn(Vocabulary::clear);
            self.forget_groups();
            self.keys.peers.clear();
            self.keys.refreshed.clear();
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
        self.start_contacts_fetch();
        if resumed {
            self.start_catchup(!first_login);
        }
        // What waited for a key when the connection dropped asks again.
        self.drive_inbox();
    }

    pub(super) fn on_resume_failed(&mut self, reason: &str) {
        self.resuming = false;
        self.flush_inbox();
        self.keys.own = None;
        self.identity = None;
        self.forget_groups();
        self.forget_session();
        self.out.notice(&format!("* {reason}"));
    }

    pub(super) fn on_logged_out(&mut self) {
        let name = self.my_name().unwrap_or_default();
        self.flush_inbox();
        self.identity = None;
        self.keys.own = None;
        self.forget_groups();
        self.forget_session();
        self.out.result(&format!("logged out {name}"));
        // The server closes this connection now; a later command opens a
        // fresh one.
        self.drop_link_quietly();
    }

    /// A Directory answering `/friends`, `/add` or `/remove`.
    pub(super) fn on_directory(&mut self, asked: Asked, directory: &Directory) {
        self.learn_contacts(directory);
        let lines = match asked {
            Asked::Add { username } => vec![render::added_line(&username, directory)],
            Asked::Remove { username } => vec![format!("removed {username}")],
            _ => render::directory_lines(directory, &Stamper::local_now()),
        };
        for line in lines {
            self.out.result(&line);
        }
    }
}
