//! The per-user indexes of 1:1 messages (`received` and `sent`, for Sync,
//! History, the receipts queue and confirmations), written behind the
//! messages in small passes between batches.
//!
//! With 100 active users a message lands on one of 100 leaf pages in each
//! per-user index, so writing them with every commit rewrote ~200 index
//! pages per commit. They are written later instead, in passes that each
//! touch a page once for many rows. A pass is one transaction on the storage
//! thread, so a batch arriving meanwhile waits for it: a pass of 1,024 rows
//! into both indexes took up to 17 ms at 10,000 messages/s, and every Ack
//! and delivery behind it waited. So the users are split into
//! [`INDEX_SLICES`] slices by id, each with its own watermark: a pass moves
//! one slice forward, touching a 32nd of the pages.
//!
//! How many ids a pass covers ([`INDEX_PASS_ROWS`], growing with the
//! receivers) decides how many rows each receiver's leaf page gets per
//! rewrite; how many slices, how many pages one pass rewrites. The
//! 10,000 msg/s tail rose with the rows passes committed more than with
//! how long a pass held the writer (trials in BENCHMARKS.md): 8 slices of
//! 1,024 ids gave each of 100 receivers ~10 rows per rewrite, 32 slices of
//! 8,192 give ~80, in passes of ~0.2 ms instead of ~0.3. Measured (12 s open loops, fresh
//! servers, alternating): e2e p99 at 100 users and 10,000 msg/s 0.77–1.57
//! ms, median 0.93, against 1.31–1.84, median 1.57; closed loops the same
//! or better (100 × 16: 193k and 211k msg/s against 188k and 193k, the
//! storage thread at 63–69 % of a core against 77–78 %; at 5,000 × 1 the
//! passes take ~3 ms each instead of ~12).
//!
//! A user's 1:1 messages up to their slice's watermark are in the indexes;
//! queries read the rest — the unindexed tail — from memory, so every
//! answer is the same whichever passes have run and none scans `messages`
//! by id range: a login's queue by receiver, History the pair's rows,
//! Sync the user's sent and received ones, each handed to SQL as one
//! `rarray` of ids. The tail's 1:1 rows are kept in memory (24 bytes each,
//! three times; at most `INDEX_TAIL_BOUND` rows, and while running what
//! arrives in `INDEX_AGE` plus `INDEX_TAIL_MAX` or one pass's span,
//! whichever is larger: passes leave younger rows alone, see
//! `stored_times.rs`), in id order, by receiver and by sender: passes
//! insert from the first, a confirmation reads only its own user's rows
//! from the second (it scanned the whole tail, ~8,000 rows, per
//! confirmation: at 5,000 devices confirming once a second that was an
//! eighth of the storage thread), and History and Sync read the second and
//! the third. Sync and History scanned `messages` by id range past the
//! watermark until the tail was read from memory; that kept the tail, and
//! so the pass span, short.

use rusqlite::{params, Connection, Transaction};

use super::delivery::queue_untaken;
use crate::id_map::IdMap;
use crate::storage::NewMessage;

/// Slices of users (by `user_id` modulo this), each indexed by its own pass.
pub(super) const INDEX_SLICES: usize = 32;

/// Ids of the tail a pass covers for its slice, at least: what a few
/// receivers' passes cover (with 100 receivers, ~80 rows each per pass).
pub(super) const INDEX_PASS_ROWS: i64 = 8_192;

/// Ids a pass covers at most: what many receivers' passes cover.
pub(super) const INDEX_PASS_ROWS_MAX: i64 = 131_072;

