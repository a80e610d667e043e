//! Remembers stored-password checks that succeeded, so a mail client that logs in every
//! few minutes does not pay for Argon2 or bcrypt each time.
//!
//! What it remembers is a keyed digest of (mailbox, stored hash, password), never a verdict
//! on its own: the mailbox's row is still read on every login, so disabling it, changing
//! its password (a new stored hash), switching its auth source or revoking anything takes
//! effect on the very next attempt. Failures are never cached. The key is random per
//! process, so the digests mean nothing outside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::clock::Clock;

/// `[credentials] verify_cache_entries` and `verify_cache_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyCacheConfig {
    /// Mailboxes remembered at once; 0 turns the cache off.
    pub entries: usize,
    pub lifetime: Duration,
}

impl Default for VerifyCacheConfig {
    fn default() -> Self {
        VerifyCacheConfig {
            entries: 10_000,
            lifetime: Duration::from_secs(900),
        }
    }
}

pub struct VerifyCache {
    config: VerifyCacheConfig,
    /// Entry ages are read on its monotonic reading.
    clock: Arc<dyn Clock>,
    key: Zeroizing<[u8; 32]>,
    /// One entry per mailbox: its last proven password. A client with an old password
    /// simply misses and pays for the hash.
    entries: Mutex<HashMap<String, Entry>>,
}

/// A keyed digest of (mailbox, stored hash, password); see [`VerifyCache::key_for`].
pub struct Proof([u8; 32]);

struct Entry {
    digest: [u8; 32],
    stored_at: Instant,
}

impl VerifyCache {
    pub fn new(config: VerifyCacheConfig, clock: Arc<dyn Clock>) -> Result<Self, getrandom::Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut())?;
        Ok(VerifyCache {
            config,
            clock,
            key,
            entries: Mutex::new(HashMap::new()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.config.entries > 0
    }

    /// The key this exact mailbox, stored hash and password are remembered under; `None`
    /// when the cache is off. Computed once per login, for the lookup and the record.
    pub fn key_for(&self, mailbox: &str, stored_hash: &str, secret: &[u8]) -> Option<Proof> {
        self.enabled()
            .then(|| Proof(self.digest(mailbox, stored_hash, secret)))
    }

    /// Whether this proof was recorded for the mailbox recently.
    pub fn proven(&self, mailbox: &str, proof: &Proof) -> bool {
        let now = self.clock.instant();
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = entries.get(mailbox).is_some_and(|e| {
            now.saturating_duration_since(e.stored_at) < self.config.lifetime
                && subtle::ConstantTimeEq::ct_eq(&e.digest[..], &proof.0[..]).into()
        });
        drop(entries);
        crate::metrics::verify_cache(hit);
        hit
    }

    /// Records a password the hash check has just accepted.
    pub fn remember(&self, mailbox: &str, proof: Proof) {
        let now = self.clock.instant();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.config.entries && !entries.contains_key(mailbox) {
            let lifetime = self.config.lifetime;
            entries.retain(|_, e| now.saturating_duration_since(e.stored_at) < lifetime);
            if entries.len() >= self.config.entries {
                // Still full of live entries: drop an eighth, oldest first, so a burst
                // of new mailboxes pays for one sort per many inserts.
                let mut ages: Vec<(Instant, String)> = entries
                    .iter()
                    .map(|(k, e)| (e.stored_at, k.clone()))
                    .collect();
                ages.sort_unstable();
                for (_, k) in ages.into_iter().take(self.config.entries / 8 + 1) {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(
            mailbox.to_string(),
            Entry {
                digest: proof.0,
                stored_at: now,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn digest(&self, mailbox: &str, stored_hash: &str, secret: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.key.as_ref()) else {
            return [0; 32];
        };
        mac.update(b"mailauthd verify cache v1\0");
        for part in [mailbox.as_bytes(), stored_hash.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(secret);
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyCache")
            .field("config", &self.config)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::clock::ManualClock;

    fn cache_on(clock: &ManualClock, entries: usize, lifetime: Duration) -> VerifyCache {
        VerifyCache::new(
            VerifyCacheConfig { entries, lifetime },
            Arc::new(clock.clone()),
        )
        .unwrap()
    }

    fn cache(entries: usize, lifetime: Duration) -> VerifyCache {
        cache_on(&ManualClock::at(1_800_000_000), entries, lifetime)
    }

    impl VerifyCache {
        fn check(&self, mailbox: &str, stored: &str, secret: &[u8]) -> bool {
            self.key_for(mailbox, stored, secret)
                .is_some_and(|p| self.proven(mailbox, &p))
        }

        fn record(&self, mailbox: &str, stored: &str, secret: &[u8]) {
            if let Some(p) = self.key_for(mailbox, stored, secret) {
                self.remember(mailbox, p);
            }
        }
    }

    #[test]
    fn only_the_same_mailbox_hash_and_password_hit() {
        let c = cache(10, Duration::from_secs(60));
        assert!(!c.check("a@x.org", "{X}1", b"pw"));
        c.record("a@x.org", "{X}1", b"pw");
        assert!(c.check("a@x.org", "{X}1", b"pw"));
        assert!(!c.check("a@x.org", "{X}1", b"pw2"), "another password");
        assert!(!c.check("a@x.org", "{X}2", b"pw"), "a changed stored hash");
        assert!(!c.check("b@x.org", "{X}1", b"pw"), "another mailbox");
    }

    #[test]
    fn a_new_password_replaces_the_old_one() {
        let c = cache(10, Duration::from_secs(60));
        c.record("a@x.org", "{X}1", b"old");
        c.record("a@x.org", "{X}2", b"new");
        assert!(!c.check("a@x.org", "{X}1", b"old"));
        assert!(c.check("a@x.org", "{X}2", b"new"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn entries_expire() {
        let clock = ManualClock::at(1_800_000_000);
        let c = cache_on(&clock, 10, Duration::from_millis(20));
        c.record("a@x.org", "{X}1", b"pw");
        clock.advance_ms(19);
        assert!(c.check("a@x.org", "{X}1", b"pw"));
        clock.advance_ms(21);
        assert!(!c.check("a@x.org", "{X}1", b"pw"));
    }

    #[test]
    fn size_stays_bounded_and_zero_turns_it_off() {
        let c = cache(64, Duration::from_secs(60));
        for i in 0..1000 {
            c.record(&format!("u{i}@x.org"), "{X}1", b"pw");
            assert!(c.len() <= 64);
        }
        assert!(c.check("u999@x.org", "{X}1", b"pw"), "the newest stays");
        let off = cache(0, Duration::from_secs(60));
        off.record("a@x.org", "{X}1", b"pw");
        assert!(!off.check("a@x.org", "{X}1", b"pw"));
        assert!(off.is_empty());
    }
}
