//! Pages of messages, whichever backend reads them: how much one page may
//! hold ([`PageBudget`], in messages and in bytes), filling one from rows
//! read in order ([`PageFill`]), merging two pages read from the same point
//! ([`merge_pages`]), and which part of a user's queue a login or catch-up
//! takes ([`QueueTake`]). Pure logic: the SQL that selects the rows is each
//! backend's own.

use super::StoredMessage;
use crate::config::{QUEUE_PAGE_BYTES, READ_PAGE_BYTES};

/// Offline-queue messages taken per storage round trip at login. The whole
/// queue is pushed, chunk by chunk, so one reply (and one write into the
/// connection's buffer) stays bounded; the round trips give the socket time
/// to drain between chunks.
pub const OFFLINE_CHUNK: u32 = 500;

/// An offline-queue or catch-up page.
pub(super) const QUEUE_PAGE: PageBudget = PageBudget {
    messages: OFFLINE_CHUNK as usize,
    bytes: QUEUE_PAGE_BYTES,
};

/// Which end of the selected messages a page is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PageFrom {
    /// Oldest first (Sync, the offline queue).
    Oldest,
    /// Newest first (History, which pages backwards).
    Newest,
}

impl PageFrom {
    /// The SQL sort order that reads from this end.
    pub(super) fn sql_order(self) -> &'static str {
        match self {
            PageFrom::Oldest => "ASC",
            PageFrom::Newest => "DESC",
        }
    }
}

/// How much one page may hold: at most `messages`, and no more content than
/// `bytes` (but always one message, so a page is never empty while messages
/// remain).
#[derive(Clone, Copy, Debug)]
pub(super) struct PageBudget {
    /// Most messages in the page.
    pub(super) messages: usize,
    /// Most bytes of content in the page (past its first message).
    pub(super) bytes: usize,
}

impl PageBudget {
    /// A History or Sync page of at most `limit` messages.
    pub(super) fn read(limit: u32) -> Self {
        PageBudget {
            messages: limit as usize,
            bytes: READ_PAGE_BYTES,
        }
    }

    /// How many of `messages`, taken in order, fit.
    pub(super) fn fitting<'a>(&self, messages: impl Iterator<Item = &'a StoredMessage>) -> usize {
        let mut bytes = 0;
        let mut fits = 0;
        for message in messages.take(self.messages) {
            bytes += message.content.len();
            if fits > 0 && bytes > self.bytes {
                break;
            }
            fits += 1;
        }
        fits
    }
}

/// A page being filled from rows read in page order, until its budget says
/// stop: the reader offers each row and stops reading at the first refused,
/// so rows past the budget are never read.
pub(super) struct PageFill {
    page: Vec<StoredMessage>,
    bytes: usize,
    budget: PageBudget,
    more: bool,
}

impl PageFill {
    /// An empty page under `budget`.
    pub(super) fn new(budget: PageBudget) -> Self {
        PageFill {
            page: Vec::new(),
            bytes: 0,
            budget,
            more: false,
        }
    }

    /// Adds the next message if it fits; `false` when the page is full (the
    /// message is left out, and the page says more remain).
    pub(super) fn offer(&mut self, message: StoredMessage) -> bool {
        self.bytes += message.content.len();
        let full = self.page.len() >= self.budget.messages
            || (!self.page.is_empty() && self.bytes > self.budget.bytes);
        if full {
            self.more = true;
            return false;
        }
        self.page.push(message);
        true
    }

    /// The page oldest first (it was read from the `from` end), and whether
    /// selected messages were left out.
    pub(super) fn finish(self, from: PageFrom) -> (Vec<StoredMessage>, bool) {
        let mut page = self.page;
        if from == PageFrom::Newest {
            page.reverse();
        }
        (page, self.more)
    }
}

/// The oldest part of two pages read from the same point (each oldest
/// first, each saying whether it left messages out) that is a page itself:
/// nothing past where either one stopped, and within `budget`.
pub(super) fn merge_pages(
    (mut merged, first_more): (Vec<StoredMessage>, bool),
    (second, second_more): (Vec<StoredMessage>, bool),
    budget: PageBudget,
) -> (Vec<StoredMessage>, bool) {
    let stopped_at = |page: &[StoredMessage], more: bool| {
        more.then(|| page.last().map_or(i64::MIN, |m| m.message_id))
    };
    let bound = [
        stopped_at(&merged, first_more),
        stopped_at(&second, second_more),
    ]
    .into_iter()
    .flatten()
    .min();
    merged.extend(second);
    merged.sort_by_key(|message| message.message_id);
    if let Some(bound) = bound {
        merged.retain(|message| message.message_id <= bound);
    }
    let fits = budget.fitting(merged.iter());
    let more = bound.is_some() || merged.len() > fits;
    merged.truncate(fits);
    (merged, more)
}

/// Whose offline queue to take, and how much of it.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueTake {
    /// Whose queue.
    pub(super) user_id: i64,
    /// Only ids below this one (later ones are held by the loop).
    pub(super) queue_before: i64,
    /// Only ids above this one (the previous chunk's last).
    pub(super) after: i64,
    /// A receipts session's confirmation: take everything addressed to the
    /// user past it instead of the offline queue.
    pub(super) since: Option<i64>,
    /// Whether the user's group messages are part of it.
    pub(super) include_groups: bool,
}

impl QueueTake {
    /// A login's queue from its start: the offline queue below `queue_before`.
    pub(super) fn from_start(user_id: i64, queue_before: i64, include_groups: bool) -> Self {
        QueueTake {
            user_id,
            queue_before,
            after: 0,
            since: None,
            include_groups,
        }
    }

    /// The same queue past `after` (the previous chunk's last id); with
    /// `since`, a receipts session's queue past its confirmation.
    pub(super) fn continued(self, after: i64, since: Option<i64>) -> Self {
        QueueTake {
            after,
            since,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(message_id: i64, bytes: usize) -> StoredMessage {
        StoredMessage {
            message_id,
            sender: "a".into(),
            receiver: None,
            group_id: None,
            content: "x".repeat(bytes),
            is_encrypted: false,
            time: 0,
        }
    }

    /// A page stops at its message count and at its bytes, but always holds
    /// one message however large.
    #[test]
    fn a_page_stops_at_its_budget_but_never_empty() {
        let budget = PageBudget {
            messages: 3,
            bytes: 100,
        };
        let mut fill = PageFill::new(budget);
        assert!(fill.offer(message(1, 500)), "the first always fits");
        assert!(!fill.offer(message(2, 1)));
        let (page, more) = fill.finish(PageFrom::Oldest);
        assert_eq!((page.len(), more), (1, true));

        let mut fill = PageFill::new(budget);
        for id in [9, 8, 7] {
            assert!(fill.offer(message(id, 10)));
        }
        assert!(!fill.offer(message(6, 10)));
        let (page, more) = fill.finish(PageFrom::Newest);
        let ids: Vec<i64> = page.iter().map(|m| m.message_id).collect();
        assert_eq!((ids, more), (vec![7, 8, 9], true));
    }
}
