//! What arrives is shown in order: delivered messages and history pages go
//! through the inbox, where an encrypted one waits for its sender's key
//! before it (and everything after it) is shown; a sent message is shown
//! once the server has stored it.
//!
//! End-to-end encryption (see [`crate::chat::e2e`]): messages and history
//! pages that need a key not yet known wait in the inbox, in order, until
//! the key arrives; the next input line is read only once the inbox is
//! empty, so output stays in order.

use std::time::Instant;

use protocol::server::{Delivered, History};
use protocol::{ClientTag, ServerMessage};

use crate::chat::app::*;
use crate::chat::clock::{unix_now, Stamper};
use crate::chat::receipts::{self};
use crate::chat::render::{self, Asked, Opened};

/// Something received that is shown once the keys it needs are known.
pub(super) enum Inbound {
    /// A delivered message (live, from the offline queue, or caught up).
    Message(Delivered),
    /// The answer to `/history`.
    History(History),
}

/// Whether opening a message may wait for a key from the server.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Patience {
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

impl App {
    /// A sent message is shown once the server has stored it.
    pub(super) fn on_ack(&mut self, asked: Asked, message_id: i64, server_time: Option<i64>) {
        let (dest_id, group_id, content, encrypted) = match asked {
            Asked::Message {
                to,
                text,
                encrypted,
            } => (Some(to), None, text, encrypted),
            Asked::GroupMessage { group_id, text, .. } => (None, Some(group_id), text, false),
            _ => return,
        };
        self.progress.seen.record(message_id);
        let time = server_time.unwrap_or_else(unix_now);
        if let Some(to) = &dest_id {
            self.progress.delivery.sent(to, message_id, time);
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

    pub(super) fn on_delivered(&mut self, delivered: Delivered) {
        if let Some(fetch) = &mut self.groups.fetch {
            fetch.held.push(delivered);
            return;
        }
        self.show_delivered(delivered);
    }

    pub(super) fn show_delivered(&mut self, delivered: Delivered) {
        if !self.progress.seen.record(delivered.message_id) {
            return;
        }
        self.inbox.push_back(Inbound::Message(delivered));
        self.drive_inbox();
    }

    // ----- end-to-end encryption ---------------------------------------------

    /// Shows what waits in the inbox, in order, up to the first item that
    /// still needs a key (asked for by now).
    pub(super) fn drive_inbox(&mut self) {
        while let Some(item) = self.inbox.pop_front() {
            if let Err(item) = self.show_inbound(item, Patience::Live) {
                self.inbox.push_front(item);
                return;
            }
        }
    }

    /// Shows everything in the inbox now; what still lacks a key is shown
    /// as undecryptable (the session ended, or the client is exiting).
    pub(super) fn flush_inbox(&mut self) {
        while let Some(item) = self.inbox.pop_front() {
            let shown = self.show_inbound(item, Patience::None);
            debug_assert!(shown.is_ok(), "Patience::None never waits");
        }
    }

    /// Shows one received item, or gives it back when a key is awaited.
    pub(super) fn show_inbound(
        &mut self,
        item: Inbound,
        patience: Patience,
    ) -> Result<(), Inbound> {
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
                let sender = delivered.source_id.as_str();
                self.learn(|vocabulary| vocabulary.learn_names([sender]));
                if me
                    .as_deref()
                    .is_some_and(|me| receipts::counts_as_received(&delivered, me))
                {
                    self.progress
                        .confirmations
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
                    self.progress
                        .delivery
                        .mark_history(&history, &me, &mut lines);
                }
                for line in lines {
                    self.out.result(&line);
                }
            }
        }
        Ok(())
    }
}

impl App {
    /// A frame that answers no request in flight: a push, or a reply whose
    /// request was given up (or that carries no request id).
    pub(super) fn on_push(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::Message(delivered) => self.on_delivered(delivered),
            ServerMessage::Presence(presence) => {
                self.learn(|vocabulary| vocabulary.learn_names([presence.username.as_str()]));
                self.out.event(&render::presence_line(&presence))
            }
            ServerMessage::ContactRequest(request) => {
                self.learn(|vocabulary| vocabulary.learn_names([request.username.as_str()]));
                self.out.event(&render::contact_request_line(&request))
            }
            ServerMessage::GroupInfo(group) => {
                let previous = self.remember_group(&group);
                self.out
                    .event(&render::group_info_event(previous.as_ref(), &group));
            }
            ServerMessage::Delivered(receipt) => self
                .progress
                .delivery
                .delivered(&receipt.username, receipt.through),
            ServerMessage::Error(error) if error.ref_tag == Some(ClientTag::Received as i64) => {
                self.on_received_refused(&error)
            }
            ServerMessage::Error(error) => self.out.notice(&render::error_failure(None, &error)),
            _ => {}
        }
    }
}
