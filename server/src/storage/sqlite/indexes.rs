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
//! one slice forward, touching an eighth of the pages (~1–2 ms).
//!
//! A user's 1:1 messages up to their slice's watermark are in the indexes;
//! queries read the rest — the unindexed tail — by `message_id` range, so
//! every answer is the same whichever passes have run. The tail's 1:1 rows
//! are kept in memory (24 bytes each, at most about `INDEX_TAIL_MAX` plus a
//! pass), in id order and again by receiver: passes insert from the first,
//! and a confirmation reads only its own user's rows from the second (it
//! scanned the whole tail, ~8,000 rows, per confirmation: at 5,000 devices
//! confirming once a second that was an eighth of the storage thread).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::storage::NewMessage;

/// Slices of users (by `user_id` modulo this), each indexed by its own pass.
pub(super) const INDEX_SLICES: usize = 8;

/// Rows of the tail one pass covers for its slice.
pub(super) const INDEX_PASS_ROWS: i64 = 1_024;

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

/// The unindexed tail, oldest first, and the same rows by receiver.
#[derive(Default)]
struct Tail {
    rows: Vec<TailRow>,
    by_receiver: HashMap<i64, Vec<TailRow>>,
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
    }

    /// Drops the rows up to `through` (every index has them now), touching
    /// only the receivers of those rows.
    fn drop_through(&mut self, through: i64) {
        let mut receivers: Vec<i64> = self
            .rows
            .iter()
            .filter(|row| row.message_id <= through)
            .map(|row| row.receiver_id)
            .collect();
        receivers.sort_unstable();
        receivers.dedup();
        self.rows.retain(|row| row.message_id > through);
        for receiver in receivers {
            if let Some(rows) = self.by_receiver.get_mut(&receiver) {
                rows.retain(|row| row.message_id > through);
                if rows.is_empty() {
                    self.by_receiver.remove(&receiver);
                }
            }
        }
    }
}

impl Indexes {
    /// Reads the watermarks and brings every slice up to `highest_stored`
    /// (what a previous run's passes left behind), so a start begins with
    /// an empty tail.
    pub(super) fn open(conn: &mut Connection, highest_stored: i64) -> rusqlite::Result<Indexes> {
        let tx = conn.transaction()?;
        for slice in 0..INDEX_SLICES {
            let mark = read_mark(&tx, slice)?;
            if mark < highest_stored {
                catch_up(&tx, slice, mark)?;
            } else if mark > highest_stored {
                // Commits lost with the machine (synchronous = NORMAL) that
                // a pass had indexed: their ids are not in the table.
                forget_past(&tx, highest_stored)?;
            }
            write_mark(&tx, slice, highest_stored)?;
        }
        tx.commit()?;
        Ok(Indexes {
            marks: [highest_stored; INDEX_SLICES],
            tail: Some(Tail::default()),
        })
    }

    /// The user's 1:1 messages up to here are in the indexes.
    pub(super) fn through(&self, user_id: i64) -> i64 {
        self.marks[slice_of(user_id)]
    }

    /// Every 1:1 message up to here is in the indexes.
    pub(super) fn lowest(&self) -> i64 {
        self.marks.iter().copied().min().unwrap_or(0)
    }

    /// The 1:1 messages past the lowest watermark, read from the database
    /// if a rolled-back batch left them unknown.
    pub(super) fn tail(&mut self, tx: &Transaction) -> rusqlite::Result<&[TailRow]> {
        Ok(&self.loaded_tail(tx)?.rows)
    }

    /// The tail's 1:1 messages to `receiver_id`.
    pub(super) fn tail_to(
        &mut self,
        tx: &Transaction,
        receiver_id: i64,
    ) -> rusqlite::Result<&[TailRow]> {
        let tail = self.loaded_tail(tx)?;
        Ok(tail
            .by_receiver
            .get(&receiver_id)
            .map_or(&[], Vec::as_slice))
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

    /// Moves the slice furthest behind up to `INDEX_PASS_ROWS` rows towards
    /// `highest_stored`, in one transaction. Returns whether anything was
    /// left to index.
    pub(super) fn pass(
        &mut self,
        conn: &mut Connection,
        highest_stored: i64,
    ) -> rusqlite::Result<bool> {
        let slice = self.slice_furthest_behind();
        let from = self.marks[slice];
        let to = highest_stored.min(from + INDEX_PASS_ROWS);
        if to <= from {
            return Ok(false);
        }
        let tx = conn.transaction()?;
        let rows = self.tail(&tx)?;
        let covered = |user: fn(&TailRow) -> i64| -> Vec<TailRow> {
            rows.iter()
                .filter(|row| row.message_id > from && row.message_id <= to)
                .filter(|row| slice_of(user(row)) == slice)
                .copied()
                .collect()
        };
        let mut received = covered(|row| row.receiver_id);
        let mut sent = covered(|row| row.sender_id);
        insert_rows(&tx, &mut received, &mut sent)?;
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

/// Indexes a slice's messages past `mark` straight from the table (at a
/// start; `OR IGNORE` so a mark that lags what is indexed costs nothing).
fn catch_up(tx: &Transaction, slice: usize, mark: i64) -> rusqlite::Result<()> {
    const CATCH_UP: [&str; 2] = [
        "INSERT OR IGNORE INTO received (receiver_id, message_id, sender_id)
         SELECT receiver_id, message_id, sender_id FROM messages
         WHERE message_id > ?1 AND receiver_id IS NOT NULL AND receiver_id % ?2 = ?3",
        "INSERT OR IGNORE INTO sent (sender_id, message_id, receiver_id)
         SELECT sender_id, message_id, receiver_id FROM messages
         WHERE message_id > ?1 AND receiver_id IS NOT NULL AND sender_id % ?2 = ?3",
    ];
    for sql in CATCH_UP {
        tx.execute(sql, params![mark, INDEX_SLICES as i64, slice as i64])?;
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

fn read_mark(tx: &Transaction, slice: usize) -> rusqlite::Result<i64> {
    let mark = tx
        .prepare_cached("SELECT indexed_through FROM index_slices WHERE slice = ?1")?
        .query_row([slice as i64], |row| row.get(0))
        .optional()?;
    Ok(mark.unwrap_or(0))
}

fn write_mark(tx: &Transaction, slice: usize, through: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO index_slices (slice, indexed_through) VALUES (?1, ?2)
         ON CONFLICT (slice) DO UPDATE SET indexed_through = excluded.indexed_through",
    )?
    .execute(params![slice as i64, through])?;
    Ok(())
}
