//! The one decision every front door asks for.
//!
//! [`Authenticator::authenticate`] turns one [`AuthRequest`] into an [`Outcome`] and writes
//! one audit line for it. The rules, in order:
//! 1. The throttle (`admit`), before anything touches the store or the hash pool.
//! 2. The login must be an address (`names::Address::parse`).
//! 3. The mailbox must exist.
//! 4. The mailbox and its domain must be active; an identity-provider mailbox must not be
//!    suspended by the liveness check (`identity_revoked`) nor past
//!    `max_days_without_sign_in` since its last web sign-in (`sign_in_overdue`).
//! 5. The mailbox must allow the protocol of the service.
//! 6. A secret shaped like an app password is checked as one of the mailbox's app passwords
//!    (expiry, protocols, source networks), with no hashing.
//! 7. Otherwise the stored password, for `local` mailboxes only: the verification cache,
//!    then the hash pool.
//!
//! A login that is no address, an unknown mailbox and one refused by rules 4 and 5 still
//! cost one dummy hash, so timing does not tell them from a wrong password.
//!
//! A bearer token (OAUTHBEARER, XOAUTH2, the introspection endpoint) takes its own path
//! after the throttle:
//! 1. The door must be a mail protocol: the web page takes no token.
//! 2. Token sign-in must be configured (a [`TokenVerifier`]).
//! 3. The verifier must vouch for the token; a provider nobody can reach is a temporary
//!    failure, never a refusal.
//! 4. The token's identity (issuer and subject) must be bound to a mailbox.
//! 5. A login the client named must be that very mailbox: a token never opens another
//!    mailbox, nor is the name silently replaced.
//! 6. The mailbox must be an `oidc` one: a `local` mailbox answers to its password only.
//! 7. Rules 4 and 5 above, as for any login.
//!
//! A token costs no dummy hash: a refused token, an unbound identity and a refused mailbox
//! all end before any hashing, and a guesser learns nothing from the time, since the
//! verifier's work does not depend on any mailbox. Each refusal counts toward the throttle
//! like a wrong password; an unreachable provider does not.

use std::net::IpAddr;
use std::sync::Arc;

use super::app_password::{looks_like_app_password, AppPasswordKey};
use super::last_use::LastUseSender;
use super::password::{self, Argon2Params, Verified};
use super::pool::{HashPool, PoolError};
use super::services::{Door, ServiceMap};
use super::throttle::{Attempt, Settlement, Throttle, Ticket, Verdict};
use super::token::{TokenError, TokenIdentity, TokenRefusal, TokenVerifier};
use super::verify_cache::VerifyCache;
use super::{Credential, FailReason, Outcome, Success, TempCause};
use crate::audit::printable;
use crate::clock::Clock;
use crate::names::{Address, NameError, Protocol};
use crate::secret::Secret;
use crate::store::{AuthSource, LastUse, LoginStore, LoginView, MailboxState, StoreError};

/// What kind of secret a client offered: the SASL mechanism says, never its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// PLAIN, LOGIN, the web page's form: a password or an app password.
    Password,
    /// OAUTHBEARER, XOAUTH2, the introspection endpoint: an access token of the identity
    /// provider. The login may be empty (OAUTHBEARER without `a=`, the endpoint).
    BearerToken,
}

/// One login attempt as a front door saw it.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    pub login: &'a str,
    pub secret: &'a Secret,
    pub kind: SecretKind,
    /// As the client named it (`imap`, `submission`, …); mapped through [`ServiceMap`].
    pub service: &'a str,
    pub remote_ip: Option<IpAddr>,
    pub secured: bool,
    /// SASL mechanism, for the audit line only.
    pub mechanism: Option<&'a str>,
    /// Dovecot's `no-penalty`, which a front door honours from trusted peers only: this
    /// attempt is neither counted as a failure nor as a success. Existing delays and
    /// blocks still apply.
    pub no_penalty: bool,
    /// Notified once the attempt is charged to the throttle, so a connection can have its
    /// requests charged in the order they arrived while deciding them all at once.
    pub admitted: Option<&'a tokio::sync::Notify>,
}

