//! Receipts (protocol 1.1), both ways, kept apart from the loop in `app`.
//!
//! # What this device confirms ([`Confirmations`])
//! `chat` logs in with `receipts: true`, so the server counts a message as
//! on this device only once `Received{through}` says so, and a resumed
//! session is pushed again everything addressed to the user past its last
//! confirmation. The rules here:
//! - Only what was *shown* is confirmed (printed, or written as a frame with
//!   `--json`): [`Confirmations::shown`] is called after the line is out,
//!   and only for messages addressed to the user ([`counts_as_received`]).
//!   Messages are pushed and shown in increasing id order (the inbox keeps
//!   arrival order), so "the highest id shown" covers everything below it.
//! - One `Received` per batch, not one per message: it is sent once the
//!   socket goes quiet (a read finds nothing for one poll interval), or
//!   after [`CONFIRM_INTERVAL`] while messages keep streaming in; and never
//!   two within [`CONFIRM_INTERVAL`] on one connection (at most five a
//!   second, however the messages trickle in), except the last one when
//!   `chat` exits.
//! - The highest id shown is saved in the session file (as
//!   `confirmed_through`) right after it is shown, before the `Received`
//!   goes out, and it is sent again after every login on a new connection
//!   (the last one may have been lost with its connection). On the next run,
//!   messages the server pushes again at or below it are duplicates and are
//!   dropped ([`crate::chat::seen::SeenIds::resuming`]). A process killed
//!   between printing a line and saving the file may therefore show that
//!   message again after a restart; it never loses one.
//!
//! # What others confirmed of ours ([`DeliveryStatus`])
//! `Delivered{username, through}` pushes say how far the user's 1:1
//! messages to `username` are on one of their devices. They are recorded
//! quietly (no line per receipt), saved in the session file, and shown on
//! request: `/status` lists per person how far your messages are delivered,
//! and `/history USER` marks your delivered messages with [`DELIVERED_MARK`].
//! Group messages get no receipts (the protocol has none for them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::client::Received;
use protocol::server::{Delivered, History};
use protocol::ClientMessage;

use crate::chat::clock::Stamper;
use crate::chat::render::printable;

/// While messages keep arriving, confirm at least this often; and no more
/// often than this.
pub const CONFIRM_INTERVAL: Duration = Duration::from_millis(200);
/// Appended to a line of yours that is known to be delivered.
pub const DELIVERED_MARK: &str = "✓✓";
/// Undelivered messages remembered per recipient (their ids and times, for
/// `/status`); past this the oldest are forgotten.
const WAITING_PER_RECIPIENT_MAX: usize = 10_000;

/// True when a shown message counts for `Received`: everything pushed to
/// the user does (1:1 to them, groups they are in), but not a 1:1 message
/// they sent to someone else (a `Sync` catch-up shows those too).
pub fn counts_as_received(message: &Delivered, me: &str) -> bool {
    message.group_id.is_some() || message.dest_id.as_deref() == Some(me)
}

/// The `Received{through}` request.
pub fn received_request(through: i64) -> ClientMessage {
    ClientMessage::Received(Received { through })
}

/// What this device has shown, and what it has told the server of it.
#[derive(Debug, Default)]
pub struct Confirmations {
    /// The highest id of a message addressed to the user that was shown
    /// (in this run or, as saved, an earlier one).
    shown_through: i64,
    /// The highest `through` sent on the current connection (0: none yet).
    sent_through: i64,
    /// Since when something shown waits to be confirmed.
    waiting_since: Option<Instant>,
    /// When the last `Received` went out on the current connection.
    last_sent_at: Option<Instant>,
    /// The server refused `Received`; stop sending it.
    refused: bool,
}

impl Confirmations {
    /// Starts from the id saved in the session file (0 for none).
    pub fn starting_at(saved: i64) -> Self {
        Confirmations {
            shown_through: saved,
            ..Confirmations::default()
        }
    }

    /// The highest id shown; saved in the session file.
    pub fn shown_through(&self) -> i64 {
        self.shown_through
    }

    /// A message with this id (one that [`counts_as_received`]) was shown.
    pub fn shown(&mut self, message_id: i64, now: Instant) {
        if message_id <= self.shown_through {
            return;
        }
        self.shown_through = message_id;
        if message_id > self.sent_through {
            self.waiting_since.get_or_insert(now);
        }
    }