/// Rows a pass should give each receiver, on average, in each index.
///
/// A pass rewrites the last leaf page of each of its receivers (and
/// senders) in `received` and `sent`, however few rows it brings each. At
/// 5,000 users a pass of 1,024 ids gave each of them ~0.2 rows: about one
/// index page written per message, most of the storage thread's writes. So
/// the span grows with the receivers in the tail (`Indexes::pass_span`).
/// Measured (10 s closed loops, fresh servers, alternating with 1,024-id
/// passes): 5,000 × 1 at 38,749 and 35,776 msg/s against 34,305 and
/// 33,149, with half the bytes written; 1,000 × 4 at 87,069 and 86,219
/// against 85,674 and 84,603, a third fewer bytes written. It was 8 per
/// receiver up to 32,768 ids while Sync and History scanned the tail; at
/// 32 up to 131,072 (and idle passes waiting while messages keep arriving,
/// `INDEX_DELAY_BUSY`), the storage thread at 5,000 × 1 spends ~half the
/// time in passes it did (BENCHMARKS.md). Below 256 receivers the span is
/// the floor, [`INDEX_PASS_ROWS`].
const PASS_ROWS_PER_RECEIVER: i64 = 32;

/// A 1:1 message as the indexes hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TailRow {
    pub receiver_id: i64,
    pub sender_id: i64,
    pub message_id: i64,
}

/// Each slice's watermark and the 1:1 messages past the lowest one.
pub(super) struct Indexes {
    /// Every 1:1 message up to `marks[k]` whose receiver is in slice `k` is
    /// in `received`, and whose sender is in slice `k` is in `sent`.
    marks: [i64; INDEX_SLICES],
    /// The 1:1 messages past the lowest mark; `None` after a rolled-back
    /// batch, until read again.
    tail: Option<Tail>,
}

/// The unindexed tail, oldest first, and the same rows by receiver and by
/// sender.
///
/// Rows arrive in id order (storage hands ids out in commit order), so every
/// question about a range of ids is a binary search, and a pass, a
/// confirmation, a queue, a History or a Sync costs what it covers, never
/// the whole tail.
#[derive(Default)]
struct Tail {
    rows: IdOrdered,
    by_receiver: IdMap<i64, IdOrdered>,
    by_sender: IdMap<i64, IdOrdered>,
}

impl Tail {
    fn new(rows: Vec<TailRow>) -> Tail {
        let mut tail = Tail::default();
        for row in rows {
            tail.push(row);
        }
        tail
    }

    fn push(&mut self, row: TailRow) {
        self.rows.push(row);
        self.by_receiver
            .entry(row.receiver_id)
            .or_default()
            .push(row);
        self.by_sender.entry(row.sender_id).or_default().push(row);
    }

    /// Drops the rows up to `through` (every index has them now), touching
    /// only those rows, their receivers and their senders.
    fn drop_through(&mut self, through: i64) {
        let dropped = self.rows.range(i64::MIN, through);
        let receivers = distinct(dropped.iter().map(|row| row.receiver_id));
        let senders = distinct(dropped.iter().map(|row| row.sender_id));
        self.rows.drop_through(through);
        drop_users_through(&mut self.by_receiver, receivers, through);
        drop_users_through(&mut self.by_sender, senders, through);
    }

    /// The rows to `receiver_id` with `after < message_id <= through`.
    fn to(&self, receiver_id: i64, (after, through): (i64, i64)) -> &[TailRow] {
        self.by_receiver
            .get(&receiver_id)
            .map_or(&[], |rows| rows.range(after, through))
    }

    /// The rows from `sender_id` with `after < message_id <= through`.
    fn from(&self, sender_id: i64, (after, through): (i64, i64)) -> &[TailRow] {
        self.by_sender
            .get(&sender_id)
            .map_or(&[], |rows| rows.range(after, through))
    }

    /// The ids of the newest `count` rows between the two users (either
    /// way) with `after < message_id <= through`, newest first. Each
    /// direction is read from the shorter of its sender's and its
    /// receiver's rows.
    fn between(&self, (user_id, peer_id): (i64, i64), range: (i64, i64), count: usize) -> Vec<i64> {
        let one_way = |sender: i64, receiver: i64| {
            let (from, to) = (self.from(sender, range), self.to(receiver, range));
            let rows = if from.len() <= to.len() { from } else { to };
            rows.iter()
                .rev()
                .filter(move |row| row.sender_id == sender && row.receiver_id == receiver)
                .take(count)
                .map(|row| row.message_id)
        };
        let mut ids: Vec<i64> = one_way(user_id, peer_id)
            .chain(one_way(peer_id, user_id))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(count);
        ids
    }