/// What a login's service and secret look like, before any rule is applied.
#[derive(Clone, Copy)]
struct LoginShape {
    protocol: Option<Door>,
    app_password: bool,
}

pub struct AuthenticatorParts {
    pub store: Arc<dyn LoginStore>,
    pub key: AppPasswordKey,
    pub pool: Arc<HashPool>,
    pub clock: Arc<dyn Clock>,
    pub services: ServiceMap,
    pub argon2: Argon2Params,
    pub rehash_on_login: bool,
    pub last_use: LastUseSender,
    pub throttle: Arc<Throttle>,
    pub verify_cache: Arc<VerifyCache>,
    /// `[oidc] max_days_without_sign_in`, in seconds; `None`: off.
    pub max_age_without_sign_in: Option<i64>,
    /// Validates bearer tokens; `None` when `[oauth]` is absent and no token is accepted.
    pub tokens: Option<Arc<dyn TokenVerifier>>,
}

pub struct Authenticator {
    parts: AuthenticatorParts,
    /// Verified against when there is no real hash to check, so an unknown or disabled
    /// account costs the same hash work as a real one and timing does not tell them apart.
    dummy_hash: String,
}

/// How a decision ended, before it becomes an [`Outcome`]; carries detail for the log.
type Step<T> = Result<T, Outcome>;

impl Authenticator {
    pub fn new(parts: AuthenticatorParts) -> Result<Self, password::HashError> {
        let dummy_hash = password::hash_argon2id(b"mailauthd dummy password", parts.argon2)?;
        Ok(Authenticator { parts, dummy_hash })
    }

    pub fn store(&self) -> &Arc<dyn LoginStore> {
        &self.parts.store
    }

    pub fn pool(&self) -> &Arc<HashPool> {
        &self.parts.pool
    }

