//! The WAL checkpointer: a thread with its own SQLite connection that copies
//! the write-ahead log back into the database file in the background.
//!
//! SQLite's automatic checkpoint runs inside the committing writer, so every
//! few thousand pages one commit — and every Ack waiting on it — would stall
//! for the checkpoint's copy and fsync (measured: Ack p99 of 360 ms at 10,000
//! messages/s). A PASSIVE checkpoint from another connection never blocks the
//! writer, so the storage thread keeps committing while this one copies and
//! syncs. The writer keeps a far-off automatic checkpoint only as a backstop.
//!
//! Small and often: a checkpoint still holds up the writer while the
//! database file syncs (more the more pages it copies), so the checkpointer
//! runs [`CHECKPOINT_INTERVAL`] after the first commit it has not copied yet,
//! and sleeps for good when nothing was committed. At 10,000 messages/s, the
//! same run's e2e p99 at intervals of 2 s / 250 ms / 100 ms / 50 ms / 25 ms /
//! 10 ms was 74–91 / 2.8–3.3 / 2.6–9.6 / 1.8–2.5 / 1.7–2.0 / 1.6–2.4 ms, and
//! p99.9 146–162 / 13–23 / 9–21 / 6–10 / 3.7–4.9 / 4.2–4.9 ms; closed-loop
//! throughput was the same at 25 ms as at 250 ms (fresh release servers,
//! `chat-load messages --users 100 --rate 10000`, builds alternating).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How long after a commit the checkpointer copies the WAL back (at most one
/// checkpoint per interval under load).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(25);

/// The running checkpointer; stops and joins on drop.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`.
    pub fn start(path: &Path) -> std::io::Result<Checkpointer> {
        let stop = Arc::new(AtomicBool::new(false));
        let path: PathBuf = path.to_owned();
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || run(&path, &thread_stop))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    /// Something was committed: checkpoint within [`CHECKPOINT_INTERVAL`].
    /// Costs a futex wake only when the checkpointer is asleep.
    pub fn committed(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn run(path: &Path, stop: &AtomicBool) {
    crate::priority::lower_this_thread(crate::priority::BACKGROUND_NICENESS);
    let conn = match Connection::open(path) {
        Ok(conn) => conn,
        Err(error) => {
            log::error!("checkpointer: cannot open the database: {error}");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(1));
    loop {
        // Until a commit (or the stop) unparks it; a commit made while the
        // checkpoint below ran leaves the token, so under load this loop
        // checkpoints once per interval and when idle it sleeps.
        std::thread::park();
        if stop.load(Ordering::Acquire) {
            break;
        }
        std::thread::sleep(CHECKPOINT_INTERVAL);
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            log::warn!("checkpointer: {error}");
        }
    }
}
