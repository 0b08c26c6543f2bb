//! Which server message ids this client has already shown, so a message that
//! arrives twice (pushed live and again in a `Sync` page after a reconnect, or
//! pushed again after a resume because it was not confirmed yet) is shown
//! once, and the highest id to `Sync` from next time.

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
    /// Every message addressed to the user up to this id was shown by an
    /// earlier run of this session (see `receipts`): anything at or below
    /// it that arrives now is a duplicate.
    floor: i64,
}

impl SeenIds {
    /// Starts from a saved high-water mark (0 for none).
    pub fn starting_after(highest: i64) -> Self {
        SeenIds {
            highest,
            ..SeenIds::default()
        }
    }

    /// Starts a run that resumes a saved session: `highest` as in
    /// [`SeenIds::starting_after`], and ids up to `floor` (the session's
    /// saved confirmation) count as seen.
    pub fn resuming(highest: i64, floor: i64) -> Self {
        SeenIds {
            highest: highest.max(floor),
            floor,
            ..SeenIds::default()
        }
    }

    /// The highest id seen (or saved); `Sync{since}` starts here.
    pub fn highest(&self) -> i64 {
        self.highest
    }

    /// True when `id` is at or below a floor that was set (0: none).
    fn below_floor(&self, id: i64) -> bool {
        self.floor > 0 && id <= self.floor
    }

    /// True when `id` was recorded recently (or is at or below the floor).
    pub fn contains(&self, id: i64) -> bool {
        self.below_floor(id) || self.recent.contains(&id)
    }

    /// Records `id`; returns false when it was already recorded (or is at
    /// or below the floor).
    pub fn record(&mut self, id: i64) -> bool {
        self.highest = self.highest.max(id);
        if self.below_floor(id) || !self.recent.insert(id) {
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
    fn a_resumed_session_drops_what_an_earlier_run_showed() {
        let mut seen = SeenIds::resuming(30, 20);
        assert_eq!(seen.highest(), 30);
        assert!(!seen.record(20));
        assert!(!seen.record(3));
        assert!(seen.contains(19));
        assert!(seen.record(21));
        assert!(!seen.record(21));
        assert_eq!(SeenIds::resuming(5, 9).highest(), 9);
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
