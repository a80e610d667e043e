//! Page sessions, kept in the store, their cookie, and CSRF tokens.
//!
//! The cookie holds only a random id; the store keeps the session under the id's SHA-256
//! digest, never the id. Everything else — the pending OIDC sign-in, who is signed in, the
//! CSRF token — stays in the store, so nothing a browser sends can forge it, every daemon
//! on the database sees the same sessions, and a restart signs nobody out.
//!
//! The table stays bounded whatever a crawler or attacker does: anonymous sessions (a
//! form's CSRF token, a sign-in under way) are trimmed to [`MAX_ANONYMOUS`] after each one
//! is created, the sessions of one mailbox to [`MAX_PER_MAILBOX`] after each sign-in, and
//! expired rows go in bounded batches ([`Sessions::sweep`], run periodically). A store that
//! does not answer is an error the page shows as 503, never a silent sign-out.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::{Clock, UnixTime};
use crate::oidc::PendingSignIn;
use crate::secret::Secret;
use crate::store::{
    PendingSignInRecord, SessionScope, SessionUser, SignedInWith, Store, StoreError, Swept,
    WebSession,
};

/// The cookie's name over plain HTTP (test setups).
pub const COOKIE: &str = "mailauthd_session";
/// The cookie's name when cookies are Secure: the `__Host-` prefix makes browsers refuse it
/// unless it is Secure, host-only (no Domain) and for Path=/, so a sibling subdomain cannot
/// plant or overwrite it.
pub const HOST_COOKIE: &str = "__Host-mailauthd_session";
/// A visitor who has not signed in gets this long to do so.
pub const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Anonymous sessions kept in the store at most unless `[web] max_anonymous_sessions` says
/// otherwise; past it the ones closest to expiry go. Signed-in people are never evicted for
/// a newcomer.
pub const MAX_ANONYMOUS: u64 = 20_000;
/// Sessions of one mailbox kept at most: signing in over and over cannot grow the table.
pub const MAX_PER_MAILBOX: u64 = 50;
/// ID tokens longer than this are not kept (the column's size on MariaDB); signing out then
/// sends no hint to the provider's end-session endpoint, which asks the person instead.
pub const MAX_ID_TOKEN_BYTES: usize = 8192;
/// Expired sessions (and logout tokens) removed per sweep at most.
pub const SWEEP_BATCH: u64 = 500;

