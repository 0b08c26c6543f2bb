//! Idempotent sends without a second index per message: the client's id is
//! kept in the message's own row (`messages.client_message_id`), and this
//! in-memory index maps `(sender, client id)` to the message id for the
//! last [`CLIENT_ID_RETENTION_SECS`]. A resend is found here; the row is
//! what rebuilds the index when the server starts (after `kill -9` too).
//! Backend-independent: each backend reads its rows into [`ClientIds::loading`]
//! and keeps the index beside its batches.
//!
//! The index is bounded by [`CLIENT_ID_INDEX_BYTES`]: past it the oldest
//! ids are forgotten early, and a resend of one of those is stored again
//! (SECURITY.md, "Budget table"). Entries added inside a batch's
//! transaction are taken back if the transaction fails, so the index never
//! names a message that was not committed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::config::{CLIENT_ID_INDEX_BYTES, CLIENT_ID_RETENTION_SECS};
use crate::id_map::{HashMapExt, IdMap};

/// What one remembered id costs besides its text: the order queue's entry,
/// the map's entry and key, the shared string's header and the hash
/// table's slack (an estimate, rounded up).
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// One remembered id, in the order ids were remembered.
struct Remembered {
    sender_id: i64,
    client_id: Arc<str>,
    message_id: i64,
    created_at: i64,
}

