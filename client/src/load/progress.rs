//! Shared counters and the progress line printed on long runs.
//!
//! Shards bump relaxed atomics; one printer thread reads them every few
//! seconds and writes one line to stderr, so stdout keeps only the table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Counters every scenario may bump.
#[derive(Default)]
pub struct Progress {
    /// Connections currently open.
    pub connections: AtomicU64,
    /// Requests answered successfully (registrations, logins).
    pub logins: AtomicU64,
    /// Messages acked.
    pub acked: AtomicU64,
    /// Messages delivered to a recipient.
    pub delivered: AtomicU64,
    /// Errors of any kind.
    pub errors: AtomicU64,
    stop: AtomicBool,
}

impl Progress {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a counter.
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The printer thread; stops and joins on drop.
pub struct Printer {
    progress: Arc<Progress>,
    handle: Option<JoinHandle<()>>,
}

impl Printer {
    /// Prints a line every `every_secs` (no thread when 0).
    pub fn start(label: &'static str, progress: Arc<Progress>, every_secs: f64) -> Printer {
        let handle = (every_secs > 0.0).then(|| {
            let progress = progress.clone();
            std::thread::spawn(move || print_loop(label, &progress, every_secs))
        });
        Printer { progress, handle }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn print_loop(label: &str, progress: &Progress, every_secs: f64) {
    let started = Instant::now();
    let mut last = Instant::now();
    let mut next = Instant::now() + Duration::from_secs_f64(every_secs);
    let (mut last_acked, mut last_delivered, mut last_logins) = (0, 0, 0);
    while !progress.stop.load(Ordering::Relaxed) {
        // Sleep in short steps so a finished scenario is not held up.
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs_f64(every_secs);
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        let acked = progress.acked.load(Ordering::Relaxed);
        let delivered = progress.delivered.load(Ordering::Relaxed);
        let logins = progress.logins.load(Ordering::Relaxed);
        eprintln!(
            "[{label} {:6.1}s] connections {} | logins {} ({:.0}/s) | acked {} ({:.0}/s) | delivered {} ({:.0}/s) | errors {}",
            started.elapsed().as_secs_f64(),
            progress.connections.load(Ordering::Relaxed),
            logins,
            logins.saturating_sub(last_logins) as f64 / secs,
            acked,
            acked.saturating_sub(last_acked) as f64 / secs,
            delivered,
            delivered.saturating_sub(last_delivered) as f64 / secs,
            progress.errors.load(Ordering::Relaxed),
        );
        (last_acked, last_delivered, last_logins) = (acked, delivered, logins);
    }
}