    /// A login succeeded on a new connection: confirm again what was shown
    /// (the server ignores a `through` it already has).
    pub fn logged_in(&mut self, now: Instant) {
        self.sent_through = 0;
        self.last_sent_at = None;
        self.waiting_since = (self.shown_through > 0).then_some(now);
    }

    /// The `through` to send now, if any: something shown is unconfirmed,
    /// either the socket went quiet or it has waited [`CONFIRM_INTERVAL`],
    /// and the last `Received` is at least that long ago.
    pub fn due(&self, now: Instant, socket_quiet: bool) -> Option<i64> {
        let since = self.waiting_since?;
        let ready = socket_quiet || now.duration_since(since) >= CONFIRM_INTERVAL;
        let spaced = self
            .last_sent_at
            .is_none_or(|at| now.duration_since(at) >= CONFIRM_INTERVAL);
        self.unconfirmed().filter(|_| ready && spaced)
    }

    /// The `through` to send before leaving, if anything shown is
    /// unconfirmed (whatever the timing).
    pub fn unconfirmed(&self) -> Option<i64> {
        (!self.refused && self.waiting_since.is_some() && self.shown_through > self.sent_through)
            .then_some(self.shown_through)
    }

    /// `Received{through}` went out.
    pub fn sent(&mut self, through: i64, now: Instant) {
        self.last_sent_at = Some(now);
        self.sent_through = self.sent_through.max(through);
        if self.sent_through >= self.shown_through {
            self.waiting_since = None;
        }
    }

    /// The server answered `Received` with an error: it will not take them.
    /// Returns true the first time.
    pub fn refuse(&mut self) -> bool {
        let first = !self.refused;
        self.refused = true;
        self.waiting_since = None;
        first
    }
}

/// One recipient's delivery state.
#[derive(Debug, Default)]
struct Recipient {
    /// Every message of yours to them up to this id is delivered.
    through: i64,
    /// The newest of your messages sent in this run known delivered: (id,
    /// server time).
    last_delivered: Option<(i64, i64)>,
    /// Your messages sent in this run not yet known delivered: id → time.
    waiting: BTreeMap<i64, i64>,
}

/// How far the user's 1:1 messages have been delivered, per recipient.
#[derive(Debug, Default)]
pub struct DeliveryStatus {
    recipients: BTreeMap<String, Recipient>,
    /// Changed since last saved.
    dirty: bool,
}

impl DeliveryStatus {
    /// Starts from what the session file says (`username → through`).
    pub fn from_saved(saved: &BTreeMap<String, i64>) -> Self {
        let recipients = saved
            .iter()
            .map(|(name, through)| {
                let recipient = Recipient {
                    through: *through,
                    ..Recipient::default()
                };
                (name.clone(), recipient)
            })
            .collect();
        DeliveryStatus {
            recipients,
            dirty: false,
        }
    }

    /// What the session file keeps: `username → through`.
    pub fn to_saved(&self) -> BTreeMap<String, i64> {
        self.recipients
            .iter()
            .filter(|(_, recipient)| recipient.through > 0)
            .map(|(name, recipient)| (name.clone(), recipient.through))
            .collect()
    }

    /// True (once) when something changed that the session file keeps.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The server stored a message of yours to `to` with this id and time.
    pub fn sent(&mut self, to: &str, message_id: i64, time: i64) {
        let recipient = self.recipients.entry(to.to_string()).or_default();
        if message_id <= recipient.through {
            recipient.last_delivered = Some((message_id, time));
            return;
        }
        recipient.waiting.insert(message_id, time);
        if recipient.waiting.len() > WAITING_PER_RECIPIENT_MAX {
            recipient.waiting.pop_first();
        }
    }

    /// A `Delivered{username, through}` receipt.
    pub fn delivered(&mut self, username: &str, through: i64) {
        let recipient = self.recipients.entry(username.to_string()).or_default();
        if through <= recipient.through {
            return;
        }
        recipient.through = through;
        self.dirty = true;
        let still_waiting = recipient.waiting.split_off(&(through + 1));
        let delivered = std::mem::replace(&mut recipient.waiting, still_waiting);
        if let Some((id, time)) = delivered.into_iter().next_back() {
            recipient.last_delivered = Some((id, time));
        }
    }

    /// True when your message `message_id` to `to` is known delivered.
    pub fn is_delivered(&self, to: &str, message_id: i64) -> bool {
        self.recipients
            .get(to)
            .is_some_and(|recipient| message_id <= recipient.through)
    }