impl Remembered {
    fn bytes(&self) -> usize {
        self.client_id.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// The index being rebuilt at a start: the backend reads its messages
/// newest first (ids, and their times, are assigned in order) and offers
/// each until told to stop, so a start reads one day of messages, not the
/// table; the newest are kept first if they outgrow the budget.
pub(super) struct Loading {
    oldest_kept: i64,
    newest_first: Vec<Remembered>,
    bytes: usize,
}

impl Loading {
    /// The next older stored message, with its client id if it has one;
    /// `false` once the retention or the byte budget is passed (read no
    /// further).
    pub(super) fn offer(
        &mut self,
        sender_id: i64,
        client_id: Option<String>,
        message_id: i64,
        created_at: i64,
    ) -> bool {
        if created_at <= self.oldest_kept {
            return false;
        }
        let Some(client_id) = client_id else {
            return true;
        };
        self.bytes += client_id.len() + ENTRY_OVERHEAD_BYTES;
        if self.bytes > CLIENT_ID_INDEX_BYTES {
            return false;
        }
        self.newest_first.push(Remembered {
            sender_id,
            client_id: client_id.into(),
            message_id,
            created_at,
        });
        true
    }

    /// The index of what was offered.
    pub(super) fn finish(self) -> ClientIds {
        let mut index = ClientIds::new(CLIENT_ID_INDEX_BYTES);
        for remembered in self.newest_first.into_iter().rev() {
            index.push(remembered);
        }
        index
    }
}

/// The recent client ids of every sender, oldest first in `order`.
///
/// Senders are server-assigned ids ([`IdMap`]); the client ids are the
/// clients' own strings, so each sender's map keeps SipHash.
pub(super) struct ClientIds {
    by_sender: IdMap<i64, HashMap<Arc<str>, i64>>,
    order: VecDeque<Remembered>,
    bytes: usize,
    bytes_max: usize,
    /// Ids remembered by the batch in progress, `(sender, client id)`.
    uncommitted: Vec<(i64, Arc<str>)>,
}

impl ClientIds {
    /// An empty index holding at most `bytes_max` bytes.
    pub(super) fn new(bytes_max: usize) -> Self {
        ClientIds {
            by_sender: IdMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            bytes_max,
            uncommitted: Vec::new(),
        }
    }

    /// A start's rebuilding of the index at `now` from the stored
    /// messages, which the backend offers newest first.
    pub(super) fn loading(now: i64) -> Loading {
        Loading {
            oldest_kept: now - CLIENT_ID_RETENTION_SECS,
            newest_first: Vec::new(),
            bytes: 0,
        }
    }

    /// The message the sender stored under `client_id`, if remembered.
    pub(super) fn find(&self, sender_id: i64, client_id: &str) -> Option<i64> {
        self.by_sender.get(&sender_id)?.get(client_id).copied()
    }

    /// Remembers that the sender stored `message_id` under `client_id` at
    /// `now` (in the batch in progress), forgetting ids past the retention
    /// or the byte budget.
    pub(super) fn remember(&mut self, sender_id: i64, client_id: &str, message_id: i64, now: i64) {
        let client_id: Arc<str> = client_id.into();
        self.uncommitted.push((sender_id, client_id.clone()));
        self.push(Remembered {
            sender_id,
            client_id,
            message_id,
            created_at: now,
        });
        self.forget_older_than(now - CLIENT_ID_RETENTION_SECS);
    }

    /// The batch in progress committed: its ids stay.
    pub(super) fn commit(&mut self) {
        self.uncommitted.clear();
    }

    /// The batch in progress failed: its ids are forgotten (their messages
    /// were not stored). Their bytes leave with the oldest entries later.
    pub(super) fn roll_back(&mut self) {
        for (sender_id, client_id) in std::mem::take(&mut self.uncommitted) {
            self.remove(sender_id, client_id, None);
        }
    }

    /// Forgets every id remembered at or before `oldest_kept`.
    pub(super) fn forget_older_than(&mut self, oldest_kept: i64) {
        while self
            .order
            .front()
            .is_some_and(|front| front.created_at <= oldest_kept || self.bytes > self.bytes_max)
        {
            self.pop_oldest();
        }
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_sender.values().map(HashMap::len).sum()
    }

    fn push(&mut self, remembered: Remembered) {
        self.bytes += remembered.bytes();
        self.by_sender
            .entry(remembered.sender_id)
            .or_default()
            .insert(remembered.client_id.clone(), remembered.message_id);
        self.order.push_back(remembered);
        while self.bytes > self.bytes_max && self.order.len() > 1 {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(oldest) = self.order.pop_front() {
            self.bytes -= oldest.bytes();
            self.remove(oldest.sender_id, oldest.client_id, Some(oldest.message_id));
        }
    }

    /// Removes the sender's `client_id` (only if it still names `message_id`,
    /// when given). One lookup: at the byte budget every stored message
    /// removes the oldest id, and the lookup and removal of the same key
    /// hashed its text twice (with the sender's map, ~13 % of the storage
    /// thread at 100 users × window 16, `perf record -t <storage tid>`).
    fn remove(&mut self, sender_id: i64, client_id: Arc<str>, message_id: Option<i64>) {
        let Some(ids) = self.by_sender.get_mut(&sender_id) else {
            return;
        };
        if let Entry::Occupied(entry) = ids.entry(client_id) {
            if message_id.is_none_or(|id| *entry.get() == id) {
                entry.remove();
            }
        }
        if ids.is_empty() {
            self.by_sender.remove(&sender_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_found_until_its_retention_passes() {
        let mut index = ClientIds::new(1 << 20);
        index.remember(1, "a", 10, 1_000);
        index.commit();
        assert_eq!(index.find(1, "a"), Some(10));
        assert_eq!(index.find(2, "a"), None, "ids are per sender");
        index.forget_older_than(999);
        assert_eq!(index.find(1, "a"), Some(10));
        index.forget_older_than(1_000);
        assert_eq!(index.find(1, "a"), None);
    }

    #[test]
    fn past_the_byte_budget_the_oldest_are_forgotten() {
        let mut index = ClientIds::new(3 * (ENTRY_OVERHEAD_BYTES + 1));
        for (n, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            index.remember(1, id, n as i64, 1_000);
        }
        index.commit();
        assert_eq!(index.len(), 3);
        assert_eq!(index.find(1, "a"), None, "the oldest went first");
        assert_eq!(index.find(1, "d"), Some(3));
    }

    /// A start keeps what is younger than the retention, stopping at the
    /// first older message.
    #[test]
    fn loading_stops_at_the_retention() {
        let now = 10 * CLIENT_ID_RETENTION_SECS;
        let mut loading = ClientIds::loading(now);
        assert!(loading.offer(1, Some("new".into()), 3, now - 1));
        assert!(loading.offer(1, None, 2, now - 2));
        assert!(!loading.offer(1, Some("old".into()), 1, now - CLIENT_ID_RETENTION_SECS));
        let index = loading.finish();
        assert_eq!(index.find(1, "new"), Some(3));
        assert_eq!(index.find(1, "old"), None);
    }

    #[test]
    fn a_failed_batch_forgets_its_ids() {
        let mut index = ClientIds::new(1 << 20);
        index.remember(1, "kept", 1, 1_000);
        index.commit();
        index.remember(1, "lost", 2, 1_000);
        index.roll_back();
        assert_eq!(index.find(1, "kept"), Some(1));
        assert_eq!(index.find(1, "lost"), None);
        index.forget_older_than(1_000);
        assert_eq!(index.len(), 0);
        assert_eq!(index.bytes, 0, "the taken-back entry's bytes left too");
    }

    #[test]
    fn forgetting_an_old_entry_keeps_a_newer_message_under_the_same_id() {
        let mut index = ClientIds::new(1 << 20);
        index.remember(1, "a", 10, 1_000);
        index.roll_back();
        index.remember(1, "a", 11, 2_000);
        index.commit();
        index.forget_older_than(1_000);
        assert_eq!(
            index.find(1, "a"),
            Some(11),
            "the taken-back entry leaving the order does not take the resend"
        );
        index.forget_older_than(2_000);
        assert_eq!(index.find(1, "a"), None);
        assert_eq!(index.len(), 0);
    }
}
