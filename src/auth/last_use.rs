//! Last-use recording off the hot path: logins enqueue, one task writes batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{LastUse, LoginStore};

/// The cheap, cloneable handle logins use.
#[derive(Clone, Debug)]
pub struct LastUseSender {
    tx: mpsc::Sender<LastUse>,
    dropped: Arc<AtomicU64>,
}

impl LastUseSender {
    /// Never waits: when the writer is behind, the record is dropped and counted. A
    /// missing "last used" line is better than a login that waits on a database write.
    pub fn record(&self, used: LastUse) {
        if self.tx.try_send(used).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer task; [`LastUseWriter::shutdown`] flushes what is queued and waits for it.
pub struct LastUseWriter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LastUseWriter {
    pub fn spawn(
        store: Arc<dyn LoginStore>,
        interval: Duration,
        capacity: usize,
    ) -> (LastUseSender, LastUseWriter) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(store, rx, interval, stop.clone()));
        let sender = LastUseSender {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (sender, LastUseWriter { stop, task })
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(
    store: Arc<dyn LoginStore>,
    mut rx: mpsc::Receiver<LastUse>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut pending: HashMap<(String, Option<i64>), LastUse> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Some(used) => add(&mut pending, used),
                None => break,
            },
            _ = tick.tick() => flush(&*store, &mut pending).await,
            _ = stop.cancelled() => break,
        }
    }
    while let Ok(used) = rx.try_recv() {
        add(&mut pending, used);
    }
    flush(&*store, &mut pending).await;
}

/// Many logins by one client between flushes become one write: only the newest counts.
fn add(pending: &mut HashMap<(String, Option<i64>), LastUse>, used: LastUse) {
    let key = (used.mailbox.clone(), used.app_password_id);
    match pending.get(&key) {
        Some(existing) if existing.at > used.at => {}
        _ => {
            pending.insert(key, used);
        }
    }
}

async fn flush(store: &dyn LoginStore, pending: &mut HashMap<(String, Option<i64>), LastUse>) {
    if pending.is_empty() {
        return;
    }
    let mut batch: Vec<LastUse> = pending.drain().map(|(_, v)| v).collect();
    batch.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
    if let Err(e) = store.record_last_use(&batch).await {
        // Keep them for the next tick: a short outage should not lose the records.
        tracing::warn!(error = %e, records = batch.len(), "could not record last use; will retry");
        for used in batch {
            add(pending, used);
        }
    }
}