    /// The ids of the oldest `count` rows the user sent or received with
    /// `message_id > after`, oldest first.
    fn of(&self, user_id: i64, after: i64, count: usize) -> Vec<i64> {
        let range = (after, i64::MAX);
        let first = |rows: &[TailRow]| -> Vec<i64> {
            rows.iter().take(count).map(|row| row.message_id).collect()
        };
        let mut ids = first(self.to(user_id, range));
        ids.extend(first(self.from(user_id, range)));
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(count);
        ids
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rows.as_slice().len()
    }
}

/// The distinct values, in no particular order.
fn distinct(values: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut values: Vec<i64> = values.collect();
    values.sort_unstable();
    values.dedup();
    values
}

/// Drops the rows up to `through` from each of `users`' lists, and the lists
/// left empty.
fn drop_users_through(lists: &mut IdMap<i64, IdOrdered>, users: Vec<i64>, through: i64) {
    for user in users {
        if let Some(rows) = lists.get_mut(&user) {
            rows.drop_through(through);
            if rows.is_empty() {
                lists.remove(&user);
            }
        }
    }
}

/// Rows in ascending `message_id` order, dropped from the front: a `Vec`
/// with a moving start, compacted once the dropped part is at least half,
/// so dropping costs what it drops (amortised) and reading stays a slice.
#[derive(Default)]
struct IdOrdered {
    rows: Vec<TailRow>,
    start: usize,
}

impl IdOrdered {
    fn push(&mut self, row: TailRow) {
        debug_assert!(self
            .rows
            .last()
            .is_none_or(|last| last.message_id < row.message_id));
        self.rows.push(row);
    }

    fn as_slice(&self) -> &[TailRow] {
        &self.rows[self.start..]
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The rows with `after < message_id <= through`.
    fn range(&self, after: i64, through: i64) -> &[TailRow] {
        let rows = self.as_slice();
        let first = rows.partition_point(|row| row.message_id <= after);
        let end = rows.partition_point(|row| row.message_id <= through);
        &rows[first..end.max(first)]
    }

    fn drop_through(&mut self, through: i64) {
        self.start += self
            .as_slice()
            .partition_point(|row| row.message_id <= through);
        if self.start == self.rows.len() {
            self.rows.clear();
            self.start = 0;
        } else if self.start * 2 >= self.rows.len() {
            self.rows.drain(..self.start);
            self.start = 0;
        }
    }
}

impl Indexes {
    /// Reads the watermarks and brings every slice up to `highest_stored`
    /// (what a previous run's passes left behind), so a start begins with
    /// an empty tail.
    pub(super) fn open(conn: &mut Connection, highest_stored: i64) -> rusqlite::Result<Indexes> {
        let tx = conn.transaction()?;
        let marks = read_marks(&tx)?;
        if marks.iter().any(|&mark| mark > highest_stored) {
            // Commits lost with the machine (synchronous = NORMAL) that a
            // pass had indexed: their ids are not in the table.
            forget_past(&tx, highest_stored)?;
        }
        let lowest = marks.iter().copied().min().unwrap_or(0);
        if lowest < highest_stored {
            for (slice, &mark) in marks.iter().enumerate() {
                write_mark(&tx, slice, mark.min(highest_stored))?;
            }
            catch_up(&tx, lowest)?;
        }
        for slice in 0..INDEX_SLICES {
            write_mark(&tx, slice, highest_stored)?;
        }
        tx.commit()?;
        Ok(Indexes {
            marks: [highest_stored; INDEX_SLICES],
            tail: Some(Tail::default()),
        })
    }

