//! chat-load's own CPU over a run, from `/proc/self`: whether the load
//! generator, not the server, may have been the bottleneck. Printed with
//! every result and kept in its JSON (`load_cpu`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`: 100 on every Linux
/// architecture, whatever the kernel's own tick rate).
const TICKS_PER_SEC: f64 = 100.0;

/// A thread busier than this share of one core may have been what limited
/// the run.
pub const BUSY_THREAD_SHARE: f64 = 0.9;

/// How often the threads' CPU is sampled: a thread that ends is counted as
/// of its last sample (at most this much of its CPU is missed).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// When the run began, and each thread's CPU as last sampled (by thread
/// id; the load's threads end before the result is printed).
pub struct CpuClock {
    started: Instant,
    process_secs: f64,
    threads: Arc<Mutex<HashMap<String, f64>>>,
}

/// chat-load's CPU over a run.
#[derive(Clone, Debug, Serialize)]
pub struct CpuShare {
    /// Wall-clock seconds since the clock started.
    pub wall_secs: f64,
    /// CPU seconds of the whole process (user + system).
    pub process_secs: f64,
    /// The process's CPU as a share of one core (can pass 1 with threads).
    pub share_of_core: f64,
    /// The busiest thread's CPU seconds since it started.
    pub busiest_thread_secs: f64,
    /// The busiest thread's CPU as a share of one core.
    pub busiest_thread_share: f64,
}

impl CpuClock {
    /// Starts measuring now, with a thread sampling the others every
    /// [`SAMPLE_EVERY`] for as long as the process runs.
    pub fn start() -> CpuClock {
        let threads = Arc::new(Mutex::new(HashMap::new()));
        let sampled = Arc::clone(&threads);
        let sampler = std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || loop {
                sample_threads(&sampled);
                std::thread::sleep(SAMPLE_EVERY);
            });
        if let Err(error) = sampler {
            eprintln!("chat-load: no CPU sampling thread: {error}");
        }
        CpuClock {
            started: Instant::now(),
            process_secs: stat_cpu_secs("/proc/self/stat").unwrap_or(0.0),
            threads,
        }
    }

    /// The CPU used since [`CpuClock::start`]; `None` without `/proc`.
    pub fn share(&self) -> Option<CpuShare> {
        let wall_secs = self.started.elapsed().as_secs_f64().max(f64::EPSILON);
        let process_secs = stat_cpu_secs("/proc/self/stat")? - self.process_secs;
        sample_threads(&self.threads);
        let busiest_thread_secs = self
            .threads
            .lock()
            .ok()?
            .values()
            .copied()
            .fold(0.0, f64::max);
        Some(CpuShare {
            wall_secs,
            process_secs,
            share_of_core: process_secs / wall_secs,
            busiest_thread_secs,
            busiest_thread_share: (busiest_thread_secs / wall_secs).min(1.0),
        })
    }
}

impl CpuShare {
    /// One line for the result table.
    pub fn describe(&self) -> String {
        format!(
            "{:.2} s in {:.1} s: {:.0}% of a core (busiest thread {:.0}%)",
            self.process_secs,
            self.wall_secs,
            self.share_of_core * 100.0,
            self.busiest_thread_share * 100.0
        )
    }

    /// Whether a thread was busy enough to have limited the run.
    pub fn maybe_the_bottleneck(&self) -> bool {
        self.busiest_thread_share >= BUSY_THREAD_SHARE
    }
}

/// Records every live thread's CPU so far.
fn sample_threads(threads: &Mutex<HashMap<String, f64>>) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let now: Vec<(String, f64)> = tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let secs = stat_cpu_secs(task.path().join("stat"))?;
            Some((task.file_name().to_string_lossy().into_owned(), secs))
        })
        .collect();
    if let Ok(mut threads) = threads.lock() {
        threads.extend(now);
    }
}

/// utime + stime of a `/proc/…/stat` file, in seconds.
fn stat_cpu_secs(path: impl AsRef<std::path::Path>) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_stat_cpu_secs(&text)
}

/// utime + stime (fields 14 and 15) of a `stat` line; the name in
/// parentheses may hold spaces, so fields are counted after its `)`.
fn parse_stat_cpu_secs(stat: &str) -> Option<f64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_after_a_name_with_spaces() {
        let stat = "4242 (chat load) R 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_secs(stat), Some(3.25));
    }

    #[test]
    fn a_short_line_is_none() {
        assert_eq!(parse_stat_cpu_secs("1 (x) R 1 2"), None);
    }

    #[test]
    fn this_process_has_a_share() {
        let clock = CpuClock::start();
        let mut spin = 0u64;
        for i in 0..2_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        assert!(spin > 0);
        let share = clock.share().expect("/proc/self is readable on Linux");
        assert!(share.process_secs >= 0.0 && share.wall_secs > 0.0);
        assert!(share.busiest_thread_share <= 1.0);
    }
}