    /// Marks your delivered messages in the lines of a 1:1 history page
    /// with `with`: `lines[i]` is the line of `history.data[i]` (as
    /// `render::history_lines` makes them).
    pub fn mark_history(&self, history: &History, me: &str, lines: &mut [String]) {
        for (message, line) in history.data.iter().zip(lines.iter_mut()) {
            let mine = message.source_id == me && message.group_id.is_none();
            if mine && self.is_delivered(&history.chat_id, message.message_id) {
                line.push(' ');
                line.push_str(DELIVERED_MARK);
            }
        }
    }

    /// `/status`: one line per recipient (or only `only`), under a heading.
    pub fn status_lines(&self, only: Option<&str>, stamper: &Stamper) -> Vec<String> {
        let lines: Vec<String> = self
            .recipients
            .iter()
            .filter(|(name, _)| only.is_none_or(|only| only == name.as_str()))
            .filter_map(|(name, recipient)| recipient_line(name, recipient, stamper))
            .collect();
        if lines.is_empty() {
            return vec![match only {
                Some(name) => format!("nothing of yours to {name} is known delivered or waiting"),
                None => "no messages of yours are known delivered or waiting; \
                         1:1 messages are marked ✓✓ once on one of the recipient's devices"
                    .into(),
            }];
        }
        let mut all = vec!["your messages (✓✓ = delivered to one of their devices):".to_string()];
        all.extend(lines);
        all
    }
}