    /// Every slice at `mark`, with the tail read from the table when first
    /// asked: what queries see at any mark (tests).
    #[cfg(test)]
    pub(super) fn at(mark: i64) -> Indexes {
        Indexes {
            marks: [mark; INDEX_SLICES],
            tail: None,
        }
    }

    /// The user's 1:1 messages up to here are in the indexes.
    pub(super) fn through(&self, user_id: i64) -> i64 {
        self.marks[slice_of(user_id)]
    }

    /// Every 1:1 message up to here is in the indexes.
    pub(super) fn lowest(&self) -> i64 {
        self.marks.iter().copied().min().unwrap_or(0)
    }

    /// The tail's 1:1 messages to `receiver_id` with `after < message_id <=
    /// through`.
    pub(super) fn tail_to(
        &mut self,
        tx: &Transaction,
        receiver_id: i64,
        (after, through): (i64, i64),
    ) -> rusqlite::Result<&[TailRow]> {
        Ok(self.loaded_tail(tx)?.to(receiver_id, (after, through)))
    }

    /// The ids of the tail's newest `count` 1:1 messages between the two
    /// users (either way) with `after < message_id < before`, newest first:
    /// History's candidates past the indexes.
    pub(super) fn tail_between(
        &mut self,
        tx: &Transaction,
        users: (i64, i64),
        (after, before): (i64, i64),
        count: usize,
    ) -> rusqlite::Result<Vec<i64>> {
        let range = (after, before.saturating_sub(1));
        Ok(self.loaded_tail(tx)?.between(users, range, count))
    }

    /// The ids of the tail's oldest `count` 1:1 messages the user sent or
    /// received with `message_id > after`, oldest first: Sync's candidates
    /// past the indexes.
    pub(super) fn tail_of(
        &mut self,
        tx: &Transaction,
        user_id: i64,
        after: i64,
        count: usize,
    ) -> rusqlite::Result<Vec<i64>> {
        Ok(self.loaded_tail(tx)?.of(user_id, after, count))
    }

    /// Rows of the unindexed tail held in memory (0 while it is unknown).
    #[cfg(test)]
    pub(super) fn tail_rows(&self) -> usize {
        self.tail.as_ref().map_or(0, Tail::len)
    }

    fn loaded_tail(&mut self, tx: &Transaction) -> rusqlite::Result<&Tail> {
        if self.tail.is_none() {
            self.tail = Some(Tail::new(read_tail(tx, self.lowest())?));
        }
        Ok(self.tail.get_or_insert_with(Tail::default))
    }

    /// A 1:1 message was stored (in the batch now running: if that batch is
    /// rolled back, [`forget`](Self::forget) undoes it).
    pub(super) fn stored(&mut self, message: &NewMessage) {
        if let (Some(tail), Some(receiver_id)) = (&mut self.tail, message.receiver_id) {
            tail.push(TailRow {
                receiver_id,
                sender_id: message.sender_id,
                message_id: message.message_id,
            });
        }
    }

    /// A batch was rolled back: read the tail again when next asked.
    pub(super) fn forget(&mut self) {
        self.tail = None;
    }

    /// The ids one pass covers: [`PASS_ROWS_PER_RECEIVER`] for each
    /// receiver in the tail, within [`INDEX_PASS_ROWS`] and
    /// [`INDEX_PASS_ROWS_MAX`]. With few users a pass stays short (a batch
    /// arriving meanwhile waits for it); with many, each pass brings each
    /// receiver several rows per page it rewrites.
    pub(super) fn pass_span(&self) -> i64 {
        pass_span_for(self.tail.as_ref().map_or(0, |tail| tail.by_receiver.len()))
    }

