//! Thread priorities: background threads (password hashing, WAL
//! checkpoints) run at a lower priority than the event loop and the storage
//! writer, so on a small machine a burst of their work delays only itself.

/// Niceness of background threads (0 is normal, 19 the lowest).
pub const BACKGROUND_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority to `niceness`
/// (on Linux, per thread). Failure only costs fairness, so it is logged.
pub fn lower_this_thread(niceness: libc::c_int) {
    // SAFETY: gettid and setpriority take no pointers; on Linux,
    // PRIO_PROCESS with a thread id applies to that thread only.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, niceness)
    };
    if result != 0 {
        log::debug!("cannot lower a background thread's priority");
    }
}
