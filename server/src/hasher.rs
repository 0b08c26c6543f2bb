//! Password hashing off the event loop: a small pool of worker threads that
//! derive and verify PBKDF2 hashes (hundreds of milliseconds each at the
//! default cost) and hand the outcome back through the completion channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::completion::{Completion, CompletionSender, Requester};
use crate::password::{self, PasswordHash};
use crate::priority;

/// Work for a hashing thread.
#[derive(Debug)]
pub enum HashJob {
    /// Hash a new account's secret (Register).
    Derive {
        /// The registering connection and request.
        to: Requester,
        /// The account to create once hashed.
        username: String,
        /// Its email.
        email: String,
        /// The secret to hash.
        secret: String,
    },
    /// Check a login's secret against the stored hash, or against the dummy
    /// hash when the user does not exist (`stored: None`), at equal cost.
    Verify {
        /// The logging-in connection and request.
        to: Requester,
        /// The account, if it exists.
        user_id: Option<i64>,
        /// The secret given.
        secret: String,
        /// The stored PHC string, if the user exists.
        stored: Option<String>,
    },
}

/// The outcome of a [`HashJob`].
#[derive(Debug)]
pub enum HashDone {
    /// A new hash for Register.
    Derived {
        /// The registering connection and request.
        to: Requester,
        /// The account to create.
        username: String,
        /// Its email.
        email: String,
        /// The hash to store.
        hash: PasswordHash,
    },
    /// The verdict for Login.
    Verified {
        /// The logging-in connection and request.
        to: Requester,
        /// The account when the secret matched it; `None` for a wrong secret
        /// or an unknown user alike.
        user_id: Option<i64>,
    },
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum HashQueueError {
    /// The queue is full: answer `rate_limited`.
    Full,
    /// The workers are gone (shutdown).
    Stopped,
}

/// The pool: a bounded job queue shared by the worker threads.
pub struct Hasher {
    jobs: Option<SyncSender<HashJob>>,
    workers: Vec<JoinHandle<()>>,
    /// Set on drop: queued jobs are abandoned rather than hashed.
    stopping: Arc<AtomicBool>,
}

impl Hasher {
    /// Starts `workers` threads hashing new secrets with `iterations`.
    pub fn start(
        workers: usize,
        iterations: u32,
        queue_max: usize,
        done: CompletionSender,
    ) -> std::io::Result<Hasher> {
        let (jobs, queue) = mpsc::sync_channel(queue_max);
        let queue = Arc::new(Mutex::new(queue));
        let dummy = Arc::new(password::dummy_hash(iterations));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(workers);
        for index in 0..workers {
            let queue = Arc::clone(&queue);
            let done = done.clone();
            let dummy = Arc::clone(&dummy);
            let stopping = Arc::clone(&stopping);
            let handle = std::thread::Builder::new()
                .name(format!("hasher-{index}"))
                .spawn(move || work(&queue, &done, iterations, &dummy, &stopping))?;
            handles.push(handle);
        }
        Ok(Hasher {
            jobs: Some(jobs),
            workers: handles,
            stopping,
        })
    }

    /// Queues a job without blocking; on failure the job comes back.
    pub fn submit(&self, job: HashJob) -> Result<(), (HashQueueError, HashJob)> {
        let Some(jobs) = &self.jobs else {
            return Err((HashQueueError::Stopped, job));
        };
        jobs.try_send(job).map_err(|error| match error {
            TrySendError::Full(job) => (HashQueueError::Full, job),
            TrySendError::Disconnected(job) => (HashQueueError::Stopped, job),
        })
    }
}

impl Drop for Hasher {
    /// Closes the queue, abandons queued jobs and joins the workers.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn work(
    queue: &Mutex<Receiver<HashJob>>,
    done: &CompletionSender,
    iterations: u32,
    dummy: &str,
    stopping: &AtomicBool,
) {
    // A burst of logins must not take the CPU from the event loop (which
    // would stall every conversation), only make the logins wait.
    priority::lower_this_thread(priority::BACKGROUND_NICENESS);
    while !stopping.load(Ordering::Acquire) {
        // Hold the lock only while taking a job, not while hashing.
        let job = match queue.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // queue closed: shutdown
        };
        done.send(Completion::Hash(run(job, iterations, dummy)));
    }
}

fn run(job: HashJob, iterations: u32, dummy: &str) -> HashDone {
    match job {
        HashJob::Derive {
            to,
            username,
            email,
            secret,
        } => HashDone::Derived {
            to,
            username,
            email,
            hash: password::hash_password(&secret, iterations),
        },
        HashJob::Verify {
            to,
            user_id,
            secret,
            stored,
        } => {
            // A stored hash that would not verify (malformed, oversized) is
            // a failure at the cost of the dummy, like an unknown user.
            let usable = stored.as_deref().filter(|phc| password::is_verifiable(phc));
            let matched = password::verify_password(&secret, usable.unwrap_or(dummy));
            HashDone::Verified {
                to,
                user_id: user_id.filter(|_| matched && usable.is_some()),
            }
        }
    }
}