    /// Moves the slice furthest behind up to [`pass_span`](Self::pass_span)
    /// ids towards `through` (at most the highest id stored), in one
    /// transaction. Returns whether anything was left to index up to there.
    pub(super) fn pass(&mut self, conn: &mut Connection, through: i64) -> rusqlite::Result<bool> {
        let slice = self.slice_furthest_behind();
        let from = self.marks[slice];
        let to = through.min(from + self.pass_span());
        if to <= from {
            return Ok(false);
        }
        let tx = conn.transaction()?;
        let rows = self.loaded_tail(&tx)?.rows.range(from, to);
        let covered = |user: fn(&TailRow) -> i64| -> Vec<TailRow> {
            rows.iter()
                .filter(|row| slice_of(user(row)) == slice)
                .copied()
                .collect()
        };
        let mut received = covered(|row| row.receiver_id);
        let mut sent = covered(|row| row.sender_id);
        insert_rows(&tx, &mut received, &mut sent)?;
        queue_untaken(&tx, &received)?;
        write_mark(&tx, slice, to)?;
        tx.commit()?;
        self.marks[slice] = to;
        let lowest = self.lowest();
        if let Some(tail) = &mut self.tail {
            tail.drop_through(lowest);
        }
        Ok(true)
    }

    fn slice_furthest_behind(&self) -> usize {
        (0..INDEX_SLICES)
            .min_by_key(|&slice| self.marks[slice])
            .unwrap_or(0)
    }
}

/// The ids a pass covers while the tail holds rows for `receivers`
/// receivers ([`Indexes::pass_span`]).
pub(super) fn pass_span_for(receivers: usize) -> i64 {
    i64::try_from(receivers)
        .unwrap_or(i64::MAX)
        .saturating_mul(PASS_ROWS_PER_RECEIVER)
        .clamp(INDEX_PASS_ROWS, INDEX_PASS_ROWS_MAX)
}

/// The slice a user's index entries belong to.
fn slice_of(user_id: i64) -> usize {
    user_id.rem_euclid(INDEX_SLICES as i64) as usize
}

/// Inserts a pass's rows in key order (each index's pages in turn).
fn insert_rows(
    tx: &Transaction,
    received: &mut [TailRow],
    sent: &mut [TailRow],
) -> rusqlite::Result<()> {
    received.sort_unstable_by_key(|row| (row.receiver_id, row.message_id));
    sent.sort_unstable_by_key(|row| (row.sender_id, row.message_id));
    let mut insert = tx.prepare_cached(
        "INSERT INTO received (receiver_id, message_id, sender_id) VALUES (?1, ?2, ?3)",
    )?;
    for row in received.iter() {
        insert.execute(params![row.receiver_id, row.message_id, row.sender_id])?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO sent (sender_id, message_id, receiver_id) VALUES (?1, ?2, ?3)",
    )?;
    for row in sent.iter() {
        insert.execute(params![row.sender_id, row.message_id, row.receiver_id])?;
    }
    Ok(())
}

/// Indexes every slice's messages past its stored mark straight from the
/// table, in one scan of the tail past the lowest mark (at a start; `OR
/// IGNORE` so a mark that lags what is indexed costs nothing), and queues
/// the receivers' pending ones that are still untaken, as a pass does
/// (`delivery::queue_untaken`). One scan per statement, not one per slice:
/// after a `kill -9` at 5,000 × 1 (a tail of ~150,000 rows) a start took
/// 1.3 s with a scan per slice, 0.7–0.9 s with one.
fn catch_up(tx: &Transaction, lowest: i64) -> rusqlite::Result<()> {
    const CATCH_UP: [&str; 3] = [
        "UPDATE messages SET delivered = 0
         WHERE message_id > ?1 AND delivered = 2 AND receiver_id IS NOT NULL
           AND message_id > (SELECT indexed_through FROM index_slices
                             WHERE slice = receiver_id % ?2)
           AND message_id > (SELECT taken_through FROM users WHERE user_id = receiver_id)",
        "INSERT OR IGNORE INTO received (receiver_id, message_id, sender_id)
         SELECT receiver_id, message_id, sender_id FROM messages
         WHERE message_id > ?1 AND receiver_id IS NOT NULL
           AND message_id > (SELECT indexed_through FROM index_slices
                             WHERE slice = receiver_id % ?2)",
        "INSERT OR IGNORE INTO sent (sender_id, message_id, receiver_id)
         SELECT sender_id, message_id, receiver_id FROM messages
         WHERE message_id > ?1 AND receiver_id IS NOT NULL
           AND message_id > (SELECT indexed_through FROM index_slices
                             WHERE slice = sender_id % ?2)",
    ];
    for sql in CATCH_UP {
        tx.execute(sql, params![lowest, INDEX_SLICES as i64])?;
    }
    Ok(())
}

fn forget_past(tx: &Transaction, highest_stored: i64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM received WHERE message_id > ?1",
        [highest_stored],
    )?;
    tx.execute("DELETE FROM sent WHERE message_id > ?1", [highest_stored])?;
    Ok(())
}

