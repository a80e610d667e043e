//! A bounded pool for password hashing, off the async executor.
//!
//! Argon2 and bcrypt take milliseconds of CPU each; run inline they would stall every other
//! login on the same executor thread. Here at most `workers` hashes run at once, at most
//! `queue` more wait, and anything beyond that is refused at once so the caller can answer
//! with a quick temporary failure instead of unbounded latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::Semaphore;

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
        }
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
        F: FnOnce() -> T + Send + 'static,
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
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
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
                pool.run(move || {
                    let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
                })
                .await
            }));
        }
        while pool.depth() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| ()).await, Err(PoolError::Busy(2)));
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for h in held {
            assert_eq!(h.await.unwrap(), Ok(()));
        }
        assert_eq!(pool.run(|| 41 + 1).await, Ok(42));
        assert_eq!(pool.depth(), 0);
    }
}
