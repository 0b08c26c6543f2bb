//! How the C allocator gives freed memory back to the kernel.
//!
//! glibc gives a thread's arena back (`madvise`) as soon as more than 128
//! KiB lies free at its top, and the next allocation faults the pages in
//! again. SQLite frees the page cache of each temporary b-tree a query
//! opens, so the storage thread did this on every login's queue read:
//! ~4,000 `madvise` calls a second during session resumes, each ~34 µs
//! with its page faults to follow, about a sixth of the thread
//! (BENCHMARKS.md's reading). So freed memory is kept up to
//! [`TRIM_THRESHOLD_BYTES`] per arena, and allocations below
//! [`MMAP_THRESHOLD_BYTES`] come from the arenas rather than from a
//! `mmap` of their own (setting the first turns off glibc's own growth of
//! the second).

/// Free memory an arena keeps at its top before giving it back.
///
/// glibc keeps at most 8 arenas per core, so this holds at most 16 × 4 MiB
/// on a 2-core machine beyond what the threads last used.
pub const TRIM_THRESHOLD_BYTES: i32 = 4 << 20;

/// Allocations from this size up are mapped on their own (and unmapped when
/// freed).
pub const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

/// Applies the thresholds; call once, at start. Returns whether the
/// allocator took them (elsewhere than on glibc there is nothing to set,
/// and it returns true).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters, under its own
    // lock; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_accepts_the_thresholds() {
        assert!(keep_freed_memory());
    }
}
