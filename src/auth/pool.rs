//! A bounded pool for password hashing, off the async executor.
//!
//! Argon2 and bcrypt take milliseconds of CPU each; run inline they would stall every other
//! login on the same executor thread. Here at most `workers` hashes run at once, at most
//! `queue` more wait, and anything beyond that is refused at once so the caller can answer
//! with a quick temporary failure instead of unbounded latency.
//!
//! Each hash works in a [`Scratch`] that the next hash reuses (allocating Argon2's 64 MiB
//! for every hash costs a third of its CPU), at most one per worker; a scratch no hash
//! used between two calls of [`HashPool::release_idle`] is freed, so an idle daemon
//! does not keep the memory of its last burst.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use thiserror::Error;
use tokio::sync::Semaphore;

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
    running: Arc<Semaphore>,
    admitted: AtomicUsize,
    capacity: usize,
    workers: usize,
    spare: Arc<Mutex<Vec<Spare>>>,
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
        HashPool {
            running: Arc::new(Semaphore::new(workers)),
            admitted: AtomicUsize::new(0),
            capacity: workers + queue,
            workers,
            spare: Arc::new(Mutex::new(Vec::new())),
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
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::WorkerFailed)?;
        let spare = self.spare.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut scratch = {
                let mut spare = spare.lock().unwrap_or_else(PoisonError::into_inner);
                spare.pop().map(|s| s.scratch).unwrap_or_default()
            };
            let result = work(&mut scratch);
            // Still holding the permit: at most `workers` scratches exist. One grown past
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
            result
        })
        .await
        .map_err(|_| PoolError::WorkerFailed)
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
