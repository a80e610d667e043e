//! Server-side sessions in memory, their cookie, and CSRF tokens.
//!
//! The cookie holds only a random id. Everything else — the pending OIDC sign-in, who is
//! signed in, the CSRF token — stays here, so nothing a browser sends can forge it. Sessions
//! are lost on restart, which only means signing in again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use subtle::ConstantTimeEq;

use crate::oidc::PendingSignIn;
use crate::secret::Secret;

pub const COOKIE: &str = "mailauthd_session";
/// A visitor who has not signed in gets this long to do so.
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Bounds memory whatever a crawler or attacker does; signed-in people are evicted last.
const MAX_SESSIONS: usize = 20_000;

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

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no randomness available")]
    NoRandomness,
    #[error("too many sessions")]
    Full,
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            lifetime,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave a session half-written in a way that
        // matters more than losing sessions, so carry on with the data.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.lock();
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// A new anonymous session.
    pub fn create(&self) -> Result<(String, Session), SessionError> {
        let id = random_token().ok_or(SessionError::NoRandomness)?;
        let session = Session {
            csrf: random_token().ok_or(SessionError::NoRandomness)?,
            expires: Instant::now() + ANONYMOUS_LIFETIME,
            user: None,
            pending: None,
            notice: None,
        };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= MAX_SESSIONS {
            let oldest_anonymous = map
                .iter()
                .filter(|(_, s)| s.user.is_none())
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            match oldest_anonymous {
                Some(k) => {
                    map.remove(&k);
                }
                None => return Err(SessionError::Full),
            }
        }
        map.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// Changes a live session; false when it has gone.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Session)) -> bool {
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(s) if s.expires > Instant::now() => {
                change(s);
                true
            }
            _ => false,
        }
    }

    /// Takes the pending sign-in out, so a code or state can be used once only.
    pub fn take_pending(&self, id: &str) -> Option<PendingSignIn> {
        let mut map = self.lock();
        map.get_mut(id)
            .filter(|s| s.expires > Instant::now())
            .and_then(|s| s.pending.take())
    }

    pub fn take_notice(&self, id: &str) -> Option<String> {
        self.lock().get_mut(id).and_then(|s| s.notice.take())
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
        let mut map = self.lock();
        if let Some(old) = old_id {
            map.remove(old);
        }
        map.insert(
            id.clone(),
            Session {
                csrf,
                expires: Instant::now() + self.lifetime,
                user: Some(user),
                pending: None,
                notice: None,
            },
        );
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session id from a `Cookie` header, if it has the shape of one of ours.
pub fn id_from_cookie_header(header: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_must_match_exactly() {
        let s = Sessions::new(Duration::from_secs(60));
        let (_, session) = s.create().unwrap();
        assert!(session.csrf_matches(Some(&session.csrf.clone())));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("")));
        assert!(!session.csrf_matches(Some(&session.csrf[1..])));
    }

    #[test]
    fn sign_in_rotates_the_id_and_pending_is_taken_once() {
        let s = Sessions::new(Duration::from_secs(60));
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
            id_from_cookie_header(&format!("a=b; {COOKIE}={id}; c=d")),
            Some(id.clone())
        );
        assert_eq!(id_from_cookie_header(&format!("{COOKIE}=short")), None);
        assert_eq!(id_from_cookie_header("other=x"), None);
        let c = set_cookie(&id, true);
        assert!(c.contains("HttpOnly") && c.contains("Secure") && c.contains("SameSite=Lax"));
        assert!(!set_cookie(&id, false).contains("Secure"));
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
