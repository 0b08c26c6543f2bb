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

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use crate::config::{CLIENT_ID_INDEX_BYTES, CLIENT_ID_RETENTION_SECS};

/// What one remembered id costs besides its text: its entry in the order
/// queue (32 bytes) and its slot in the table (40 bytes and a control
/// byte), the text's allocation header, and the table's and the queue's
/// slack (an estimate, rounded up).
const ENTRY_OVERHEAD_BYTES: usize = 136;

/// One remembered id, in the order ids were remembered.
struct Remembered {
    /// The key's hash in the table, so forgetting the id reads neither its
    /// text nor the hasher.
    hash: u64,
    message_id: i64,
    created_at: i64,
    /// What the id costs (its text and [`ENTRY_OVERHEAD_BYTES`]).
    bytes: usize,
}

/// The index being rebuilt at a start: the backend reads its messages
/// newest first (ids, and their times, are assigned in order) and offers
/// each until told to stop, so a start reads one day of messages, not the
/// table; the newest are kept first if they outgrow the budget.
pub(super) struct Loading {
    oldest_kept: i64,
    /// `(sender, client id, message id, stored at)`, newest first.
    newest_first: Vec<(i64, Box<str>, i64, i64)>,
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
        self.newest_first
            .push((sender_id, client_id.into(), message_id, created_at));
        true
    }

    /// The index of what was offered.
    pub(super) fn finish(self) -> ClientIds {
        let mut index = ClientIds::new(CLIENT_ID_INDEX_BYTES);
        for (sender_id, client_id, message_id, created_at) in self.newest_first.into_iter().rev() {
            index.push(sender_id, client_id, message_id, created_at);
        }
        index
    }
}

/// An id in the table: its hash, its sender, its text and the message it
/// names.
struct Slot {
    /// The key's hash: the table grows (to ~500,000 ids at the byte budget)
    /// by moving every slot, and reads it here instead of hashing each text
    /// again, cold in memory.
    hash: u64,
    sender_id: i64,
    client_id: Box<str>,
    message_id: i64,
}

/// The recent client ids of every sender, oldest first in `order`.
///
/// One hash table keyed by `(sender, client id)`: the client ids are the
/// clients' own strings, so the key is hashed with SipHash under a random
/// key ([`RandomState`]), once per remembered id — forgetting it uses the
/// hash kept in its [`Remembered`] and compares message ids, not text. At
/// the byte budget every stored message forgets the oldest id, whose entry
/// is cold in memory; a map per sender of maps by text cost ~14 % of the
/// storage thread at 100 users × window 16 (`perf`), most of it that.
pub(super) struct ClientIds {
    table: HashTable<Slot>,
    hasher: RandomState,
    order: VecDeque<Remembered>,
    bytes: usize,
    bytes_max: usize,
    /// Ids remembered by the batch in progress: `(hash, message id)`.
    uncommitted: Vec<(u64, i64)>,
    /// The last key hashed, `(sender, hash)`, with its text in
    /// `last_text`. A sent message's id is looked up when the batch gives
    /// ids out, again when it is stored, and then remembered: hashing it
    /// once instead of three times saves two SipHashes per message (~3 %
    /// of the storage thread at 100 users × window 16, `perf`). The text
    /// is a client id, so the buffer stays within the longest one (64
    /// characters, the protocol's bound).
    last_hashed: Option<(i64, u64)>,
    last_text: String,
}

