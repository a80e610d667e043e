//! What a decision says: accepted, refused (with the rule that refused), or "try later".

use serde::Serialize;

use super::services::Door;
use super::token::TokenRefusal;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Success),
    Fail(FailReason),
    /// The answer is unknown right now (database down, hash pool full); a client must be
    /// told to retry, never that its password is wrong.
    TempFail(TempCause),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Fail(_) => "fail",
            Outcome::TempFail(_) => "tempfail",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Ok(s) => match s.credential {
                Credential::Password => "password",
                Credential::AppPassword { .. } => "app_password",
                Credential::Token => "token",
            },
            Outcome::Fail(r) => r.code(),
            Outcome::TempFail(c) => c.code(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Success {
    /// The canonical address; front doors answer with this `user=`.
    pub mailbox: String,
    /// The mail protocol, or the web page.
    pub protocol: Door,
    pub credential: Credential,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    Password,
    AppPassword {
        id: i64,
        name: String,
    },
    /// An access token of the identity provider (OAUTHBEARER, XOAUTH2).
    Token,
}

/// Which rule refused. Logs carry the code; clients see one generic message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    Throttled,
    UnknownService,
    UnknownUser,
    DomainDisabled,
    MailboxDisabled,
    MailboxNoLogin,
    ProtocolNotAllowed,
    AppPasswordExpired,
    AppPasswordProtocol,
    AppPasswordNetwork,
    /// An `oidc` mailbox was offered something other than a valid app password (on the web
    /// page: a password at all; it signs in through the provider).
    OidcNeedsAppPassword,
    /// The identity provider no longer knows the person (the liveness check got
    /// `invalid_grant`); lifted by their next web sign-in.
    IdentityRevoked,
    /// `[oidc] max_days_without_sign_in` has passed since the last web sign-in.
    SignInOverdue,
    /// The stored hash uses an unknown or broken scheme: a configuration problem.
    UnusableStoredHash,
    BadCredentials,
    /// A bearer token was offered but token sign-in is not configured (no `[oauth]`), or
    /// through a door that takes none (the web page).
    TokensNotAccepted,
    /// The validator refused the token.
    TokenRefused(TokenRefusal),
    /// A valid token whose identity is bound to no mailbox here.
    TokenUnbound,
    /// A valid token of one person offered with another mailbox's name.
    TokenNotForMailbox,
    /// The token's mailbox is a `local` one, which never accepts tokens.
    TokenForLocalMailbox,
}

impl FailReason {
    pub fn code(self) -> &'static str {
        match self {
            FailReason::Throttled => "throttled",
            FailReason::UnknownService => "unknown_service",
            FailReason::UnknownUser => "unknown_user",
            FailReason::DomainDisabled => "domain_disabled",
            FailReason::MailboxDisabled => "mailbox_disabled",
            FailReason::MailboxNoLogin => "mailbox_no_login",
            FailReason::ProtocolNotAllowed => "protocol_not_allowed",
            FailReason::AppPasswordExpired => "app_password_expired",
            FailReason::AppPasswordProtocol => "app_password_protocol",
            FailReason::AppPasswordNetwork => "app_password_network",
            FailReason::OidcNeedsAppPassword => "oidc_needs_app_password",
            FailReason::IdentityRevoked => "identity_revoked",
            FailReason::SignInOverdue => "sign_in_overdue",
            FailReason::UnusableStoredHash => "unusable_stored_hash",
            FailReason::BadCredentials => "bad_credentials",
            FailReason::TokensNotAccepted => "tokens_not_accepted",
            FailReason::TokenRefused(why) => why.code(),
            FailReason::TokenUnbound => "token_unbound",
            FailReason::TokenNotForMailbox => "token_not_for_mailbox",
            FailReason::TokenForLocalMailbox => "token_for_local_mailbox",
        }
    }
}

display_via!(FailReason, code);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TempCause {
    StoreUnavailable,
    HashPoolBusy,
    Internal,
    /// A token needs the provider (introspection, a key refetch) and it cannot be reached.
    IdentityProviderUnavailable,
}

impl TempCause {
    pub fn code(self) -> &'static str {
        match self {
            TempCause::StoreUnavailable => "store_unavailable",
            TempCause::HashPoolBusy => "hash_pool_busy",
            TempCause::Internal => "internal_error",
            TempCause::IdentityProviderUnavailable => "identity_provider_unavailable",
        }
    }
}

display_via!(TempCause, code);
