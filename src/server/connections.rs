//! The connections of one listener: a cap, and who is idle.
//!
//! A listener serves at most `max_connections` at once, across all its endpoints. When it
//! is full, a new client does not wait for an old one to idle out: the connection that has
//! been idle longest (no request open) is closed and the new one takes its place, so a
//! client that leaks connections cannot lock Postfix or Dovecot out. Only when every
//! connection has a request open does the listener stop accepting, and new clients wait in
//! the kernel's backlog until one finishes.
//!
//! Each connection holds an [`Activity`]: the driver says when a request opens and when it
//! is idle again, and stops between requests when [`Activity::stop`] fires (daemon shutdown
//! or eviction).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The connections of one listener.
pub struct Connections {
    name: &'static str,
    cap: usize,
    epoch: Instant,
    live: Mutex<Live>,
    /// A connection ended or went idle: a waiting accept loop may go on.
    changed: Notify,
    /// Accept loops waiting on `changed`; without any, nothing is notified.
    waiting: AtomicUsize,
}

#[derive(Default)]
struct Live {
    next_id: u64,
    slots: HashMap<u64, Arc<Slot>>,
}

struct Slot {
    /// Milliseconds since `epoch` plus one at which the connection last went idle; 0 while
    /// a request is open.
    idle_since: AtomicU64,
    evicted: AtomicBool,
    stop: CancellationToken,
}

