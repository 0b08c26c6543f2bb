//! Password hashing off the event loop: a small pool of worker threads that
//! derive and verify PBKDF2 hashes (hundreds of milliseconds each at the
//! default cost) and hand the outcome back through the completion channel.
//!
//! **Fair share.** The jobs wait in a [`FairQueue`]: one queue per client
//! address (IPv6 by /64), served in turn, one job per address per round. A
//! flood of logins from one address therefore delays a login from another by
//! about one hash per busy address (plus the hashes already running), not by
//! the length of the flood. Each address may have at most
//! [`crate::config::HASH_JOBS_PER_ADDRESS_MAX`] jobs waiting and all
//! addresses together [`crate::config::HASH_QUEUE_MAX`]; past either, the job
//! comes back and the client gets `rate_limited`. (Per account, at most one
//! password attempt is in flight: see [`crate::rate_limit`].)

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

use crate::completion::{Completion, CompletionSender, QueueError, Requester};
use crate::password::{self, PasswordHash};
use crate::priority;
use crate::rate_limit::address_key;

/// Work for a hashing thread.
#[derive(Debug)]
pub enum HashJob {
    /// Hash a new account's secret (Register).
    Derive {
        /// The registering connection and request.
        to: Requester,
        /// The client's address: whose share of the queue the job takes.
        from: IpAddr,
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
        /// The client's address: whose share of the queue the job takes.
        from: IpAddr,
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

impl HashJob {
    /// The client address whose share of the queue this job takes.
    fn address(&self) -> IpAddr {
        match self {
            HashJob::Derive { from, .. } | HashJob::Verify { from, .. } => address_key(*from),
        }
    }
}

/// A job the queue would not take, with the reason (boxed: the refusal
/// path is rare and the job is large).
pub type Refused = Box<(QueueError, HashJob)>;

/// Jobs waiting for a worker, one queue per address, served in turn.
#[derive(Debug, Default)]
pub struct FairQueue {
    /// The waiting jobs of each address that has any.
    waiting: HashMap<IpAddr, VecDeque<HashJob>>,
    /// Addresses with waiting jobs, in the order they are served.
    turns: VecDeque<IpAddr>,
    /// Jobs waiting in all.
    len: usize,
    /// Most jobs waiting in all.
    max: usize,
    /// Most jobs waiting per address.
    max_per_address: usize,
    /// Set at shutdown: no more jobs; waiting ones are abandoned.
    closed: bool,
}

impl FairQueue {
    /// An empty queue holding at most `max` jobs, `max_per_address` of any
    /// one address.
    pub fn new(max: usize, max_per_address: usize) -> Self {
        FairQueue {
            max,
            max_per_address,
            ..FairQueue::default()
        }
    }

    /// Queues `job` at the end of its address's queue, or gives it back.
    pub fn push(&mut self, job: HashJob) -> Result<(), Refused> {
        if self.closed {
            return Err(Box::new((QueueError::Stopped, job)));
        }
        let address = job.address();
        let queued = self.waiting.get(&address).map_or(0, VecDeque::len);
        if self.len >= self.max || queued >= self.max_per_address {
            return Err(Box::new((QueueError::Full, job)));
        }
        if queued == 0 {
            self.turns.push_back(address);
        }
        self.waiting.entry(address).or_default().push_back(job);
        self.len += 1;
        Ok(())
    }

    /// The next job: the oldest of the address whose turn it is (that
    /// address then waits behind every other address with jobs).
    pub fn pop(&mut self) -> Option<HashJob> {
        // `turns` names exactly the addresses in `waiting`; an address
        // without a queue would only be skipped.
        while let Some(address) = self.turns.pop_front() {
            let Some(queue) = self.waiting.get_mut(&address) else {
                continue;
            };
            let job = queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&address);
            } else {
                self.turns.push_back(address);
            }
            if let Some(job) = job {
                self.len -= 1;
                return Some(job);
            }
        }
        None
    }
}

/// The queue and the signal that it has work, shared with the workers.
type SharedQueue = Arc<(Mutex<FairQueue>, Condvar)>;

/// The pool: a bounded fair job queue shared by the worker threads.
pub struct Hasher {
    queue: SharedQueue,
    workers: Vec<JoinHandle<()>>,
}

