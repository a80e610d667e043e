//! Server-side sessions in memory, their cookie, and CSRF tokens.
//!
//! The cookie holds only a random id. Everything else — the pending OIDC sign-in, who is
//! signed in, the CSRF token — stays here, so nothing a browser sends can forge it. Sessions
//! are lost on restart, which only means signing in again.
//!
//! The table is bounded, and no operation walks it: sessions are indexed by expiry, so each
//! call removes a few expired ones from the front and a full table evicts the anonymous
//! session closest to expiry, both in O(log n) under the lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::oidc::PendingSignIn;
use crate::secret::Secret;

/// The cookie's name over plain HTTP (test setups).
pub const COOKIE: &str = "mailauthd_session";
/// The cookie's name when cookies are Secure: the `__Host-` prefix makes browsers refuse it
/// unless it is Secure, host-only (no Domain) and for Path=/, so a sibling subdomain cannot
/// plant or overwrite it.
pub const HOST_COOKIE: &str = "__Host-mailauthd_session";
/// A visitor who has not signed in gets this long to do so.
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Bounds memory whatever a crawler or attacker does; signed-in people are evicted last.
const MAX_SESSIONS: usize = 20_000;
/// Expired sessions removed per call at most, so no call does unbounded work.
const PURGE_PER_CALL: usize = 64;

/// How the person proved who they are.
#[derive(Clone, Debug)]
pub enum Via {
    Provider { id_token: Secret },
    Password,
}

#[derive(Clone, Debug)]
pub struct SignedInUser {
    pub address: String,
    pub via: Via,
    /// The mailbox's credential generation when the session began; a session whose
    /// mailbox has another one ends (password changed, auth source switched, unlinked).
    pub generation: i64,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub csrf: String,
    pub expires: Instant,
    pub user: Option<SignedInUser>,
    pub pending: Option<PendingSignIn>,
    /// A one-time notice for the next page ("app password revoked").
    pub notice: Option<String>,
}

impl Session {
    pub fn csrf_matches(&self, offered: Option<&str>) -> bool {
        offered.is_some_and(|o| {
            o.len() == self.csrf.len() && bool::from(o.as_bytes().ct_eq(self.csrf.as_bytes()))
        })
    }
}

pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub struct Sessions {
    table: Mutex<Table>,
    lifetime: Duration,
    /// Expiry is read on its monotonic reading.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("table", &self.table)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// The sessions and two expiry indexes over them.
#[derive(Debug, Default)]
struct Table {
    map: HashMap<String, Session>,
    /// `(expires, id)` of every session.
    by_expiry: BTreeSet<(Instant, String)>,
    /// `(expires, id)` of sessions nobody has signed in to: the first to go when full.
    anonymous: BTreeSet<(Instant, String)>,
}

impl Table {
    fn insert(&mut self, id: String, session: Session) {
        self.remove(&id);
        self.by_expiry.insert((session.expires, id.clone()));
        if session.user.is_none() {
            self.anonymous.insert((session.expires, id.clone()));
        }
        self.map.insert(id, session);
    }

    fn remove(&mut self, id: &str) -> Option<Session> {
        let session = self.map.remove(id)?;
        let key = (session.expires, id.to_string());
        self.by_expiry.remove(&key);
        self.anonymous.remove(&key);
        Some(session)
    }

    /// Removes up to [`PURGE_PER_CALL`] expired sessions, oldest first.
    fn purge_expired(&mut self, now: Instant) {
        for _ in 0..PURGE_PER_CALL {
            let Some((expires, id)) = self.by_expiry.first().cloned() else {
                return;
            };
            if expires > now {
                return;
            }
            self.remove(&id);
        }
    }

    /// Room for one more: expired sessions go first, then the anonymous one closest to
    /// expiry. Signed-in people are never evicted for a newcomer.
    fn make_room(&mut self, now: Instant) -> Result<(), SessionError> {
        self.purge_expired(now);
        if self.map.len() < MAX_SESSIONS {
            return Ok(());
        }
        match self.anonymous.first().cloned() {
            Some((_, id)) => {
                self.remove(&id);
                Ok(())
            }
            None => Err(SessionError::Full),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no randomness available")]
    NoRandomness,
    #[error("too many sessions")]
    Full,
}

impl Sessions {
    pub fn new(lifetime: Duration, clock: Arc<dyn Clock>) -> Self {
        Sessions {
            table: Mutex::new(Table::default()),
            lifetime,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave a session half-written in a way that
        // matters more than losing sessions, so carry on with the data.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let now = self.clock.instant();
        let mut table = self.lock();
        match table.map.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                table.remove(id);
                None
            }
            None => None,
        }
    }

    /// A new anonymous session.
    pub fn create(&self) -> Result<(String, Session), SessionError> {
        let id = random_token().ok_or(SessionError::NoRandomness)?;
        let now = self.clock.instant();
        let session = Session {
            csrf: random_token().ok_or(SessionError::NoRandomness)?,
            expires: now + ANONYMOUS_LIFETIME,
            user: None,
            pending: None,
            notice: None,
        };
        let mut table = self.lock();
        table.make_room(now)?;
        table.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// Changes a live session's pending sign-in or notice; false when it has gone. Who is
    /// signed in and the expiry change only through [`Sessions::sign_in`].
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Session)) -> bool {
        let now = self.clock.instant();
        let mut table = self.lock();
        match table.map.get_mut(id) {
            Some(s) if s.expires > now => {
                let (expires, user) = (s.expires, s.user.clone());
                change(s);
                s.expires = expires;
                s.user = user;
                true
            }
            _ => false,
        }
    }

    /// Takes the pending sign-in out, so a code or state can be used once only.
    pub fn take_pending(&self, id: &str) -> Option<PendingSignIn> {
        let now = self.clock.instant();
        let mut table = self.lock();
        table
            .map
            .get_mut(id)
            .filter(|s| s.expires > now)
            .and_then(|s| s.pending.take())
    }

    pub fn take_notice(&self, id: &str) -> Option<String> {
        self.lock().map.get_mut(id).and_then(|s| s.notice.take())
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Signs a person in under a new session id (the old one dies), so an id planted in
    /// the browser before sign-in is worth nothing after it.
    pub fn sign_in(
        &self,
        old_id: Option<&str>,
        user: SignedInUser,
    ) -> Result<String, SessionError> {
        let id = random_token().ok_or(SessionError::NoRandomness)?;
        let csrf = random_token().ok_or(SessionError::NoRandomness)?;
        let now = self.clock.instant();
        let mut table = self.lock();
        if let Some(old) = old_id {
            table.remove(old);
        }
        table.make_room(now)?;
        table.insert(
            id.clone(),
            Session {
                csrf,
                expires: now + self.lifetime,
                user: Some(user),
                pending: None,
                notice: None,
            },
        );
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cookie's name: `__Host-` prefixed when cookies are Secure.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        HOST_COOKIE
    } else {
        COOKIE
    }
}

/// The session id from a `Cookie` header, if it has the shape of one of ours.
pub fn id_from_cookie_header(header: &str, secure: bool) -> Option<String> {
    let name = cookie_name(secure);
    header
        .split(';')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Lax{}",
        cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn sessions(lifetime: Duration) -> Sessions {
        Sessions::new(lifetime, Arc::new(ManualClock::at(1_800_000_000)))
    }

    #[test]
    fn csrf_must_match_exactly() {
        let s = sessions(Duration::from_secs(60));
        let (_, session) = s.create().unwrap();
        assert!(session.csrf_matches(Some(&session.csrf.clone())));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("")));
        assert!(!session.csrf_matches(Some(&session.csrf[1..])));
    }

    #[test]
    fn sign_in_rotates_the_id_and_pending_is_taken_once() {
        let s = sessions(Duration::from_secs(60));
        let (old, _) = s.create().unwrap();
        assert!(s.update(&old, |x| {
            x.pending = Some(PendingSignIn {
                state: Secret::from("st"),
                nonce: Secret::from("n"),
                pkce_verifier: Secret::from("v"),
            })
        }));
        assert!(s.take_pending(&old).is_some());
        assert!(s.take_pending(&old).is_none(), "a state is good once");
        let new = s
            .sign_in(
                Some(&old),
                SignedInUser {
                    address: "a@example.org".into(),
                    via: Via::Password,
                    generation: 0,
                },
            )
            .unwrap();
        assert_ne!(new, old);
        assert!(s.get(&old).is_none());
        assert_eq!(s.get(&new).unwrap().user.unwrap().address, "a@example.org");
    }

    #[test]
    fn cookie_header_is_parsed_strictly() {
        let id = random_token().unwrap();
        assert_eq!(
            id_from_cookie_header(&format!("a=b; {COOKIE}={id}; c=d"), false),
            Some(id.clone())
        );
        assert_eq!(
            id_from_cookie_header(&format!("a=b; {HOST_COOKIE}={id}; c=d"), true),
            Some(id.clone())
        );
        // A cookie without the prefix can be planted by a sibling host: not ours when Secure.
        assert_eq!(id_from_cookie_header(&format!("{COOKIE}={id}"), true), None);
        assert_eq!(
            id_from_cookie_header(&format!("{COOKIE}=short"), false),
            None
        );
        assert_eq!(id_from_cookie_header("other=x", false), None);
        let c = set_cookie(&id, true);
        assert!(c.starts_with("__Host-mailauthd_session="));
        assert!(c.contains("HttpOnly") && c.contains("Secure") && c.contains("SameSite=Lax"));
        assert!(c.contains("Path=/") && !c.contains("Domain"));
        assert!(clear_cookie(true).starts_with("__Host-"));
        assert!(!set_cookie(&id, false).contains("Secure"));
        assert!(!set_cookie(&id, false).starts_with("__Host-"));
    }

    #[test]
    fn a_full_table_evicts_anonymous_sessions_never_signed_in_ones() {
        let s = sessions(Duration::from_secs(60));
        let user = |n: usize| SignedInUser {
            address: format!("u{n}@example.org"),
            via: Via::Password,
            generation: 0,
        };
        let signed: Vec<String> = (0..MAX_SESSIONS - 1)
            .map(|n| s.sign_in(None, user(n)).unwrap())
            .collect();
        let (first_anon, _) = s.create().unwrap();
        assert_eq!(s.len(), MAX_SESSIONS);
        // Full: the anonymous session makes room for the next visitor.
        let (second_anon, _) = s.create().unwrap();
        assert!(s.get(&first_anon).is_none());
        assert!(s.get(&second_anon).is_some());
        assert_eq!(s.len(), MAX_SESSIONS);
        // Full of signed-in people and one newcomer being signed in: no one evicted.
        assert!(s.sign_in(Some(&second_anon), user(99_999)).is_ok());
        assert!(matches!(s.create(), Err(SessionError::Full)));
        assert!(signed.iter().all(|id| s.get(id).is_some()));
        let t = s.lock();
        assert_eq!(
            t.by_expiry.len(),
            t.map.len(),
            "the index follows the table"
        );
        assert!(t.anonymous.is_empty());
    }

    #[test]
    fn expired_sessions_are_purged_from_the_front() {
        let clock = ManualClock::at(1_800_000_000);
        let s = Sessions::new(Duration::from_secs(60), Arc::new(clock.clone()));
        let past = clock.instant();
        clock.advance(1);
        let mut t = s.lock();
        for n in 0..200 {
            t.insert(
                format!("old{n}"),
                Session {
                    csrf: String::new(),
                    expires: past,
                    user: None,
                    pending: None,
                    notice: None,
                },
            );
        }
        t.purge_expired(s.clock.instant());
        assert_eq!(t.map.len(), 200 - PURGE_PER_CALL, "bounded work per call");
        t.purge_expired(s.clock.instant());
        t.purge_expired(s.clock.instant());
        t.purge_expired(s.clock.instant());
        assert!(t.map.is_empty() && t.by_expiry.is_empty() && t.anonymous.is_empty());
    }

    #[test]
    fn sessions_end_when_their_lifetime_has_passed() {
        let clock = ManualClock::at(1_800_000_000);
        let s = Sessions::new(Duration::from_secs(60), Arc::new(clock.clone()));
        let (anonymous, _) = s.create().unwrap();
        let user = SignedInUser {
            address: "a@example.org".into(),
            via: Via::Password,
            generation: 0,
        };
        let signed = s.sign_in(None, user).unwrap();
        clock.advance(59);
        assert!(s.get(&signed).is_some());
        clock.advance(1);
        assert!(s.get(&signed).is_none(), "the lifetime has passed");
        assert!(
            s.get(&anonymous).is_some(),
            "anonymous sessions get 15 minutes"
        );
        clock.advance(ANONYMOUS_LIFETIME.as_secs() as i64);
        assert!(!s.update(&anonymous, |_| {}));
    }

    #[test]
    fn pending_sign_in_debug_hides_secrets() {
        let p = PendingSignIn {
            state: Secret::from("state-value-123"),
            nonce: Secret::from("nonce-value-456"),
            pkce_verifier: Secret::from("verifier-789"),
        };
        let text = format!("{p:?}");
        assert!(!text.contains("123") && !text.contains("456") && !text.contains("789"));
    }
}
