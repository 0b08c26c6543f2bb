//! Which server message ids this client has already shown, so a message that
//! arrives twice (pushed live and again in a `Sync` page after a reconnect) is
//! shown once, and the highest id to `Sync` from next time.

use std::collections::{HashSet, VecDeque};

/// How many recent ids are remembered for duplicate checks. Duplicates come
/// only from the overlap between live pushes and one catch-up, which is at
/// most a few `Sync` pages (500 each), so 10,000 is ample while staying small.
const REMEMBERED_IDS_MAX: usize = 10_000;

/// Recently seen message ids and the highest one.
#[derive(Debug, Default)]
pub struct SeenIds {
    recent: HashSet<i64>,
    order: VecDeque<i64>,
    highest: i64,
}

impl SeenIds {
    /// Starts from a saved high-water mark (0 for none).
    pub fn starting_after(highest: i64) -> Self {
        SeenIds {
            highest,
            ..SeenIds::default()
        }
    }

    /// The highest id seen (or saved); `Sync{since}` starts here.
    pub fn highest(&self) -> i64 {
        self.highest
    }

    /// True when `id` was recorded recently.
    pub fn contains(&self, id: i64) -> bool {
        self.recent.contains(&id)
    }

    /// Records `id`; returns false when it was already recorded.
    pub fn record(&mut self, id: i64) -> bool {
        self.highest = self.highest.max(id);
        if !self.recent.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > REMEMBERED_IDS_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.recent.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_id_once_and_tracks_the_highest() {
        let mut seen = SeenIds::starting_after(10);
        assert_eq!(seen.highest(), 10);
        assert!(seen.record(12));
        assert!(seen.record(11));
        assert!(!seen.record(12));
        assert!(seen.contains(11));
        assert_eq!(seen.highest(), 12);
    }

    #[test]
    fn memory_is_bounded() {
        let mut seen = SeenIds::default();
        for id in 0..(REMEMBERED_IDS_MAX as i64 + 5) {
            seen.record(id);
        }
        assert_eq!(seen.recent.len(), REMEMBERED_IDS_MAX);
        assert!(!seen.contains(0));
        assert!(seen.contains(REMEMBERED_IDS_MAX as i64 + 4));
    }
}
