//! Verdicts on tokens already checked, so a mail client that logs in every few seconds
//! with the same token does not make the provider answer every time.
//!
//! Keyed by the token's SHA-256: the tokens themselves are never kept. A success is kept
//! until the token's `exp` or the configured time, whichever comes first; a refusal for
//! at most [`REFUSAL_SECONDS`], so a flood of one bad token costs the provider little and
//! a token that becomes good (a key rotated in) is not refused for long. "Cannot tell" is
//! never kept. Bounded: when full, expired entries go first, then the eighth that would
//! expire soonest, so a flood of new tokens (each refused, say) costs one pass over the
//! cache per eighth of it, not one per token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::auth::{TokenIdentity, TokenRefusal};
use crate::clock::{Clock, UnixTime};

/// The longest a refusal is kept.
pub const REFUSAL_SECONDS: i64 = 30;

pub type Key = [u8; 32];

pub fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    verdict: Result<TokenIdentity, TokenRefusal>,
    /// Wall time (the clock's `now`): compared with the token's `exp`, which is one.
    until: UnixTime,
}

pub struct Cache {
    entries: Mutex<HashMap<Key, Entry>>,
    capacity: usize,
    ttl: i64,
    clock: Arc<dyn Clock>,
}

impl Cache {
    pub fn new(capacity: usize, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
            capacity,
            ttl: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            clock,
        }
    }

    pub fn get(&self, key: &Key) -> Option<Result<TokenIdentity, TokenRefusal>> {
        let now = self.clock.now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some(e) if now < e.until => Some(e.verdict.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, key: Key, verdict: Result<TokenIdentity, TokenRefusal>) {
        if self.capacity == 0 || self.ttl == 0 {
            return;
        }
        let now = self.clock.now();
        let until = match &verdict {
            Ok(id) => id.expires_at.min(now.saturating_add(self.ttl)),
            Err(_) => now.saturating_add(self.ttl.min(REFUSAL_SECONDS)),
        };
        if until <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| now < e.until);
            if entries.len() >= self.capacity {
                let mut drop = (self.capacity / 8).max(1);
                let mut untils: Vec<UnixTime> = entries.values().map(|e| e.until).collect();
                let cut = *untils.select_nth_unstable(drop - 1).1;
                entries.retain(|_, e| {
                    let keep = drop == 0 || e.until > cut;
                    if !keep {
                        drop -= 1;
                    }
                    keep
                });
            }
        }
        entries.insert(key, Entry { verdict, until });
    }

    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const NOW: i64 = 1_800_000_000;

    fn id(exp: i64) -> Result<TokenIdentity, TokenRefusal> {
        Ok(TokenIdentity {
            issuer: "https://idp.example".into(),
            subject: "alice".into(),
            expires_at: exp,
        })
    }

    fn cache(capacity: usize, ttl: u64) -> (Cache, ManualClock) {
        let clock = ManualClock::at(NOW);
        let c = Cache::new(capacity, Duration::from_secs(ttl), Arc::new(clock.clone()));
        (c, clock)
    }

    #[test]
    fn a_success_is_never_returned_past_the_tokens_exp() {
        let (c, clock) = cache(10, 300);
        c.put(key("a"), id(NOW + 10));
        clock.advance(9);
        assert_eq!(c.get(&key("a")), Some(id(NOW + 10)));
        clock.advance(1);
        assert_eq!(c.get(&key("a")), None);
        // Nor past the configured time when the token lives longer.
        c.put(key("b"), id(NOW + 10_000));
        clock.advance(299);
        assert!(c.get(&key("b")).is_some());
        clock.advance(1);
        assert_eq!(c.get(&key("b")), None);
        // Expired already (accepted within the skew): not kept at all.
        c.put(key("c"), id(clock.now() - 5));
        assert_eq!(c.entries(), 0);
    }

    #[test]
    fn refusals_are_kept_briefly() {
        let (c, clock) = cache(10, 300);
        c.put(key("bad"), Err(TokenRefusal::BadSignature));
        clock.advance(REFUSAL_SECONDS - 1);
        assert_eq!(c.get(&key("bad")), Some(Err(TokenRefusal::BadSignature)));
        clock.advance(1);
        assert_eq!(c.get(&key("bad")), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let (c, clock) = cache(3, 300);
        for i in 0..3 {
            c.put(key(&i.to_string()), id(NOW + 100 + i));
        }
        // Full: the entry expiring soonest makes room.
        c.put(key("new"), id(NOW + 200));
        assert_eq!(c.entries(), 3);
        assert_eq!(c.get(&key("0")), None);
        assert!(c.get(&key("1")).is_some() && c.get(&key("new")).is_some());
        // Expired entries go before any live one.
        clock.advance(101);
        c.put(key("later"), id(NOW + 400));
        assert!(c.get(&key("2")).is_some() && c.get(&key("new")).is_some());
        assert!(c.get(&key("later")).is_some());
        for i in 0..1000 {
            c.put(key(&format!("flood{i}")), id(NOW + 1000));
        }
        assert_eq!(c.entries(), 3);
    }

    #[test]
    fn a_full_cache_makes_room_an_eighth_at_a_time_soonest_first() {
        let (c, _) = cache(16, 300);
        for i in 0..16 {
            c.put(key(&i.to_string()), id(NOW + 100 + i));
        }
        c.put(key("new"), id(NOW + 50));
        assert_eq!(c.entries(), 15);
        assert_eq!(c.get(&key("0")), None);
        assert_eq!(c.get(&key("1")), None);
        assert!((2..16).all(|i| c.get(&key(&i.to_string())).is_some()));
        assert!(c.get(&key("new")).is_some());
        for i in 0..1000 {
            c.put(key(&format!("flood{i}")), id(NOW + 1000 + i));
            assert!(c.entries() <= 16);
        }
    }

    #[test]
    fn size_zero_keeps_nothing() {
        let (c, _) = cache(0, 300);
        c.put(key("a"), id(NOW + 100));
        assert_eq!(c.get(&key("a")), None);
    }
}
