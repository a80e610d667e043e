//! What the identity-liveness check and the web sign-in read and write: each linked
//! mailbox's sealed refresh token, its suspension, the last check's answer and the last web
//! sign-in, and the lease that keeps two passes from running at once.
//!
//! A suspension never deletes anything: it sets two columns that the login read
//! ([`crate::store::LoginView`]) carries to the decision core, and bumps the credential
//! generation in the same statement, which ends the mailbox's page sessions.

use async_trait::async_trait;

use super::{IdentityStanding, LinkedMailbox, StoreResult};
use crate::clock::UnixTime;

#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Mailboxes bound to a provider account (issuer and subject set), by address; only
    /// `address`'s when given.
    async fn linked_mailboxes(&self, address: Option<&str>) -> StoreResult<Vec<LinkedMailbox>>;
    /// Replaces the sealed refresh token (a rotated one, or none). Not found: the mailbox
    /// went away.
    async fn store_refresh_token(&self, address: &str, sealed: Option<&str>) -> StoreResult<()>;
    /// A web sign-in through the provider: records its time, lifts a suspension, and keeps
    /// the new sealed refresh token when the provider issued one (an old one stays otherwise).
    async fn record_sign_in(
        &self,
        address: &str,
        at: UnixTime,
        sealed: Option<&str>,
    ) -> StoreResult<()>;
    /// What the provider answered at the last check.
    async fn record_identity_check(
        &self,
        address: &str,
        at: UnixTime,
        answer: &str,
    ) -> StoreResult<()>;
    /// Suspends the mailbox's mail logins with `reason`, bumping its credential generation
    /// in the same statement. `Ok(false)`: it was suspended already (nothing changed).
    async fn suspend_identity(
        &self,
        address: &str,
        reason: &str,
        at: UnixTime,
    ) -> StoreResult<bool>;
    /// `None`: no such mailbox.
    async fn identity_standing(&self, address: &str) -> StoreResult<Option<IdentityStanding>>;
    /// Takes (or renews) the pass lease for `holder` until `until`, if it is free, expired
    /// at `now`, or already `holder`'s. Returns whether `holder` holds it now.
    async fn take_check_lease(
        &self,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool>;
    /// Gives the lease back, if `holder` still holds it.
    async fn release_check_lease(&self, holder: &str) -> StoreResult<()>;
}