impl Connections {
    pub fn new(name: &'static str, cap: usize) -> Arc<Self> {
        Arc::new(Connections {
            name,
            cap: cap.max(1),
            epoch: Instant::now(),
            live: Mutex::new(Live::default()),
            changed: Notify::new(),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_mark(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Waits until a new connection could be admitted at once: there is room, or an idle
    /// connection to make room with. Called before accepting, so excess clients wait in
    /// the kernel's backlog rather than in our descriptors.
    pub async fn admissible(&self) {
        let _waiting = Waiting::on(self);
        loop {
            let notified = self.changed.notified();
            {
                let live = self.lock();
                // An evicted connection is about to free its place.
                if live.slots.len() < self.cap
                    || live.slots.values().any(|s| s.is_idle() || s.is_evicted())
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Admits one accepted connection, closing the longest-idle one first when the
    /// listener is full; waits while every connection has a request open. `shutdown`
    /// becomes the parent of the connection's stop token.
    pub async fn admit(self: &Arc<Self>, shutdown: &CancellationToken) -> Activity {
        let _waiting = Waiting::on(self);
        loop {
            let notified = self.changed.notified();
            {
                let mut live = self.lock();
                if live.slots.len() < self.cap {
                    let id = live.next_id;
                    live.next_id += 1;
                    let slot = Arc::new(Slot {
                        idle_since: AtomicU64::new(self.now_mark()),
                        evicted: AtomicBool::new(false),
                        stop: shutdown.child_token(),
                    });
                    live.slots.insert(id, slot.clone());
                    return Activity {
                        connections: Some(self.clone()),
                        id,
                        slot,
                    };
                }
                // One eviction at a time: the evicted connection frees its slot within
                // moments (it is idle), and the next full accept evicts the next.
                if !live.slots.values().any(|s| s.is_evicted()) {
                    let oldest = live
                        .slots
                        .values()
                        .filter(|s| s.is_idle())
                        .min_by_key(|s| s.idle_since.load(Ordering::SeqCst));
                    if let Some(slot) = oldest {
                        slot.evicted.store(true, Ordering::SeqCst);
                        slot.stop.cancel();
                        crate::metrics::connection_evicted(self.name);
                        tracing::debug!(
                            listener = self.name,
                            cap = self.cap,
                            "listener full: closing its longest-idle connection"
                        );
                    }
                }
            }
            notified.await;
        }
    }

    fn changed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    fn remove(&self, id: u64) {
        self.lock().slots.remove(&id);
        self.changed();
    }
}

/// Counts an accept loop as waiting from before its first look at the connections, so no
/// change between that look and the wait goes unnotified.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn on(connections: &'a Connections) -> Self {
        connections.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(&connections.waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slot {
    fn is_idle(&self) -> bool {
        self.idle_since.load(Ordering::SeqCst) != 0
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::SeqCst)
    }
}

/// One connection's place in its listener; dropping it frees the place.
pub struct Activity {
    connections: Option<Arc<Connections>>,
    id: u64,
    slot: Arc<Slot>,
}

impl Activity {
    /// For a driver run outside a listener (tests): stops with `stop`, counts nowhere.
    pub fn detached(stop: CancellationToken) -> Self {
        Activity {
            connections: None,
            id: 0,
            slot: Arc::new(Slot {
                idle_since: AtomicU64::new(1),
                evicted: AtomicBool::new(false),
                stop,
            }),
        }
    }

    /// Fires at shutdown, or when the listener is full and this connection has been idle
    /// longest. The driver closes the connection once no request is open.
    pub fn stop(&self) -> &CancellationToken {
        &self.slot.stop
    }

    /// Whether the stop came from eviction rather than shutdown.
    pub fn evicted(&self) -> bool {
        self.slot.is_evicted()
    }

    /// A request is open: this connection is not closed to make room.
    pub fn busy(&self) {
        self.slot.idle_since.store(0, Ordering::SeqCst);
    }

    /// No request is open any more. Cheap when nothing changes.
    pub fn idle(&self) {
        if self.slot.is_idle() {
            return;
        }
        let mark = match &self.connections {
            Some(c) => c.now_mark(),
            None => 1,
        };
        self.slot.idle_since.store(mark, Ordering::SeqCst);
        if let Some(c) = &self.connections {
            c.changed();
        }
    }

    /// [`Activity::busy`] or [`Activity::idle`].
    pub fn set_busy(&self, busy: bool) {
        if busy {
            self.busy();
        } else {
            self.idle();
        }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        if let Some(c) = &self.connections {
            c.remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_listener_closes_its_longest_idle_connection() {
        let conns = Connections::new("test", 3);
        let shutdown = CancellationToken::new();
        let a = conns.admit(&shutdown).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = conns.admit(&shutdown).await;
        // Idle times are in milliseconds: a tie would let either be the longest idle.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let c = conns.admit(&shutdown).await;
        a.busy();
        assert_eq!(conns.len(), 3);
        // Full: b is the longest idle (a has a request open).
        let admitting = tokio::spawn({
            let conns = conns.clone();
            let shutdown = shutdown.clone();
            async move { conns.admit(&shutdown).await }
        });
        tokio::time::timeout(Duration::from_secs(2), b.stop().cancelled())
            .await
            .expect("the longest-idle connection is told to stop");
        assert!(b.evicted());
        assert!(!a.stop().is_cancelled() && !c.stop().is_cancelled());
        drop(b);
        let d = tokio::time::timeout(Duration::from_secs(2), admitting)
            .await
            .expect("admitted once the evicted connection is gone")
            .unwrap();
        assert_eq!(conns.len(), 3);
        assert!(!d.evicted());
        drop((a, c, d));
        assert!(conns.is_empty());
    }

    #[tokio::test]
    async fn busy_connections_are_never_evicted_and_the_new_one_waits() {
        let conns = Connections::new("test", 2);
        let shutdown = CancellationToken::new();
        let a = conns.admit(&shutdown).await;
        let b = conns.admit(&shutdown).await;
        a.busy();
        b.busy();
        let admissible = tokio::time::timeout(Duration::from_millis(100), conns.admissible());
        assert!(admissible.await.is_err(), "no room and nobody idle");
        let admitting = tokio::spawn({
            let conns = conns.clone();
            let shutdown = shutdown.clone();
            async move { conns.admit(&shutdown).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!a.stop().is_cancelled() && !b.stop().is_cancelled());
        // b's request finishes: it is idle now, so it makes room.
        b.idle();
        tokio::time::timeout(Duration::from_secs(2), b.stop().cancelled())
            .await
            .expect("evicted once idle");
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(2), admitting)
            .await
            .unwrap()
            .unwrap();
        assert!(!a.stop().is_cancelled());
        shutdown.cancel();
        assert!(a.stop().is_cancelled() && c.stop().is_cancelled());
        assert!(!a.evicted());
    }
}