    pub fn key(&self) -> &AppPasswordKey {
        &self.parts.key
    }

    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.parts.throttle
    }

    pub fn verify_cache(&self) -> &Arc<VerifyCache> {
        &self.parts.verify_cache
    }

    /// How long a door should hold back the answer to an attempt the throttle refused
    /// (`Fail(Throttled)`), so a blocked client learns nothing faster than a delayed one.
    pub fn refusal_delay(&self) -> std::time::Duration {
        self.parts.throttle.blocked_delay()
    }

    /// Whether bearer tokens are accepted at all, so the doors offer their mechanisms.
    pub fn accepts_tokens(&self) -> bool {
        self.parts.tokens.is_some()
    }

    /// What a refused token's error reply says; `None` when no token is accepted.
    pub fn token_challenge(&self) -> Option<super::token::TokenChallenge> {
        self.parts.tokens.as_ref().map(|t| t.challenge())
    }

    pub fn protocol_of(&self, service: &str) -> Option<Protocol> {
        self.parts.services.resolve(service)
    }

    /// Decides one login and writes one audit line for it.
    pub async fn authenticate(&self, req: &AuthRequest<'_>) -> Outcome {
        self.authenticate_with_identity(req).await.0
    }

    /// [`Authenticator::authenticate`], and for a token accepted, whose token it was: the
    /// introspection endpoint answers with its subject and expiry.
    pub async fn authenticate_with_identity(
        &self,
        req: &AuthRequest<'_>,
    ) -> (Outcome, Option<TokenIdentity>) {
        // How long the decision took, for the metrics only: it decides nothing, so it is
        // measured on the monotonic clock rather than taken from the `Clock`.
        let started = std::time::Instant::now();
        let address = Address::parse(req.login);
        let account = match req.kind {
            SecretKind::BearerToken if req.login.is_empty() => {
                nameless_token_account(req.secret.expose())
            }
            SecretKind::BearerToken | SecretKind::Password => throttle_account(&address, req.login),
        };
        // Looked at once, for the decision and for the metrics.
        let door = self.parts.services.door(req.service);
        let login = LoginShape {
            protocol: door,
            // On the web page a secret is a password whatever it looks like.
            app_password: door != Some(Door::Web)
                && req.kind == SecretKind::Password
                && looks_like_app_password(req.secret.expose()),
        };
        let unguessable = login.app_password || req.kind == SecretKind::BearerToken;
        let (admitted, ticket) = self.admit(req, &account, unguessable).await;
        let mut identity = None;
        let outcome = match (admitted, req.kind) {
            (Ok(()), SecretKind::Password) => match self
                .decide(
                    req,
                    address,
                    login,
                    ticket.passwords_refused(),
                    ticket.password_delay(),
                )
                .await
            {
                Ok(success) => Outcome::Ok(success),
                Err(outcome) => outcome,
            },
            (Ok(()), SecretKind::BearerToken) => {
                match self.decide_token(req, address, login.protocol).await {
                    Ok((success, whose)) => {
                        identity = Some(whose);
                        Outcome::Ok(success)
                    }
                    Err(outcome) => outcome,
                }
            }
            (Err(refused), _) => refused,
        };
        self.settle(req, ticket, &outcome).await;
        audit(req, &outcome);
        crate::metrics::auth_decided(
            login.protocol.map_or("unknown", Door::name),
            req.mechanism,
            outcome.label(),
            outcome.reason(),
            login.app_password,
            started.elapsed(),
        );
        if let Outcome::Ok(success) = &outcome {
            self.parts.last_use.record(LastUse {
                mailbox: success.mailbox.clone(),
                app_password_id: match &success.credential {
                    Credential::AppPassword { id, .. } => Some(*id),
                    Credential::Password | Credential::Token => None,
                },
                at: self.parts.clock.now(),
                ip: req.remote_ip.map(|ip| ip.to_string()),
                service: success.protocol.name().to_string(),
            });
        }
        (outcome, identity)
    }

    async fn decide(
        &self,
        req: &AuthRequest<'_>,
        address: Result<Address, NameError>,
        login: LoginShape,
        passwords_refused: bool,
        password_delay: std::time::Duration,
    ) -> Step<Success> {
        let Some(door) = login.protocol else {
            return Err(Outcome::Fail(FailReason::UnknownService));
        };
        let Ok(address) = address else {
            return self.refuse_after_dummy(req, FailReason::UnknownUser).await;
        };
        // A secret shaped like an app password is looked up together with the mailbox:
        // one query, and no hashing, for the most common login of all.
        let read = if login.app_password {
            let lookup = self.parts.key.lookup_hash(req.secret.expose());
            self.parts
                .store
                .login_view_with_app_password(address.as_str(), &lookup)
                .await
        } else {
            self.parts
                .store
                .login_view(address.as_str())
                .await
                .map(|v| v.map(|v| (v, None)))
        };
        let (view, app_password) = match read {
            Ok(Some(found)) => found,
            Ok(None) => return self.refuse_after_dummy(req, FailReason::UnknownUser).await,
            Err(e) => return Err(store_trouble(&e)),
        };
        if let Some(reason) = account_refusal(&view, door, self.overdue_before()) {
            return self.refuse_after_dummy(req, reason).await;
        }
        if let (Some(found), Door::Mail(protocol)) = (app_password, door) {
            return self.check_app_password(&view, found, protocol, req);
        }
        if passwords_refused {
            // The account is blocked for password guessing; only its block's exemption
            // for app passwords let this secret in, and it is none of this mailbox's.
            return Err(Outcome::Fail(FailReason::Throttled));
        }
        if !password_delay.is_zero() {
            // The account's delay, which this app-password-shaped secret skipped at the
            // door, applies before it is tried as a password.
            tokio::time::sleep(password_delay).await;
        }
        if view.auth_source == AuthSource::Oidc {
            return self
                .refuse_after_dummy(req, FailReason::OidcNeedsAppPassword)
                .await;
        }
        self.check_stored_password(&view, door, req).await
    }

    /// A bearer token's path (see the module doc), after the throttle admitted it.
    async fn decide_token(
        &self,
        req: &AuthRequest<'_>,
        address: Result<Address, NameError>,
        door: Option<Door>,
    ) -> Step<(Success, TokenIdentity)> {
        let protocol = match door {
            Some(Door::Mail(protocol)) => protocol,
            Some(Door::Web) => return Err(Outcome::Fail(FailReason::TokensNotAccepted)),
            None => return Err(Outcome::Fail(FailReason::UnknownService)),
        };
        let Some(verifier) = &self.parts.tokens else {
            return Err(Outcome::Fail(FailReason::TokensNotAccepted));
        };
        // A token is base64url or similar ASCII by every standard that issues one.
        let Ok(token) = std::str::from_utf8(req.secret.expose()) else {
            return Err(Outcome::Fail(FailReason::TokenRefused(
                TokenRefusal::Malformed,
            )));
        };
        let identity = match verifier.verify(token).await {
            Ok(identity) => identity,
            Err(TokenError::Refused(why)) => {
                return Err(Outcome::Fail(FailReason::TokenRefused(why)))
            }
            Err(TokenError::Unavailable(why)) => {
                tracing::warn!(error = %why, "cannot check a bearer token with the identity provider");
                return Err(Outcome::TempFail(TempCause::IdentityProviderUnavailable));
            }
        };
        let view = match self
            .parts
            .store
            .login_view_by_identity(&identity.issuer, &identity.subject)
            .await
        {
            Ok(Some(view)) => view,
            Ok(None) => {
                // The audit line names no mailbox here; the postmaster needs the identity
                // to find whose token it was.
                tracing::info!(
                    target: "mailauthd::auth",
                    issuer = %printable(&identity.issuer, LOGIN_CHARS),
                    subject = %printable(&identity.subject, LOGIN_CHARS),
                    "valid token of an identity bound to no mailbox"
                );
                return Err(Outcome::Fail(FailReason::TokenUnbound));
            }
            Err(e) => return Err(store_trouble(&e)),
        };
        if !req.login.is_empty()
            && address
                .as_ref()
                .map_or(true, |named| named.as_str() != view.address)
        {
            return Err(Outcome::Fail(FailReason::TokenNotForMailbox));
        }
        if view.auth_source != AuthSource::Oidc {
            return Err(Outcome::Fail(FailReason::TokenForLocalMailbox));
        }
        if let Some(reason) = account_refusal(&view, Door::Mail(protocol), self.overdue_before()) {
            return Err(Outcome::Fail(reason));
        }
        let success = Success {
            mailbox: view.address,
            protocol: Door::Mail(protocol),
            credential: Credential::Token,
        };
        Ok((success, identity))
    }

    /// Web sign-ins before this (unix seconds) are too old, under
    /// `[oidc] max_days_without_sign_in`.
    fn overdue_before(&self) -> Option<i64> {
        self.parts
            .max_age_without_sign_in
            .map(|age| self.parts.clock.now().saturating_sub(age))
    }

    /// Rule 1 (see the module doc): the throttle, before anything touches the store or the
    /// hash pool. The attempt is charged now, while it is in flight (see
    /// [`Throttle::admit`]); waiting is an async sleep, so a delayed login holds no thread.
    /// A refusal comes back at once: the door holds its answer back
    /// ([`Authenticator::refusal_delay`]) without holding anything a login in progress
    /// needs.
    async fn admit(
        &self,
        req: &AuthRequest<'_>,
        account: &str,
        unguessable: bool,
    ) -> (Step<()>, Ticket<'_>) {
        let throttle = &self.parts.throttle;
        let now = self.parts.clock.now_ms();
        let attempt = Attempt {
            rip: req.remote_ip,
            account,
            fingerprint: throttle
                .fingerprinter()
                .fingerprint(account, req.secret.expose()),
            unguessable,
            counted: !req.no_penalty,
        };
        let (verdict, ticket) = throttle.admit(attempt, now).await;
        if let Some(admitted) = req.admitted {
            admitted.notify_one();
        }
        let admitted = match verdict {
            Verdict::Allow => Ok(()),
            Verdict::Delay(delay) => {
                crate::metrics::throttle_delayed();
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Verdict::Blocked { until, key } => {
                crate::metrics::throttle_blocked(key.kind().name());
                tracing::debug!(
                    target: "mailauthd::throttle",
                    key = %key,
                    kind = key.kind().name(),
                    blocked_for_ms = until.saturating_sub(now),
                    "attempt refused while blocked"
                );
                Err(Outcome::Fail(FailReason::Throttled))
            }
        };
        (admitted, ticket)
    }

    /// Feeds a decision back into the throttle and ends the attempt's reservation.
    async fn settle(&self, req: &AuthRequest<'_>, ticket: Ticket<'_>, outcome: &Outcome) {
        let settlement = if req.no_penalty {
            Settlement::Neither
        } else {
            settlement(outcome)
        };
        let now = self.parts.clock.now_ms();
        self.parts.throttle.settle(ticket, settlement, now).await;
    }

    /// Rule 6 (see the module doc) for an app password of this mailbox that the secret
    /// matched.
    fn check_app_password(
        &self,
        view: &LoginView,
        found: crate::store::AppPassword,
        protocol: Protocol,
        req: &AuthRequest<'_>,
    ) -> Step<Success> {
        let refusal = if found
            .expires_at
            .is_some_and(|t| t <= self.parts.clock.now())
        {
            Some(FailReason::AppPasswordExpired)
        } else if !found.allows(protocol) {
            Some(FailReason::AppPasswordProtocol)
        } else if !found.networks.is_empty()
            && !req
                .remote_ip
                .is_some_and(|ip| found.networks.iter().any(|n| n.contains(&ip)))
        {
            Some(FailReason::AppPasswordNetwork)
        } else {
            None
        };
        match refusal {
            Some(reason) => Err(Outcome::Fail(reason)),
            None => Ok(Success {
                mailbox: view.address.clone(),
                protocol: Door::Mail(protocol),
                credential: Credential::AppPassword {
                    id: found.id,
                    name: found.name,
                },
            }),
        }
    }

    async fn check_stored_password(
        &self,
        view: &LoginView,
        protocol: Door,
        req: &AuthRequest<'_>,
    ) -> Step<Success> {
        let Some(stored) = view.password_hash.clone().filter(|h| !h.is_empty()) else {
            return self
                .refuse_after_dummy(req, FailReason::BadCredentials)
                .await;
        };
        let cache = &self.parts.verify_cache;
        let proof = cache.key_for(&view.address, &stored, req.secret.expose());
        let verdict = if proof
            .as_ref()
            .is_some_and(|p| cache.proven(&view.address, p))
        {
            Ok(Verified::Match)
        } else {
            let verdict = self
                .verify_on_pool(stored.clone(), req.secret.clone())
                .await?;
            if let (Ok(Verified::Match), Some(proof)) = (&verdict, proof) {
                cache.remember(&view.address, proof);
            }
            verdict
        };
        match verdict {
            Ok(Verified::Match) => {
                if self.parts.rehash_on_login && password::needs_rehash(&stored) {
                    self.rehash_later(view.address.clone(), stored, req.secret.clone());
                }
                Ok(Success {
                    mailbox: view.address.clone(),
                    protocol,
                    credential: Credential::Password,
                })
            }
            Ok(Verified::Mismatch) => Err(Outcome::Fail(FailReason::BadCredentials)),
            Err(e) => {
                tracing::error!(
                    user = %view.address,
                    error = %e,
                    "stored password hash is unusable; set a new password for this mailbox"
                );
                Err(Outcome::Fail(FailReason::UnusableStoredHash))
            }
        }
    }

    async fn refuse_after_dummy(&self, req: &AuthRequest<'_>, reason: FailReason) -> Step<Success> {
        // Only the time spent matters; the verdict on the dummy hash is meaningless.
        let _spent = self
            .verify_on_pool(self.dummy_hash.clone(), req.secret.clone())
            .await?;
        Err(Outcome::Fail(reason))
    }

    /// Checks `secret` against `hash` on the hash pool, so the slow hash never runs on
    /// an async worker thread.
    async fn verify_on_pool(
        &self,
        hash: String,
        secret: Secret,
    ) -> Step<Result<Verified, password::HashError>> {
        self.parts
            .pool
            .run(move |scratch| password::verify_in(&hash, secret.expose(), scratch))
            .await
            .map_err(pool_trouble)
    }

    /// Upgrades an imported hash to Argon2id after a login proved the password, without
    /// making that login wait.
    fn rehash_later(&self, address: String, old: String, secret: Secret) {
        let pool = self.parts.pool.clone();
        let store = self.parts.store.clone();
        let params = self.parts.argon2;
        tokio::spawn(async move {
            let Ok(Ok(new)) = pool
                // The new hash makes its own memory: the worker's kept scratch is freed
                // first, so the worker never holds both.
                .run(move |scratch| {
                    *scratch = password::Scratch::default();
                    password::hash_argon2id(secret.expose(), params)
                })
                .await
            else {
                return; // Busy or failed: the next login tries again.
            };
            match store.replace_password_hash(&address, &old, &new).await {
                Ok(true) => tracing::info!(user = %address, "password hash upgraded to ARGON2ID"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(user = %address, error = %e, "could not store upgraded password hash")
                }
            }
        });
    }
}

