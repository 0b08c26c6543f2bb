//! The link to the server: connecting, reconnecting after a drop with a
//! doubling pause, resuming the saved session on every new connection, and
//! what a lost connection undoes (requests in flight, a catch-up, the wait
//! for the group list).

use std::time::{Duration, Instant};

use protocol::client::Login;
use protocol::ClientMessage;

use crate::chat::app::*;
use crate::chat::connection::{Connection, Received};
use crate::chat::requests::Purpose;

/// The first pause before reconnecting after a dropped connection; it doubles
/// with each failed attempt up to [`RECONNECT_DELAY_MAX`].
pub(super) const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(250);
/// The longest pause between reconnect attempts.
pub(super) const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(30);
/// A script gives up after this many failed reconnects in a row (about 30 s
/// of trying with the delays above); a person at a terminal never does.
pub(super) const SCRIPT_RECONNECT_ATTEMPTS_MAX: u32 = 8;

/// The connection and what to do when there is none.
// There is exactly one `Link`, so the size of its largest variant costs
// nothing; boxing the connection would only add an indirection.
#[allow(clippy::large_enum_variant)]
pub(super) enum Link {
    Up(Connection),
    /// Disconnected; try again at `retry_at`.
    Down {
        retry_at: Instant,
        attempts: u32,
    },
    /// Disconnected on purpose (after logout); connect when a command needs it.
    Idle,
}

/// The pause before reconnect attempt number `attempts` (0-based).
pub(super) fn reconnect_delay(attempts: u32) -> Duration {
    RECONNECT_DELAY_FIRST
        .saturating_mul(1 << attempts.min(16))
        .min(RECONNECT_DELAY_MAX)
}

impl App {
    // ----- the connection ----------------------------------------------------

    pub(super) fn maintain_link(&mut self) {
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

    pub(super) fn connect(&mut self, attempts: u32) {
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

    pub(super) fn resume_if_logged_in(&mut self) {
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

    pub(super) fn send_frame(&mut self, frame: String) {
        let Link::Up(connection) = &mut self.link else {
            return;
        };
        if let Err(why) = connection.send(frame) {
            self.on_link_lost(why);
        }
    }

    /// Closes the connection without treating it as a failure (after logout,
    /// or to log in as someone else).
    pub(super) fn drop_link_quietly(&mut self) {
        if let Link::Up(connection) = std::mem::replace(&mut self.link, Link::Idle) {
            connection.close();
        }
        self.resuming = false;
        self.catchup = None;
        self.requests.clear();
        self.end_groups_fetch();
    }

    pub(super) fn on_link_lost(&mut self, why: String) {
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

    pub(super) fn on_received(&mut self, received: Received) {
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
}