impl Hasher {
    /// Starts `workers` threads hashing new secrets with `iterations`, with
    /// `queue` holding the jobs that wait, timing each hash into `timing`.
    pub fn start(
        (workers, iterations): (usize, u32),
        queue: FairQueue,
        done: CompletionSender,
        timing: Histogram,
    ) -> std::io::Result<Hasher> {
        let queue: SharedQueue = Arc::new((Mutex::new(queue), Condvar::new()));
        let dummy = Arc::new(password::dummy_hash(iterations));
        let mut hasher = Hasher {
            queue,
            workers: Vec::with_capacity(workers),
        };
        for index in 0..workers {
            let queue = Arc::clone(&hasher.queue);
            let done = done.clone();
            let dummy = Arc::clone(&dummy);
            let timing = timing.clone();
            // On failure, dropping `hasher` stops the workers already started.
            let handle = std::thread::Builder::new()
                .name(format!("hasher-{index}"))
                .spawn(move || work(&queue, &done, (iterations, &dummy), &timing))?;
            hasher.workers.push(handle);
        }
        Ok(hasher)
    }

    /// Queues a job without blocking; on failure the job comes back.
    pub fn submit(&self, job: HashJob) -> Result<(), Refused> {
        let (queue, ready) = &*self.queue;
        let Ok(mut queue) = queue.lock() else {
            // A worker panicked holding the lock: no more hashing.
            return Err(Box::new((QueueError::Stopped, job)));
        };
        queue.push(job)?;
        ready.notify_one();
        Ok(())
    }
}

impl Drop for Hasher {
    /// Closes the queue, abandons queued jobs and joins the workers.
    fn drop(&mut self) {
        let (queue, ready) = &*self.queue;
        if let Ok(mut queue) = queue.lock() {
            queue.closed = true;
        }
        ready.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn work(
    queue: &SharedQueue,
    done: &CompletionSender,
    (iterations, dummy): (u32, &str),
    timing: &Histogram,
) {
    // A burst of logins must not take the CPU from the event loop (which
    // would stall every conversation), only make the logins wait.
    priority::lower_this_thread(priority::BACKGROUND_NICENESS);
    while let Some(job) = next_job(queue) {
        let started = Instant::now();
        let outcome = run(job, iterations, dummy);
        timing.observe(started.elapsed().as_secs_f64());
        done.send(Completion::Hash(outcome));
    }
}

/// Waits for the next job; `None` once the queue is closed (shutdown).
/// The lock is held only while taking a job, not while hashing.
fn next_job(queue: &SharedQueue) -> Option<HashJob> {
    let (queue, ready) = &**queue;
    let mut queue = queue.lock().ok()?;
    loop {
        if queue.closed {
            return None;
        }
        if let Some(job) = queue.pop() {
            return Some(job);
        }
        queue = ready.wait(queue).ok()?;
    }
}

fn run(job: HashJob, iterations: u32, dummy: &str) -> HashDone {
    match job {
        HashJob::Derive {
            to,
            username,
            email,
            secret,
            ..
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
            ..
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::ConnId;

    fn job(from: &str, serial: u64) -> HashJob {
        HashJob::Verify {
            to: Requester::anonymous(ConnId { slot: 0, serial }),
            from: from.parse().unwrap(),
            user_id: None,
            secret: String::new(),
            stored: None,
        }
    }

    fn serial(job: HashJob) -> u64 {
        match job {
            HashJob::Verify { to, .. } | HashJob::Derive { to, .. } => to.conn.serial,
        }
    }

    #[test]
    fn addresses_are_served_in_turn_whatever_their_backlog() {
        let mut queue = FairQueue::new(100, 50);
        for i in 0..40 {
            queue.push(job("10.0.0.1", i)).unwrap();
        }
        queue.push(job("10.0.0.2", 100)).unwrap();
        queue.push(job("10.0.0.3", 200)).unwrap();
        let first: Vec<u64> = (0..4).filter_map(|_| queue.pop()).map(serial).collect();
        assert_eq!(
            first,
            vec![0, 100, 200, 1],
            "the quiet addresses wait one job"
        );
        assert_eq!(queue.len, 38);
    }

    #[test]
    fn an_address_gets_its_share_and_the_queue_its_total() {
        let mut queue = FairQueue::new(5, 3);
        for i in 0..3 {
            queue.push(job("10.0.0.1", i)).unwrap();
        }
        let (error, _) = *queue.push(job("10.0.0.1", 3)).unwrap_err();
        assert_eq!(error, QueueError::Full);
        // One /64 is one address.
        queue.push(job("2001:db8::1", 4)).unwrap();
        queue.push(job("2001:db8::2", 5)).unwrap();
        assert!(queue.push(job("10.0.0.9", 6)).is_err(), "the total is full");
        assert!(queue.pop().is_some());
        queue.push(job("10.0.0.9", 6)).unwrap();
    }

    #[test]
    fn a_closed_queue_takes_nothing() {
        let mut queue = FairQueue::new(5, 5);
        queue.closed = true;
        let (error, _) = *queue.push(job("10.0.0.1", 0)).unwrap_err();
        assert_eq!(error, QueueError::Stopped);
    }
}