/// Rules 4 and 5 (see the module doc): the account and its domain may log in, with this
/// protocol. The web page is no mail protocol: the mailbox's protocols gate the app
/// passwords made there, not the page itself.
///
/// An identity-provider mailbox is also refused while the liveness check has it suspended,
/// and when its last web sign-in is older than `overdue_before` (unix seconds); `local`
/// mailboxes answer to neither.
fn account_refusal(
    view: &LoginView,
    door: Door,
    overdue_before: Option<i64>,
) -> Option<FailReason> {
    match view.state {
        MailboxState::Disabled => return Some(FailReason::MailboxDisabled),
        MailboxState::NoLogin => return Some(FailReason::MailboxNoLogin),
        MailboxState::Active => {}
    }
    if !view.domain_active {
        return Some(FailReason::DomainDisabled);
    }
    if view.auth_source == AuthSource::Oidc {
        if view.identity_suspended.is_some() {
            return Some(FailReason::IdentityRevoked);
        }
        // No recorded sign-in counts as overdue: the migration gave every linked mailbox
        // a start, so only a mailbox that never signed in through the provider has none.
        if let Some(before) = overdue_before {
            if view.last_sign_in_at.is_none_or(|at| at < before) {
                return Some(FailReason::SignInOverdue);
            }
        }
    }
    match door {
        Door::Mail(protocol) if !view.protocols.contains(protocol) => {
            Some(FailReason::ProtocolNotAllowed)
        }
        Door::Mail(_) | Door::Web => None,
    }
}