fn read_tail(tx: &Transaction, after: i64) -> rusqlite::Result<Vec<TailRow>> {
    tx.prepare_cached(
        "SELECT receiver_id, sender_id, message_id FROM messages
         WHERE message_id > ?1 AND receiver_id IS NOT NULL
         ORDER BY message_id",
    )?
    .query_map([after], |row| {
        Ok(TailRow {
            receiver_id: row.get(0)?,
            sender_id: row.get(1)?,
            message_id: row.get(2)?,
        })
    })?
    .collect()
}

/// Each slice's stored watermark (0 for a new database).
///
/// A database written with another number of slices (earlier builds had
/// 8) sliced the users differently, so a user's old mark is not
/// their new slice's: every slice then starts from the lowest stored mark,
/// up to which every user's rows were indexed whatever the slicing, and
/// the rows of slices that no longer exist are dropped. The start's
/// catch-up (`INSERT OR IGNORE`) indexes what lies past it.
fn read_marks(tx: &Transaction) -> rusqlite::Result<[i64; INDEX_SLICES]> {
    let stored: Vec<(i64, i64)> = tx
        .prepare("SELECT slice, indexed_through FROM index_slices ORDER BY slice")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let lowest = stored.iter().map(|&(_, mark)| mark).min().unwrap_or(0);
    let same_slicing = stored.len() == INDEX_SLICES
        && stored
            .iter()
            .enumerate()
            .all(|(k, &(slice, _))| slice == k as i64);
    if same_slicing {
        let mut marks = [0; INDEX_SLICES];
        for (slice, mark) in stored {
            marks[slice as usize] = mark;
        }
        return Ok(marks);
    }
    tx.execute(
        "DELETE FROM index_slices WHERE slice >= ?1",
        [INDEX_SLICES as i64],
    )?;
    Ok([lowest; INDEX_SLICES])
}

