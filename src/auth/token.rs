//! Bearer tokens as a credential: what the decision core needs of a token validator.
//!
//! A mail client that signed in to webmail through the identity provider offers the
//! provider's access token (SASL OAUTHBEARER or XOAUTH2) instead of a password. The core
//! does not read tokens itself: a [`TokenVerifier`] (the provider side lives in
//! `oidc::tokens`) says whose token it is, or why it is no good, or that nobody can tell
//! right now. The core then holds the identity to the usual rules: the mailbox bound to
//! it, the name the client gave, the mailbox's state, domain and protocols.

use async_trait::async_trait;
use serde::Serialize;

use crate::clock::UnixTime;

/// Whose token it is, as the provider vouched for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The token's `iss`, exactly the configured issuer.
    pub issuer: String,
    /// The token's `sub`: with the issuer, the identity a mailbox is bound to.
    pub subject: String,
    /// The token's `exp`; a cached verdict never outlives it.
    pub expires_at: UnixTime,
}

/// Why a token was refused. Each is its own code in the audit line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRefusal {
    /// Not a JWT where one is required, not three base64url parts, claims not JSON, …
    Malformed,
    /// Longer than the validator reads.
    TooLong,
    /// `alg` is `none`, an HMAC, or anything else outside the allow-list.
    Algorithm,
    /// No key of the provider has the token's `kid`, even after fetching the keys anew.
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    /// `iss` is not exactly the configured issuer.
    Issuer,
    /// Neither `aud` nor `azp` names a configured client.
    Audience,
    /// The required scope is missing.
    Scope,
    /// The provider's introspection says `active: false`.
    Inactive,
    /// A required claim (`sub`, `exp`) is missing or of the wrong type.
    MissingClaim,
    /// An ID token: it tells the webmail who signed in and grants nothing. A webmail's ID
    /// tokens carry its own client id as `aud` and travel through browsers and logs, so
    /// one must never pass for the access token.
    IdToken,
}

impl TokenRefusal {
    pub fn code(self) -> &'static str {
        match self {
            TokenRefusal::Malformed => "token_malformed",
            TokenRefusal::TooLong => "token_too_long",
            TokenRefusal::Algorithm => "token_algorithm",
            TokenRefusal::UnknownKey => "token_unknown_key",
            TokenRefusal::BadSignature => "token_bad_signature",
            TokenRefusal::Expired => "token_expired",
            TokenRefusal::NotYetValid => "token_not_yet_valid",
            TokenRefusal::Issuer => "token_issuer",
            TokenRefusal::Audience => "token_audience",
            TokenRefusal::Scope => "token_scope",
            TokenRefusal::Inactive => "token_inactive",
            TokenRefusal::MissingClaim => "token_missing_claim",
            TokenRefusal::IdToken => "token_is_id_token",
        }
    }
}

display_via!(TokenRefusal, code);

/// What a validator answers besides an identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token refused: {0}")]
    Refused(TokenRefusal),
    /// Nobody can tell right now: the provider's keys or its introspection endpoint cannot
    /// be reached, or answered nonsense. A temporary failure, never "wrong password".
    #[error("the identity provider cannot be asked: {0}")]
    Unavailable(String),
}

/// What the RFC 7628 error reply tells a client whose token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenChallenge {
    /// The scope a token must be asked for with.
    pub scope: String,
    /// The provider's discovery document, where a client learns how to get a new token.
    pub openid_configuration: String,
}

/// Validates bearer tokens against the identity provider.
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    async fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError>;
    /// Fixed for the verifier's life: read from the settings at start.
    fn challenge(&self) -> TokenChallenge;
}