/// What a decision means to the throttle.
fn settlement(outcome: &Outcome) -> Settlement {
    match outcome {
        Outcome::Ok(_) => Settlement::Success,
        // Each of these is what a guesser sees as "wrong": an unknown or disabled account
        // and a refused credential must cost the same, or counting would tell them apart.
        // A guess the hash pool was too busy to check counts as one too, or keeping the
        // pool busy would make guessing free.
        Outcome::Fail(
            FailReason::UnknownUser
            | FailReason::DomainDisabled
            | FailReason::MailboxDisabled
            | FailReason::MailboxNoLogin
            | FailReason::IdentityRevoked
            | FailReason::SignInOverdue
            | FailReason::ProtocolNotAllowed
            | FailReason::AppPasswordExpired
            | FailReason::AppPasswordProtocol
            | FailReason::AppPasswordNetwork
            | FailReason::OidcNeedsAppPassword
            | FailReason::BadCredentials
            | FailReason::TokensNotAccepted
            | FailReason::TokenRefused(_)
            | FailReason::TokenUnbound
            | FailReason::TokenNotForMailbox
            | FailReason::TokenForLocalMailbox,
        )
        | Outcome::TempFail(TempCause::HashPoolBusy) => Settlement::Failure,
        // Not guesses: an attempt refused by the throttle itself, a service name we do
        // not serve (a client set up wrongly, decided before any account is looked up),
        // or our own fault (a broken stored hash, an outage).
        Outcome::Fail(
            FailReason::Throttled | FailReason::UnknownService | FailReason::UnusableStoredHash,
        )
        | Outcome::TempFail(
            TempCause::StoreUnavailable
            | TempCause::Internal
            | TempCause::IdentityProviderUnavailable,
        ) => Settlement::Neither,
    }
}