/// How the person proved who they are.
#[derive(Clone, Debug)]
pub enum Via {
    /// Through the identity provider: the ID token (the hint for RP-initiated logout) and
    /// the provider's account and session, by which a back-channel logout finds this one.
    Provider {
        id_token: Secret,
        issuer: String,
        subject: String,
        sid: Option<String>,
    },
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
    pub expires: UnixTime,
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

/// What the store keys a session by: the hex SHA-256 of the cookie's id.
pub fn digest(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no randomness available")]
    NoRandomness,
    #[error("session store: {0}")]
    Store(#[from] StoreError),
}

/// The page's sessions, in the store.
pub struct Sessions {
    store: Arc<dyn Store>,
    lifetime: Duration,
    max_anonymous: u64,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn pending_record(p: &PendingSignIn) -> PendingSignInRecord {
    PendingSignInRecord {
        state: String::from_utf8_lossy(p.state.expose()).into_owned(),
        nonce: String::from_utf8_lossy(p.nonce.expose()).into_owned(),
        pkce_verifier: String::from_utf8_lossy(p.pkce_verifier.expose()).into_owned(),
    }
}

fn pending_from(p: PendingSignInRecord) -> PendingSignIn {
    PendingSignIn {
        state: Secret::from(p.state),
        nonce: Secret::from(p.nonce),
        pkce_verifier: Secret::from(p.pkce_verifier),
    }
}

fn user_record(u: &SignedInUser) -> SessionUser {
    SessionUser {
        mailbox: u.address.clone(),
        generation: u.generation,
        via: match &u.via {
            Via::Password => SignedInWith::Password,
            Via::Provider {
                id_token,
                issuer,
                subject,
                sid,
            } => SignedInWith::Provider {
                id_token: if id_token.expose().len() <= MAX_ID_TOKEN_BYTES {
                    String::from_utf8_lossy(id_token.expose()).into_owned()
                } else {
                    String::new()
                },
                issuer: issuer.clone(),
                subject: subject.clone(),
                sid: sid.clone(),
            },
        },
    }
}

fn user_from(u: SessionUser) -> SignedInUser {
    SignedInUser {
        address: u.mailbox,
        generation: u.generation,
        via: match u.via {
            SignedInWith::Password => Via::Password,
            SignedInWith::Provider {
                id_token,
                issuer,
                subject,
                sid,
            } => Via::Provider {
                id_token: Secret::from(id_token),
                issuer,
                subject,
                sid,
            },
        },
    }
}

fn session_from(s: WebSession) -> Session {
    Session {
        csrf: s.csrf,
        expires: s.expires_at,
        user: s.user.map(user_from),
        pending: s.pending.map(pending_from),
        notice: s.notice,
    }
}

impl Sessions {
    pub fn new(
        store: Arc<dyn Store>,
        lifetime: Duration,
        max_anonymous: u64,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Sessions {
            store,
            lifetime,
            max_anonymous,
            clock,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Session>, SessionError> {
        let now = self.clock.now();
        let stored = self.store.web_session(&digest(id), now).await?;
        Ok(stored.map(session_from))
    }

    /// A new anonymous session, stored; the oldest anonymous ones beyond the cap make room.
    pub async fn create(&self) -> Result<(String, Session), SessionError> {
        let id = random_token().ok_or(SessionError::NoRandomness)?;
        let now = self.clock.now();
        let stored = WebSession {
            csrf: random_token().ok_or(SessionError::NoRandomness)?,
            created_at: now,
            expires_at: now.saturating_add(seconds(ANONYMOUS_LIFETIME)),
            user: None,
            pending: None,
            notice: None,
        };
        self.store.create_web_session(&digest(&id), &stored).await?;
        self.store
            .trim_web_sessions(SessionScope::Anonymous, self.max_anonymous)
            .await?;
        Ok((id, session_from(stored)))
    }

    /// Puts a pending sign-in in a live session; false when it has gone.
    pub async fn set_pending(
        &self,
        id: &str,
        pending: &PendingSignIn,
    ) -> Result<bool, SessionError> {
        let now = self.clock.now();
        let record = pending_record(pending);
        Ok(self
            .store
            .set_session_pending(&digest(id), &record, now)
            .await?)
    }

    /// Takes the pending sign-in out, so a code or state can be used once only, on
    /// whichever daemon the callback reaches.
    pub async fn take_pending(&self, id: &str) -> Result<Option<PendingSignIn>, SessionError> {
        let now = self.clock.now();
        let taken = self.store.take_session_pending(&digest(id), now).await?;
        Ok(taken.map(pending_from))
    }

    pub async fn set_notice(&self, id: &str, notice: &str) -> Result<bool, SessionError> {
        let now = self.clock.now();
        Ok(self
            .store
            .set_session_notice(&digest(id), notice, now)
            .await?)
    }

    pub async fn take_notice(&self, id: &str) -> Result<Option<String>, SessionError> {
        Ok(self.store.take_session_notice(&digest(id)).await?)
    }

    pub async fn remove(&self, id: &str) -> Result<(), SessionError> {
        Ok(self.store.delete_web_session(&digest(id)).await?)
    }

    /// Signs a person in under a new session id (the old one dies), so an id planted in
    /// the browser before sign-in is worth nothing after it.
    pub async fn sign_in(
        &self,
        old_id: Option<&str>,
        user: SignedInUser,
    ) -> Result<String, SessionError> {
        let id = random_token().ok_or(SessionError::NoRandomness)?;
        let now = self.clock.now();
        let stored = WebSession {
            csrf: random_token().ok_or(SessionError::NoRandomness)?,
            created_at: now,
            expires_at: now.saturating_add(seconds(self.lifetime)),
            user: Some(user_record(&user)),
            pending: None,
            notice: None,
        };
        self.store.create_web_session(&digest(&id), &stored).await?;
        if let Some(old) = old_id {
            self.store.delete_web_session(&digest(old)).await?;
        }
        self.store
            .trim_web_sessions(SessionScope::Mailbox(&user.address), MAX_PER_MAILBOX)
            .await?;
        Ok(id)
    }

    /// Removes a batch of expired sessions and logout tokens.
    pub async fn sweep(&self) -> Result<Swept, SessionError> {
        Ok(self
            .store
            .sweep_expired(self.clock.now(), SWEEP_BATCH)
            .await?)
    }
}

/// Sweeps expired sessions every `every` until `stop`; a store that does not answer is
/// logged and tried again at the next round.
pub async fn sweep_periodically(
    sessions: &Sessions,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        // Many expired at once (after a long outage): batches back to back, a few at most.
        for _ in 0..20 {
            match sessions.sweep().await {
                Ok(swept) if swept.sessions < SWEEP_BATCH && swept.logout_tokens < SWEEP_BATCH => {
                    break
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target: "mailauthd::web", error = %e, "cannot remove expired web sessions; will retry");
                    break;
                }
            }
        }
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
    fn csrf_must_match_exactly() {
        let session = Session {
            csrf: random_token().unwrap(),
            expires: 0,
            user: None,
            pending: None,
            notice: None,
        };
        assert!(session.csrf_matches(Some(&session.csrf.clone())));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("")));
        assert!(!session.csrf_matches(Some(&session.csrf[1..])));
        assert!(!session.csrf_matches(Some(&format!("{}x", session.csrf))));
    }

    #[test]
    fn the_store_key_is_a_digest_never_the_id() {
        let id = random_token().unwrap();
        let d = digest(&id);
        assert_eq!(d.len(), 64);
        assert!(!d.contains(&id));
        assert_eq!(d, digest(&id));
        assert_ne!(d, digest(&random_token().unwrap()));
        // SHA-256("abc"): the standard digest, nothing home-made.
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Sessions in a fresh SQLite database, on a manual clock.
    async fn sqlite_sessions() -> (
        tempfile::TempDir,
        crate::clock::ManualClock,
        Arc<dyn Store>,
        Sessions,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::clock::ManualClock::at(1_800_000_000);
        let options = crate::store::StoreOptions {
            url: crate::store::DatabaseUrl::new(format!("sqlite://{}/s.db", dir.path().display())),
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(5),
        };
        let store = crate::store::open(&options).await.unwrap();
        store.migrate().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let sessions = Sessions::new(
            store.clone(),
            Duration::from_secs(3600),
            MAX_ANONYMOUS,
            Arc::new(clock.clone()),
        );
        (dir, clock, store, sessions)
    }

    #[tokio::test]
    async fn sign_in_rotates_the_id_and_keeps_each_mailbox_to_its_newest_sessions() {
        let (_dir, clock, _store, s) = sqlite_sessions().await;
        let (old, _) = s.create().await.unwrap();
        let user = || SignedInUser {
            address: "a@example.org".into(),
            via: Via::Password,
            generation: 0,
        };
        let new = s.sign_in(Some(&old), user()).await.unwrap();
        assert_ne!(new, old);
        assert!(
            s.get(&old).await.unwrap().is_none(),
            "the old id is worth nothing"
        );
        assert_eq!(
            s.get(&new).await.unwrap().unwrap().user.unwrap().address,
            "a@example.org"
        );
        let mut ids = vec![new];
        for _ in 0..MAX_PER_MAILBOX + 5 {
            clock.advance(1);
            ids.push(s.sign_in(None, user()).await.unwrap());
        }
        let mut live = 0;
        for id in &ids {
            live += usize::from(s.get(id).await.unwrap().is_some());
        }
        assert_eq!(
            live as u64, MAX_PER_MAILBOX,
            "signing in again and again stays bounded"
        );
        assert!(
            s.get(ids.last().unwrap()).await.unwrap().is_some(),
            "the newest stays"
        );
    }

    #[tokio::test]
    async fn expired_sessions_end_and_the_periodic_sweep_removes_them() {
        let (_dir, clock, store, s) = sqlite_sessions().await;
        let (id, _) = s.create().await.unwrap();
        assert!(s.get(&id).await.unwrap().is_some());
        clock.advance(ANONYMOUS_LIFETIME.as_secs() as i64);
        assert!(
            s.get(&id).await.unwrap().is_none(),
            "anonymous sessions get 15 minutes"
        );
        // Still stored until the sweep runs (read as of the epoch, which sees every row).
        assert!(store.web_session(&digest(&id), 0).await.unwrap().is_some());
        let stop = tokio_util::sync::CancellationToken::new();
        let s = Arc::new(s);
        let task = {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                sweep_periodically(&s, Duration::from_millis(10), stop).await;
            })
        };
        let mut gone = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if store.web_session(&digest(&id), 0).await.unwrap().is_none() {
                gone = true;
                break;
            }
        }
        stop.cancel();
        task.await.unwrap();
        assert!(gone, "the sweep removed the expired row");
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
        let r = pending_record(&p);
        assert!(!format!("{r:?}").contains("123"));
    }
}
