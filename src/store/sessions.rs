//! Web page sessions and seen logout tokens: the records and the [`SessionStore`] trait.
//!
//! Sessions live in the database so that every daemon on it sees the same ones and a
//! restart signs nobody out. The store is keyed by the SHA-256 digest of the cookie's random
//! id, never the id itself: whoever reads the table (a backup, a replica) cannot open a
//! session with what they find. Turning the id into its digest is the web page's business
//! (`web::session`); the store only sees digests.

use async_trait::async_trait;

use super::StoreResult;
use crate::clock::UnixTime;

/// One session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSession {
    /// The token every form of this session carries.
    pub csrf: String,
    pub created_at: UnixTime,
    /// The session is gone from this second on.
    pub expires_at: UnixTime,
    /// `None`: nobody has signed in (a form's CSRF token, a sign-in under way).
    pub user: Option<SessionUser>,
    pub pending: Option<PendingSignInRecord>,
    /// A one-time notice for the next page.
    pub notice: Option<String>,
}

/// Who is signed in to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionUser {
    pub mailbox: String,
    /// The mailbox's credential generation when the session began.
    pub generation: i64,
    pub via: SignedInWith,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedInWith {
    Password,
    /// Through the identity provider: its ID token (the hint for RP-initiated logout) and
    /// the provider's account and session, by which a back-channel logout ends this one.
    Provider {
        id_token: String,
        issuer: String,
        subject: String,
        sid: Option<String>,
    },
}

/// A sign-in at the provider under way: what the callback must match.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingSignInRecord {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

impl std::fmt::Debug for PendingSignInRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingSignInRecord { .. }")
    }
}

/// Whose sessions a back-channel logout ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderSessions<'a> {
    /// The sessions begun in this provider session (`sid`).
    Sid { issuer: &'a str, sid: &'a str },
    /// Every session of this provider account (`sub`).
    Subject { issuer: &'a str, subject: &'a str },
}

/// Which sessions [`SessionStore::trim_web_sessions`] trims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionScope<'a> {
    /// Sessions nobody has signed in to.
    Anonymous,
    /// The sessions of one mailbox.
    Mailbox(&'a str),
}

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub sessions: u64,
    pub logout_tokens: u64,
}

/// Web page sessions and the logout tokens already used, shared by every daemon on the
/// database.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Refuses a digest already stored (`Conflict`).
    async fn create_web_session(&self, digest: &str, session: &WebSession) -> StoreResult<()>;
    /// The session, unless it has expired by `now`.
    async fn web_session(&self, digest: &str, now: UnixTime) -> StoreResult<Option<WebSession>>;
    /// Sets a live session's pending sign-in; `false` when the session has gone.
    async fn set_session_pending(
        &self,
        digest: &str,
        pending: &PendingSignInRecord,
        now: UnixTime,
    ) -> StoreResult<bool>;
    /// Takes the pending sign-in out of a live session. Of two daemons taking it at once
    /// one gets it, so a state and its verifier are used once.
    async fn take_session_pending(
        &self,
        digest: &str,
        now: UnixTime,
    ) -> StoreResult<Option<PendingSignInRecord>>;
    /// Sets a live session's one-time notice; `false` when the session has gone.
    async fn set_session_notice(
        &self,
        digest: &str,
        notice: &str,
        now: UnixTime,
    ) -> StoreResult<bool>;
    /// Takes the notice out, once.
    async fn take_session_notice(&self, digest: &str) -> StoreResult<Option<String>>;
    /// Removing a session that is not there is not an error.
    async fn delete_web_session(&self, digest: &str) -> StoreResult<()>;
    /// Ends the sessions a back-channel logout names; returns how many.
    async fn end_provider_sessions(&self, which: ProviderSessions<'_>) -> StoreResult<u64>;
    /// Keeps the `keep` sessions of `scope` that expire last and removes the others, at
    /// most [`TRIM_BATCH`] a call; returns how many went.
    async fn trim_web_sessions(&self, scope: SessionScope<'_>, keep: u64) -> StoreResult<u64>;
    /// Removes up to `batch` expired sessions and `batch` expired logout tokens.
    async fn sweep_expired(&self, now: UnixTime, batch: u64) -> StoreResult<Swept>;
    /// Records a logout token's `jti` until `expires_at`; `false`: it was recorded
    /// already, by this daemon or another (a replay).
    async fn record_logout_token(
        &self,
        issuer: &str,
        jti: &str,
        expires_at: UnixTime,
    ) -> StoreResult<bool>;
    /// A back-channel logout, once: records the token's `jti` (until `remember_until`) and
    /// ends the sessions it names, in one transaction, so a failure leaves neither done and
    /// the provider's retry is not taken for a replay. `None`: the `jti` was recorded
    /// already (a replay) and nothing was ended; else how many sessions ended.
    async fn logout_once(
        &self,
        jti: &str,
        remember_until: UnixTime,
        which: ProviderSessions<'_>,
    ) -> StoreResult<Option<u64>>;
}

/// Sessions [`SessionStore::trim_web_sessions`] removes in one call at most.
pub const TRIM_BATCH: u64 = 256;
