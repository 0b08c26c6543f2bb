//! When recent message ids were stored, so an index pass can leave the
//! youngest rows for later.
//!
//! A pass puts every covered 1:1 message its receiver has not taken yet into
//! the undelivered index (`delivery::queue_untaken`). A receipts device
//! confirms what it holds once per [`TICK`](crate::config::TICK), so a pass
//! over rows a few milliseconds old found nearly all of them untaken: at
//! 5,000 users the undelivered index was a quarter of the pages written, for
//! rows that were confirmed a moment later. Passes therefore cover only rows
//! stored at least [`INDEX_AGE`] ago (unless the tail is at its bound).
//! Measured (12 s runs, fresh servers, alternating with the server before
//! this): at 5,000 users × window 1, 28,408 and 27,311 msg/s against 24,600
//! and 25,781, 8.6 KB written per message against 10.6 KB, and 53–161
//! messages in the undelivered index at the stop against ~200,000; at
//! 1,000 × 4 and 100 × 16 throughput the same, writes −25 % at 1,000 × 4.
//! The cost: the tail is longer (what arrives in `INDEX_AGE`); the queries
//! read it from memory (`indexes.rs`), so only its memory grows.
//!
//! The times are samples, each a store that a later one replaced as the
//! newest once [`SAMPLE_EVERY`] had passed since the last sample, plus the
//! newest store: at most `2 × INDEX_AGE / SAMPLE_EVERY + 3` entries of 16
//! bytes (two samples may fall close together, one per period at most).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::TICK;

/// How old a row must be before an index pass covers it: a confirm period
/// and a fifth, so a device that received it at once has confirmed it.
pub(super) const INDEX_AGE: Duration = Duration::from_millis(TICK.as_millis() as u64 * 6 / 5);

/// How far apart the samples are: a row waits at most this much longer
/// than [`INDEX_AGE`].
const SAMPLE_EVERY: Duration = Duration::from_millis(INDEX_AGE.as_millis() as u64 / 8);

/// Samples of (when, the highest id stored by then), oldest first.
#[derive(Default)]
pub(super) struct StoredTimes {
    samples: VecDeque<(Instant, i64)>,
    /// The newest store, which may fall between samples.
    newest: Option<(Instant, i64)>,
}

impl StoredTimes {
    /// Ids up to `highest_stored` are stored at `now`.
    pub(super) fn stored(&mut self, now: Instant, highest_stored: i64) {
        if self.newest.is_some_and(|(_, id)| id >= highest_stored) {
            return;
        }
        // The store this one replaces as the newest becomes a sample when
        // one is due: its time is kept, so its rows never wait for a later
        // store's (which may come much later) to age.
        let sample_due = self
            .samples
            .back()
            .is_none_or(|&(at, _)| now.saturating_duration_since(at) >= SAMPLE_EVERY);
        if let Some(previous) = self.newest.filter(|_| sample_due) {
            self.samples.push_back(previous);
        }
        self.newest = Some((now, highest_stored));
        // Keep one sample at or before the cutoff: older ones answer nothing.
        if let Some(cutoff) = now.checked_sub(INDEX_AGE) {
            while self.samples.get(1).is_some_and(|&(at, _)| at <= cutoff) {
                self.samples.pop_front();
            }
        }
    }

    /// The highest id stored at least [`INDEX_AGE`] before `now` (0 if none
    /// is known to be that old).
    pub(super) fn aged_through(&self, now: Instant) -> i64 {
        let Some(cutoff) = now.checked_sub(INDEX_AGE) else {
            return 0;
        };
        if let Some((at, id)) = self.newest {
            if at <= cutoff {
                return id;
            }
        }
        self.samples
            .iter()
            .take_while(|&&(at, _)| at <= cutoff)
            .last()
            .map_or(0, |&(_, id)| id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_stored_an_index_age_ago_are_aged() {
        let start = Instant::now();
        let mut times = StoredTimes::default();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let age = INDEX_AGE.as_millis() as u64;
        times.stored(at(0), 10);
        times.stored(at(1), 20); // its time is kept once 30 replaces it
        times.stored(at(age / 2), 30);
        assert_eq!(times.aged_through(at(age - 1)), 0, "nothing old enough");
        assert_eq!(times.aged_through(at(age)), 10, "the first sample");
        assert_eq!(
            times.aged_through(at(age + 1)),
            20,
            "20 ages at its own time, though 30 came within a sample period"
        );
        assert_eq!(times.aged_through(at(age + age / 2)), 30);
        assert_eq!(
            times.aged_through(at(10 * age)),
            30,
            "the newest store ages too, though no store follows it"
        );
    }

    #[test]
    fn the_samples_stay_few_however_many_stores() {
        let start = Instant::now();
        let mut times = StoredTimes::default();
        for ms in 0..10_000u64 {
            times.stored(start + Duration::from_millis(ms), ms as i64);
        }
        let bound = 2 * (INDEX_AGE.as_millis() / SAMPLE_EVERY.as_millis()) as usize + 3;
        assert!(times.len() <= bound, "{} samples", times.len());
        let now = start + Duration::from_millis(10_000);
        let aged = times.aged_through(now);
        let oldest_allowed = 10_000 - (INDEX_AGE + SAMPLE_EVERY).as_millis() as i64;
        assert!(
            (oldest_allowed..=10_000 - INDEX_AGE.as_millis() as i64).contains(&aged),
            "aged through {aged}"
        );
    }

    #[test]
    fn a_store_of_nothing_new_changes_nothing() {
        let start = Instant::now();
        let mut times = StoredTimes::default();
        times.stored(start, 5);
        times.stored(start + INDEX_AGE, 5);
        assert_eq!(times.aged_through(start + INDEX_AGE), 5, "stored at start");
    }
}