impl ClientIds {
    /// An empty index holding at most `bytes_max` bytes.
    pub(super) fn new(bytes_max: usize) -> Self {
        ClientIds {
            table: HashTable::new(),
            hasher: RandomState::new(),
            order: VecDeque::new(),
            bytes: 0,
            bytes_max,
            uncommitted: Vec::new(),
            last_hashed: None,
            last_text: String::new(),
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
    pub(super) fn find(&mut self, sender_id: i64, client_id: &str) -> Option<i64> {
        let hash = self.hash(sender_id, client_id);
        self.table
            .find(hash, |slot| {
                slot.sender_id == sender_id && *slot.client_id == *client_id
            })
            .map(|slot| slot.message_id)
    }

    /// Remembers that the sender stored `message_id` under `client_id` at
    /// `now` (in the batch in progress), forgetting ids past the retention
    /// or the byte budget.
    pub(super) fn remember(&mut self, sender_id: i64, client_id: &str, message_id: i64, now: i64) {
        let hash = self.push(sender_id, client_id.into(), message_id, now);
        self.uncommitted.push((hash, message_id));
        self.forget_older_than(now - CLIENT_ID_RETENTION_SECS);
    }

    /// The batch in progress committed: its ids stay.
    pub(super) fn commit(&mut self) {
        self.uncommitted.clear();
    }

    /// The batch in progress failed: its ids are forgotten (their messages
    /// were not stored). Their bytes leave with the oldest entries later.
    pub(super) fn roll_back(&mut self) {
        for (hash, message_id) in std::mem::take(&mut self.uncommitted) {
            self.remove(hash, message_id);
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
        self.table.len()
    }

    /// The key's hash, from `last_hashed` when it is the last key hashed.
    fn hash(&mut self, sender_id: i64, client_id: &str) -> u64 {
        if let Some((sender, hash)) = self.last_hashed {
            if sender == sender_id && self.last_text == client_id {
                return hash;
            }
        }
        let hash = self.hasher.hash_one((sender_id, client_id));
        self.last_text.clear();
        self.last_text.push_str(client_id);
        self.last_hashed = Some((sender_id, hash));
        hash
    }

    /// Adds the id (a newer message under the same id replaces the older
    /// one's entry) and returns its hash.
    fn push(&mut self, sender_id: i64, client_id: Box<str>, message_id: i64, now: i64) -> u64 {
        let hash = self.hash(sender_id, &client_id);
        let bytes = client_id.len() + ENTRY_OVERHEAD_BYTES;
        let same_key = |slot: &Slot| slot.sender_id == sender_id && slot.client_id == client_id;
        let rehash = |slot: &Slot| slot.hash;
        match self.table.entry(hash, same_key, rehash) {
            Entry::Occupied(mut entry) => entry.get_mut().message_id = message_id,
            Entry::Vacant(entry) => {
                entry.insert(Slot {
                    hash,
                    sender_id,
                    client_id,
                    message_id,
                });
            }
        }
        self.bytes += bytes;
        self.order.push_back(Remembered {
            hash,
            message_id,
            created_at: now,
            bytes,
        });
        while self.bytes > self.bytes_max && self.order.len() > 1 {
            self.pop_oldest();
        }
        hash
    }

    fn pop_oldest(&mut self) {
        if let Some(oldest) = self.order.pop_front() {
            self.bytes -= oldest.bytes;
            self.remove(oldest.hash, oldest.message_id);
        }
    }

    /// Removes the entry of the id with this `hash` if it still names
    /// `message_id` (message ids are unique, so no text is compared).
    fn remove(&mut self, hash: u64, message_id: i64) {
        if let Ok(entry) = self
            .table
            .find_entry(hash, |slot| slot.message_id == message_id)
        {
            entry.remove();
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
        let mut index = loading.finish();
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

    /// The remembered last hash is only ever the hash of the same key.
    #[test]
    fn keys_looked_up_in_turn_each_find_their_own_id() {
        let mut index = ClientIds::new(1 << 20);
        let keys = [(1, "a"), (2, "a"), (1, "ab"), (1, "b"), (3, "")];
        for (n, (sender, id)) in keys.into_iter().enumerate() {
            assert_eq!(index.find(sender, id), None);
            index.remember(sender, id, n as i64, 1_000);
        }
        index.commit();
        for _ in 0..2 {
            for (n, (sender, id)) in keys.into_iter().enumerate() {
                assert_eq!(index.find(sender, id), Some(n as i64), "{sender} {id}");
                assert_eq!(index.find(sender, id), Some(n as i64), "{sender} {id}");
            }
        }
        assert_eq!(index.find(1, "c"), None);
        assert_eq!(index.find(4, "a"), None);
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
