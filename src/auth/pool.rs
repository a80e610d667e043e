//! A bounded pool for password hashing, off the async executor.
//!
//! Argon2 and bcrypt take milliseconds of CPU each; run inline they would stall every other
//! login on the same executor thread. Here at most `workers` hashes run at once, at most
//! `queue` more wait, and anything beyond that is refused at once so the caller can answer
//! with a quick temporary failure instead of unbounded latency.
//!
//! The workers are threads of their own that take the next hash off the queue as soon as
//! they finish one. Handing each hash from a semaphore to a waiting task and on to
//! tokio's blocking threads left the cores idle between hashes (a fifth of the time with
//! bcrypt at cost 5), and spread each worker's scratch over many threads.
//!
//! Each hash works in a [`Scratch`] that the next hash reuses (allocating Argon2's 64 MiB
//! for every hash costs a third of its CPU), at most one per worker; a scratch no hash
//! used between two calls of [`HashPool::release_idle`] is freed, so an idle daemon
//! does not keep the memory of its last burst.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use thiserror::Error;
use tokio::sync::oneshot;

use super::password::Scratch;

/// The largest scratch kept for the next hash: Argon2 at 256 MiB, four times `doveadm
/// pw`'s default. A hash that asks for more (up to the 1 GiB verification allows) gets
/// its memory and gives it back at once.
const MAX_KEPT_SCRATCH_BYTES: usize = 256 * 1024 * 1024 + 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("hash pool is full ({0} requests running or queued)")]
    Busy(usize),
    #[error("hash worker failed")]
    WorkerFailed,
}

#[derive(Debug)]
pub struct HashPool {
    jobs: Arc<Jobs>,
    admitted: AtomicUsize,
    capacity: usize,
    workers: usize,
    spare: Arc<Mutex<Vec<Spare>>>,
}

/// A hash to run, then its result to hand on: after the worker has put its scratch back,
/// so a caller that has its answer finds the scratch kept.
trait Hash: Send {
    fn compute(&mut self, scratch: &mut Scratch);
    fn deliver(self: Box<Self>);
}

type Job = Box<dyn Hash>;

struct Pending<F, T> {
    work: Option<F>,
    result: Option<T>,
    tx: oneshot::Sender<T>,
}

impl<F, T> Hash for Pending<F, T>
where
    F: FnOnce(&mut Scratch) -> T + Send,
    T: Send,
{
    fn compute(&mut self, scratch: &mut Scratch) {
        // Nobody waits for it any more (the client went away): no hash to spend.
        if self.tx.is_closed() {
            return;
        }
        if let Some(work) = self.work.take() {
            self.result = Some(work(scratch));
        }
    }

    fn deliver(self: Box<Self>) {
        let Pending { result, tx, .. } = *self;
        if let Some(result) = result {
            let _ = tx.send(result);
        }
    }
}

/// The queue the workers take hashes from.
#[derive(Default)]
struct Jobs {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Job>,
    closed: bool,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        write!(f, "Jobs({} waiting)", queue.waiting.len())
    }
}

impl Jobs {
    fn push(&self, job: Job) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.waiting.push_back(job);
        drop(queue);
        self.ready.notify_one();
    }

    /// The next hash, or `None` once the pool is dropped.
    fn next(&self) -> Option<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if queue.closed {
                return None;
            }
            if let Some(job) = queue.waiting.pop_front() {
                return Some(job);
            }
            queue = self
                .ready
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn close(&self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.ready.notify_all();
    }
}

/// A scratch between hashes, and whether a hash used it since the last release.
struct Spare {
    scratch: Scratch,
    used: bool,
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Spare({} bytes, used: {})",
            self.scratch.bytes(),
            self.used
        )
    }
}

struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashPool {
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let jobs = Arc::new(Jobs::default());
        let spare = Arc::new(Mutex::new(Vec::new()));
        let mut started = 0;
        for _ in 0..workers {
            let (jobs, spare) = (jobs.clone(), spare.clone());
            let worker = std::thread::Builder::new()
                .name("mailauthd-hash".into())
                .spawn(move || work(&jobs, &spare));
            match worker {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, "cannot start a hash worker thread"),
            }
        }
        if started == 0 {
            // Every hash would wait forever: fail each one at once instead.
            jobs.close();
        }
        HashPool {
            jobs,
            admitted: AtomicUsize::new(0),
            capacity: workers + queue,
            workers,
            spare,
        }
    }

    /// Frees the scratches no hash used since the last call (the daemon calls it every
    /// few seconds); the bytes still kept.
    pub fn release_idle(&self) -> usize {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        spare.retain(|s| s.used);
        for s in spare.iter_mut() {
            s.used = false;
        }
        spare.iter().map(|s| s.scratch.bytes()).sum()
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Requests running or waiting now; a metric and a test hook.
    pub fn depth(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    pub async fn run<T, F>(&self, work: F) -> Result<T, PoolError>
    where
        F: FnOnce(&mut Scratch) -> T + Send + 'static,
        T: Send + 'static,
    {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let _admission = Admission(&self.admitted);
        if before >= self.capacity {
            return Err(PoolError::Busy(before));
        }
        let (tx, rx) = oneshot::channel();
        self.jobs.push(Box::new(Pending {
            work: Some(work),
            result: None,
            tx,
        }));
        // A hash that panicked dropped its sender; a closed pool drops its queue.
        rx.await.map_err(|_| PoolError::WorkerFailed)
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.jobs.close();
    }
}

/// A worker thread: hashes until the pool is dropped, each in a kept scratch.
fn work(jobs: &Jobs, spare: &Mutex<Vec<Spare>>) {
    while let Some(mut job) = jobs.next() {
        let mut scratch = {
            let mut spare = spare.lock().unwrap_or_else(PoisonError::into_inner);
            spare.pop().map(|s| s.scratch).unwrap_or_default()
        };
        // A panic fails this hash only (its caller sees `WorkerFailed`, its sender
        // dropped), not the worker.
        if catch_unwind(AssertUnwindSafe(|| job.compute(&mut scratch))).is_err() {
            continue;
        }
        // At most `workers` scratches exist: each worker holds one at most. One grown past
        // what any sane hash needs (a corrupt row's memory cost) is not kept.
        if scratch.bytes() <= MAX_KEPT_SCRATCH_BYTES {
            spare
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Spare {
                    scratch,
                    used: true,
                });
        }
        job.deliver();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_quickly_when_full_and_recovers() {
        let pool = Arc::new(HashPool::new(1, 1));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let mut held = Vec::new();
        for _ in 0..2 {
            let (pool, rx) = (pool.clone(), release_rx.clone());
            held.push(tokio::spawn(async move {
                pool.run(move |_| {
                    let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
                })
                .await
            }));
        }
        while pool.depth() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|_| ()).await, Err(PoolError::Busy(2)));
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for h in held {
            assert_eq!(h.await.unwrap(), Ok(()));
        }
        assert_eq!(pool.run(|_| 41 + 1).await, Ok(42));
        assert_eq!(pool.depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scratches_are_reused_at_most_one_per_worker_and_freed_when_idle() {
        use crate::auth::password::{verify, verify_in, Verified};
        // Argon2id, m=8 MiB, t=1: big enough to see, cheap enough for a test.
        let stored = super::super::password::hash_argon2id(
            b"pw",
            super::super::password::Argon2Params {
                memory_kib: 8192,
                iterations: 1,
                parallelism: 1,
            },
        )
        .unwrap();
        let pool = Arc::new(HashPool::new(2, 16));
        let mut running = Vec::new();
        for i in 0..12 {
            let (pool, stored) = (pool.clone(), stored.clone());
            running.push(tokio::spawn(async move {
                let password: &[u8] = if i % 3 == 0 { b"wrong" } else { b"pw" };
                pool.run(move |scratch| verify_in(&stored, password, scratch))
                    .await
                    .unwrap()
                    .unwrap()
            }));
        }
        for (i, r) in running.into_iter().enumerate() {
            let want = if i % 3 == 0 {
                Verified::Mismatch
            } else {
                Verified::Match
            };
            assert_eq!(r.await.unwrap(), want, "hash {i}");
        }
        let held = pool.spare.lock().unwrap().len();
        assert!((1..=2).contains(&held), "{held} scratches for 2 workers");
        // Used since the last release: kept, 8 MiB each.
        let kept = pool.release_idle();
        assert_eq!(kept, held * 8 * 1024 * 1024);
        // Not used since: freed.
        assert_eq!(pool.release_idle(), 0);
        assert!(pool.spare.lock().unwrap().is_empty());
        // The answer does not depend on what a reused scratch held before.
        assert_eq!(verify(&stored, b"pw").unwrap(), Verified::Match);
    }

    #[tokio::test]
    async fn a_panicking_hash_fails_alone_and_the_workers_go_on() {
        let pool = HashPool::new(1, 4);
        let failed = pool.run(|_| -> u32 { panic!("a broken hash") }).await;
        assert_eq!(failed, Err(PoolError::WorkerFailed));
        assert_eq!(pool.run(|_| 7).await, Ok(7), "the one worker still hashes");
        assert_eq!(pool.depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_nobody_waits_for_are_not_run() {
        let pool = Arc::new(HashPool::new(1, 8));
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move |_| {
                    started_tx.send(()).unwrap();
                    let _ = release_rx.recv_timeout(Duration::from_secs(10));
                })
                .await
            })
        };
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let abandoned = {
            let (pool, ran) = (pool.clone(), ran.clone());
            tokio::spawn(async move { pool.run(move |_| ran.fetch_add(1, Ordering::SeqCst)).await })
        };
        while pool.depth() < 2 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        release_tx.send(()).unwrap();
        assert_eq!(blocker.await.unwrap(), Ok(()));
        assert_eq!(pool.run(|_| 1).await, Ok(1));
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "the abandoned hash never ran"
        );
    }

    #[tokio::test]
    async fn a_scratch_grown_past_the_limit_is_not_kept() {
        let pool = HashPool::new(1, 1);
        let blocks = MAX_KEPT_SCRATCH_BYTES / 1024 + 1;
        pool.run(move |s| {
            s.argon2_blocks(blocks);
        })
        .await
        .unwrap();
        assert!(
            pool.spare.lock().unwrap().is_empty(),
            "a huge scratch is dropped"
        );
        pool.run(|s| {
            s.argon2_blocks(1024);
        })
        .await
        .unwrap();
        assert_eq!(pool.spare.lock().unwrap().len(), 1, "a normal one is kept");
    }
}