/// `  bob      ✓✓ delivered up to your message of 14:03:07; 2 not yet
/// (the first sent 14:04:10)`, or `None` when nothing is known.
fn recipient_line(name: &str, recipient: &Recipient, stamper: &Stamper) -> Option<String> {
    let delivered = match (recipient.last_delivered, recipient.through) {
        (Some((_, time)), _) => Some(format!(
            "{DELIVERED_MARK} delivered up to your message of {}",
            stamper.stamp(time)
        )),
        (None, 0) => None,
        // The message was not sent by this run: its time is not known.
        (None, through) => Some(format!(
            "{DELIVERED_MARK} delivered up to message #{through} \
             (sent by an earlier run or another device)"
        )),
    };
    let waiting = recipient.waiting.first_key_value().map(|(_, first)| {
        let count = recipient.waiting.len();
        let plural = if count == 1 { "" } else { "s" };
        format!(
            "{count} message{plural} not delivered yet (the first sent {})",
            stamper.stamp(*first)
        )
    });
    let status = match (delivered, waiting) {
        (None, None) => return None,
        (Some(delivered), None) => delivered,
        (None, Some(waiting)) => waiting,
        (Some(delivered), Some(waiting)) => format!("{delivered}; {waiting}"),
    };
    Some(format!("  {:<16} {status}", printable(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_709_214_330; // 2024-02-29 13:45:30 UTC

    fn message(id: i64, from: &str, to: Option<&str>, group: Option<i64>) -> Delivered {
        Delivered {
            message_id: id,
            source_id: from.into(),
            dest_id: to.map(Into::into),
            group_id: group,
            content: "hi".into(),
            is_encrypted: false,
            time: NOW,
        }
    }

    #[test]
    fn only_messages_addressed_to_me_count() {
        assert!(counts_as_received(
            &message(1, "bob", Some("me"), None),
            "me"
        ));
        assert!(counts_as_received(
            &message(2, "me", Some("me"), None),
            "me"
        ));
        assert!(counts_as_received(&message(3, "me", None, Some(4)), "me"));
        assert!(!counts_as_received(
            &message(4, "me", Some("bob"), None),
            "me"
        ));
    }

    #[test]
    fn confirms_once_per_batch_when_the_socket_goes_quiet() {
        let start = Instant::now();
        let mut confirmations = Confirmations::default();
        assert_eq!(confirmations.due(start, true), None);
        confirmations.shown(5, start);
        confirmations.shown(7, start);
        // Still reading a burst: not yet.
        assert_eq!(confirmations.due(start, false), None);
        assert_eq!(confirmations.due(start, true), Some(7));
        confirmations.sent(7, start);
        assert_eq!(confirmations.due(start, true), None);
        assert_eq!(confirmations.unconfirmed(), None);
        // Shown again (a duplicate) or older: nothing new to confirm.
        confirmations.shown(6, start);
        assert_eq!(confirmations.due(start, true), None);
    }

    #[test]
    fn trickling_messages_are_confirmed_at_most_every_interval() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut confirmations = Confirmations::default();
        confirmations.shown(1, start);
        assert_eq!(confirmations.due(start, true), Some(1));
        confirmations.sent(1, start);
        confirmations.shown(2, at(60));
        confirmations.shown(3, at(120));
        assert_eq!(confirmations.due(at(130), true), None);
        // Leaving: confirmed whatever the timing.
        assert_eq!(confirmations.unconfirmed(), Some(3));
        assert_eq!(confirmations.due(at(200), true), Some(3));
    }

    #[test]
    fn a_long_burst_is_confirmed_every_interval() {
        let start = Instant::now();
        let mut confirmations = Confirmations::default();
        confirmations.shown(1, start);
        confirmations.shown(2, start + Duration::from_millis(100));
        assert_eq!(
            confirmations.due(start + Duration::from_millis(150), false),
            None
        );
        assert_eq!(confirmations.due(start + CONFIRM_INTERVAL, false), Some(2));
    }

    #[test]
    fn a_new_connection_confirms_again_what_was_shown_before() {
        let start = Instant::now();
        let mut confirmations = Confirmations::starting_at(40);
        assert_eq!(confirmations.shown_through(), 40);
        assert_eq!(confirmations.due(start, true), None);
        confirmations.logged_in(start);
        assert_eq!(confirmations.due(start, true), Some(40));
        confirmations.sent(40, start);
        confirmations.logged_in(start);
        assert_eq!(confirmations.due(start, true), Some(40));
        let mut fresh = Confirmations::default();
        fresh.logged_in(start);
        assert_eq!(fresh.due(start, true), None);
    }

    #[test]
    fn a_refusing_server_is_not_asked_again() {
        let start = Instant::now();
        let mut confirmations = Confirmations::default();
        confirmations.shown(3, start);
        assert!(confirmations.refuse());
        assert!(!confirmations.refuse());
        confirmations.shown(4, start);
        assert_eq!(confirmations.due(start, true), None);
    }

    #[test]
    fn delivery_status_per_recipient() {
        let stamper = Stamper::utc_at(NOW);
        let mut status = DeliveryStatus::from_saved(&BTreeMap::from([("erin".into(), 3)]));
        assert!(!status.take_dirty());
        status.sent("bob", 10, NOW - 60);
        status.sent("bob", 12, NOW - 30);
        status.sent("carol", 11, NOW - 45);
        status.delivered("bob", 10);
        assert!(status.take_dirty());
        assert!(!status.take_dirty());
        status.delivered("bob", 9);
        assert!(!status.take_dirty());
        assert!(status.is_delivered("bob", 10));
        assert!(!status.is_delivered("bob", 12));
        assert_eq!(
            status.status_lines(None, &stamper),
            vec![
                "your messages (✓✓ = delivered to one of their devices):".to_string(),
                "  bob              ✓✓ delivered up to your message of 13:44:30; \
                 1 message not delivered yet (the first sent 13:45:00)"
                    .into(),
                "  carol            1 message not delivered yet (the first sent 13:44:45)".into(),
                "  erin             ✓✓ delivered up to message #3 \
                 (sent by an earlier run or another device)"
                    .into(),
            ]
        );
        status.delivered("bob", 12);
        assert_eq!(
            status.status_lines(Some("bob"), &stamper)[1],
            "  bob              ✓✓ delivered up to your message of 13:45:00"
        );
        assert_eq!(
            status.to_saved(),
            BTreeMap::from([("bob".into(), 12), ("erin".into(), 3)])
        );
        assert_eq!(
            status.status_lines(Some("zed"), &stamper),
            vec!["nothing of yours to zed is known delivered or waiting".to_string()]
        );
        assert!(DeliveryStatus::default().status_lines(None, &stamper)[0]
            .starts_with("no messages of yours"));
    }

    #[test]
    fn history_marks_only_your_delivered_messages() {
        let mut status = DeliveryStatus::default();
        status.delivered("bob", 2);
        let history = History {
            chat_id: "bob".into(),
            data: vec![
                message(1, "me", Some("bob"), None),
                message(2, "bob", Some("me"), None),
                message(2, "me", Some("bob"), None),
                message(3, "me", Some("bob"), None),
            ],
            has_more: true,
        };
        let mut lines: Vec<String> = ["a", "b", "c", "d", "(older)"].map(String::from).to_vec();
        status.mark_history(&history, "me", &mut lines);
        assert_eq!(lines, ["a ✓✓", "b", "c ✓✓", "d", "(older)"]);
    }
}