fn write_mark(tx: &Transaction, slice: usize, through: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO index_slices (slice, indexed_through) VALUES (?1, ?2)
         ON CONFLICT (slice) DO UPDATE SET indexed_through = excluded.indexed_through",
    )?
    .execute(params![slice as i64, through])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn row(message_id: i64, receiver_id: i64) -> TailRow {
        TailRow {
            receiver_id,
            sender_id: 1,
            message_id,
        }
    }

    fn ids(rows: &[TailRow]) -> Vec<i64> {
        rows.iter().map(|row| row.message_id).collect()
    }

    #[test]
    fn id_ordered_rows_answer_ranges_and_drop_from_the_front() {
        let mut rows = IdOrdered::default();
        for id in [2, 4, 6, 8, 10] {
            rows.push(row(id, 7));
        }
        assert_eq!(ids(rows.range(3, 8)), [4, 6, 8]);
        assert_eq!(ids(rows.range(10, 20)), Vec::<i64>::new());
        assert_eq!(ids(rows.range(8, 3)), Vec::<i64>::new(), "an empty range");
        rows.drop_through(5);
        assert_eq!(ids(rows.as_slice()), [6, 8, 10]);
        assert_eq!(ids(rows.range(0, 8)), [6, 8]);
        rows.push(row(12, 7));
        rows.drop_through(8);
        assert_eq!(ids(rows.as_slice()), [10, 12]);
        assert!(
            rows.rows.len() <= 2 * rows.as_slice().len(),
            "the dropped part is compacted away once it is half"
        );
        rows.drop_through(12);
        assert!(rows.is_empty());
        assert_eq!(rows.start, 0, "an emptied list starts over");
    }

    #[test]
    fn dropping_the_tail_keeps_each_receivers_rows_in_step() {
        let mut tail = Tail::new((1..=9).map(|id| row(id, id % 3)).collect());
        tail.drop_through(4);
        assert_eq!(tail.len(), 5);
        for receiver in 0..3 {
            let rows = tail
                .by_receiver
                .get(&receiver)
                .map_or(&[][..], |r| r.as_slice());
            assert!(rows
                .iter()
                .all(|row| row.message_id > 4 && row.receiver_id == receiver));
            assert_eq!(
                rows.len(),
                tail.rows
                    .as_slice()
                    .iter()
                    .filter(|r| r.receiver_id == receiver)
                    .count()
            );
        }
        tail.drop_through(9);
        assert_eq!(tail.len(), 0);
        assert!(
            tail.by_receiver.is_empty(),
            "receivers with no rows left go"
        );
    }

    /// A tail of 1:1 messages among four users (self-messages included),
    /// its front dropped through `dropped`.
    fn tail_of_pairs(pairs: &[(i64, i64)], dropped: i64) -> (Tail, Vec<TailRow>) {
        let rows: Vec<TailRow> = pairs
            .iter()
            .zip(1..)
            .map(|(&(sender_id, receiver_id), message_id)| TailRow {
                receiver_id,
                sender_id,
                message_id,
            })
            .collect();
        let mut tail = Tail::new(rows.clone());
        tail.drop_through(dropped);
        let kept = rows.into_iter().filter(|row| row.message_id > dropped);
        (tail, kept.collect())
    }

    proptest! {
        /// History's and Sync's candidates from memory are what a scan of
        /// the rows would pick, whichever front was dropped.
        #[test]
        fn candidates_are_what_a_scan_picks(
            pairs in proptest::collection::vec((0i64..4, 0i64..4), 0..60),
            dropped in 0i64..30,
            users in (0i64..4, 0i64..4),
            (after, before) in (0i64..70, 0i64..70),
            count in 1usize..8,
        ) {
            let (tail, kept) = tail_of_pairs(&pairs, dropped);
            let (user, peer) = users;
            let between: Vec<i64> = kept
                .iter()
                .rev()
                .filter(|row| row.message_id > after && row.message_id < before)
                .filter(|row| {
                    (row.sender_id, row.receiver_id) == (user, peer)
                        || (row.sender_id, row.receiver_id) == (peer, user)
                })
                .take(count)
                .map(|row| row.message_id)
                .collect();
            prop_assert_eq!(tail.between(users, (after, before - 1), count), between);
            let of: Vec<i64> = kept
                .iter()
                .filter(|row| row.message_id > after)
                .filter(|row| row.sender_id == user || row.receiver_id == user)
                .take(count)
                .map(|row| row.message_id)
                .collect();
            prop_assert_eq!(tail.of(user, after, count), of);
        }
    }

    #[test]
    fn dropping_the_tail_drops_each_senders_rows_too() {
        let (mut tail, _) = tail_of_pairs(&[(1, 2), (1, 3), (2, 1), (1, 1)], 0);
        tail.drop_through(2);
        assert_eq!(ids(tail.from(1, (i64::MIN, i64::MAX))), [4]);
        assert_eq!(ids(tail.from(2, (i64::MIN, i64::MAX))), [3]);
        tail.drop_through(4);
        assert!(tail.by_sender.is_empty(), "senders with no rows left go");
    }
}