fn store_trouble(e: &StoreError) -> Outcome {
    tracing::warn!(error = %e, "store error during authentication");
    Outcome::TempFail(if e.is_unavailable() {
        TempCause::StoreUnavailable
    } else {
        TempCause::Internal
    })
}

fn pool_trouble(e: PoolError) -> Outcome {
    match e {
        PoolError::Busy(_) => Outcome::TempFail(TempCause::HashPoolBusy),
        PoolError::WorkerFailed => Outcome::TempFail(TempCause::Internal),
    }
}

/// One line per decision with fixed field names, so fail2ban and people can read it.
fn audit(req: &AuthRequest<'_>, outcome: &Outcome) {
    // At `warn`, busy servers log no accepted login: build no line for them either.
    let enabled = match outcome {
        Outcome::Ok(_) => tracing::enabled!(target: "mailauthd::audit", tracing::Level::INFO),
        Outcome::Fail(_) => tracing::enabled!(target: "mailauthd::audit", tracing::Level::WARN),
        Outcome::TempFail(_) => {
            tracing::enabled!(target: "mailauthd::audit", tracing::Level::ERROR)
        }
    };
    if !enabled {
        return;
    }
    let rip = req
        .remote_ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "-".into());
    // A token offered without a name says whose it is only once it is accepted.
    let user = match outcome {
        Outcome::Ok(success) if req.login.is_empty() => printable(&success.mailbox, LOGIN_CHARS),
        _ => printable(req.login, LOGIN_CHARS),
    };
    let mech = req.mechanism.unwrap_or("-");
    let (label, reason) = (outcome.label(), outcome.reason());
    match outcome {
        Outcome::Ok(_) => {
            tracing::info!(target: "mailauthd::audit", service = req.service, user, rip, mech, outcome = label, reason, "auth")
        }
        Outcome::Fail(_) => {
            tracing::warn!(target: "mailauthd::audit", service = req.service, user, rip, mech, outcome = label, reason, "auth")
        }
        Outcome::TempFail(_) => {
            tracing::error!(target: "mailauthd::audit", service = req.service, user, rip, mech, outcome = label, reason, "auth")
        }
    }
}

/// Login names come from the network: log lines and throttle keys show this many of their
/// characters at most.
const LOGIN_CHARS: usize = 128;

/// The account a login counts against: its canonical address, or for a login that is no
/// address (which can only fail) the bounded, lower-cased text, so `ADMIN` and `admin`
/// are one key.
fn throttle_account(address: &Result<Address, NameError>, login: &str) -> String {
    match address {
        Ok(address) => address.as_str().to_string(),
        Err(_) => printable(login.trim(), LOGIN_CHARS).to_lowercase(),
    }
}

/// The account a token offered without a name counts against: its own, so that nameless
/// attempts do not all add up on one account whose block would stop every one of them.
/// Guessing is still held back by the source network's count. A digest, so no token is
/// kept in the throttle's tables or in Redis.
fn nameless_token_account(token: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let digest = Sha256::digest(token);
    let mut account = String::from("token:");
    for byte in &digest[..8] {
        // Writing to a String cannot fail.
        let _ = write!(account, "{byte:02x}");
    }
    account
}
