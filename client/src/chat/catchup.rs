//! Catching up and remembering: `Sync` pages after a resume, `Received`
//! confirmations of what was shown, and the session file that keeps the
//! session id, the highest id seen and the Delivered receipts across runs.
//!
//! Receipts (see [`crate::chat::receipts`]): every login asks for them; what
//! has been shown is confirmed with `Received` once per batch, and
//! `Delivered` pushes are recorded quietly for `/status` and `/history`.

use std::time::Instant;

use protocol::client::Sync;
use protocol::server::{Error as ServerError, Synced};
use protocol::{encode_request, ClientMessage};

use crate::chat::account::*;
use crate::chat::app::*;
use crate::chat::receipts::{self, Confirmations, DeliveryStatus};
use crate::chat::render::{self};
use crate::chat::requests::Purpose;
use crate::chat::seen::SeenIds;
use crate::chat::session::{self, SavedSession};

/// Messages asked for per `Sync` page (the protocol allows 1–1000).
pub(super) const SYNC_PAGE_LIMIT: i64 = 500;

/// How far this client has come, and how much of it the session file
/// knows: the ids seen, what was shown and confirmed (receipts), and how far
/// the user's own messages are delivered.
#[derive(Default)]
pub(super) struct Progress {
    /// Message ids already shown (or passed over), and the highest.
    pub(super) seen: SeenIds,
    /// The user whose message ids `seen` holds.
    pub(super) owner: Option<String>,
    /// The highest id written to the session file.
    pub(super) saved_highest: i64,
    /// What this device has shown and confirmed.
    pub(super) confirmations: Confirmations,
    /// The `confirmed_through` written to the session file.
    pub(super) saved_confirmed: i64,
    /// How far the user's messages are delivered (Delivered receipts).
    pub(super) delivery: DeliveryStatus,
}

pub(super) struct Catchup {
    /// Messages older than this server time are not "missed" (they predate
    /// this run and nothing was seen to start from); `None` shows them all.
    pub(super) floor_time: Option<i64>,
}

impl App {
    /// Picks up a saved session for this server, to be resumed on connect.
    pub(super) fn load_saved_session(&mut self) {
        let Some(path) = &self.options.session_file else {
            return;
        };
        match session::load(path) {
            Ok(Some(saved)) if saved.url == self.options.url => {
                self.progress.seen =
                    SeenIds::resuming(saved.last_message_id, saved.confirmed_through);
                self.progress.saved_highest = saved.last_message_id;
                self.progress.confirmations = Confirmations::starting_at(saved.confirmed_through);
                self.progress.saved_confirmed = saved.confirmed_through;
                self.progress.delivery = DeliveryStatus::from_saved(&saved.delivered);
                self.progress.owner = Some(saved.username.clone());
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

    /// The server answered `Received` with an error: say so once, and stop
    /// confirming.
    pub(super) fn on_received_refused(&mut self, error: &ServerError) {
        if self.progress.confirmations.refuse() {
            let text = render::error_failure(None, error);
            self.out.notice(&format!(
                "* the server does not take delivery confirmations ({text}); \
                 a resumed session may show messages again"
            ));
        }
    }

    /// Sends `Received` when a batch of shown messages awaits it.
    pub(super) fn confirm_if_due(&mut self) {
        if let Some(through) = self
            .progress
            .confirmations
            .due(Instant::now(), self.socket_quiet)
        {
            self.send_received(through);
        }
    }

    /// Sends `Received{through}` (when logged in on a live connection).
    pub(super) fn send_received(&mut self, through: i64) {
        if !self.can_send_requests() {
            return;
        }
        // It gets no reply, so it carries no request id.
        self.send_frame(encode_request(&receipts::received_request(through), None));
        self.progress.confirmations.sent(through, Instant::now());
    }

    // ----- catching up -------------------------------------------------------

    /// After a resume, fetches what was missed since the highest id seen.
    /// With nothing seen yet, only a reconnect has anything to catch up on:
    /// what arrived since this run first logged in, not the whole history.
    pub(super) fn start_catchup(&mut self, reconnected: bool) {
        let since = self.progress.seen.highest();
        let floor_time = match (since, reconnected) {
            (0, true) => self.first_login_time,
            (0, false) => return,
            _ => None,
        };
        self.catchup = Some(Catchup { floor_time });
        self.request_sync_page(since);
    }

    pub(super) fn request_sync_page(&mut self, since: i64) {
        let page = ClientMessage::Sync(Sync {
            since,
            limit: Some(SYNC_PAGE_LIMIT),
        });
        self.send_request(Purpose::SyncPage, &page);
    }

    pub(super) fn on_synced(&mut self, synced: Synced) {
        let Some(catchup) = &self.catchup else {
            return;
        };
        let floor_time = catchup.floor_time;
        let mut page_top = self.progress.seen.highest();
        for delivered in synced.data {
            page_top = page_top.max(delivered.message_id);
            if floor_time.is_some_and(|floor| delivered.time < floor) {
                self.progress.seen.record(delivered.message_id);
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

    pub(super) fn save_session(&mut self) {
        let (Some(path), Some(identity)) = (&self.options.session_file, &self.identity) else {
            return;
        };
        let saved = SavedSession {
            url: self.options.url.clone(),
            username: identity.username.clone(),
            session_id: identity.session_id.clone(),
            last_message_id: self.progress.seen.highest(),
            confirmed_through: self.progress.confirmations.shown_through(),
            delivered: self.progress.delivery.to_saved(),
        };
        match session::save(path, &saved) {
            Ok(()) => {
                self.progress.saved_highest = saved.last_message_id;
                self.progress.saved_confirmed = saved.confirmed_through;
            }
            Err(error) => self.out.notice(&format!(
                "* could not save the session to {}: {error}",
                path.display()
            )),
        }
    }

    /// Saves the session file when what it keeps has changed: the highest
    /// id seen, the highest shown (confirmed), the Delivered receipts.
    pub(super) fn persist_highest_seen(&mut self) {
        if self.identity.is_none() || self.resuming {
            return;
        }
        let delivery_changed = self.progress.delivery.take_dirty();
        if delivery_changed
            || self.progress.seen.highest() > self.progress.saved_highest
            || self.progress.confirmations.shown_through() > self.progress.saved_confirmed
        {
            self.save_session();
        }
    }

    pub(super) fn forget_session(&mut self) {
        self.progress.saved_highest = 0;
        self.progress.saved_confirmed = 0;
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
