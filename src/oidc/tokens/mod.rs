//! Validating the identity provider's access tokens for SASL OAUTHBEARER and XOAUTH2: the
//! provider side of [`crate::auth::TokenVerifier`].
//!
//! A token is checked one of two ways (`[oauth] introspection`):
//! - a JWT (three base64url parts whose first is a JSON header) is verified here with
//!   [`crate::oidc::jwt`] against the provider's key set, then its claims are held to
//!   [`claims::check`];
//! - anything else, or every token with `introspection = "always"`, is sent to the
//!   provider's RFC 7662 introspection endpoint with mailauthd's own client credentials;
//!   the answer must say `active: true`, and its claims are held to the same rules.
//!
//! Tokens longer than [`jwt::MAX_TOKEN_BYTES`] are refused before anything else, so no
//! one can make the daemon hash, parse or send on megabytes. Verdicts are cached by the
//! token's SHA-256 ([`cache`]). When the provider cannot be asked (down, slow, answering
//! nonsense), the answer is [`TokenError::Unavailable`], which the decision core turns into
//! a temporary failure, never a wrong password.

pub mod cache;
pub mod claims;
pub mod provider;
pub mod settings;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use serde_json::Value;

pub use settings::{IntrospectionClient, IntrospectionMode, OAuthSettings};

use crate::auth::{TokenChallenge, TokenError, TokenIdentity, TokenRefusal, TokenVerifier};
use crate::clock::Clock;
use crate::oidc::jwt::{self, JwtError};
use crate::oidc::{discovery_url, http_client, OidcError, OidcSettings};

pub struct TokenValidator {
    mode: IntrospectionMode,
    rules: claims::Rules,
    challenge: TokenChallenge,
    provider: provider::Provider,
    cache: cache::Cache,
    clock: Arc<dyn Clock>,
}

impl TokenValidator {
    /// Fetches nothing: the provider is asked when the first token comes.
    pub fn new(
        settings: &OAuthSettings,
        oidc: &OidcSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OidcError> {
        // The token path has its own, shorter timeout: a mail login waits on it.
        let mut http_settings = oidc.clone();
        http_settings.timeout = settings.timeout;
        let http = http_client(&http_settings)?;
        Ok(TokenValidator {
            mode: settings.introspection,
            rules: claims::Rules {
                issuer: oidc.issuer.clone(),
                audiences: settings.audiences.clone(),
                required_scope: settings.required_scope.clone(),
                skew_seconds: i64::try_from(settings.clock_skew.as_secs()).unwrap_or(600),
            },
            challenge: TokenChallenge {
                scope: settings
                    .required_scope
                    .clone()
                    .unwrap_or_else(|| "openid".into()),
                openid_configuration: discovery_url(oidc),
            },
            provider: provider::Provider::new(
                oidc.clone(),
                settings.introspection_url.clone(),
                http,
                clock.clone(),
            ),
            cache: cache::Cache::new(settings.cache_entries, settings.cache_ttl, clock.clone()),
            clock,
        })
    }

    async fn check(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        let jwt_shaped = looks_like_jwt(token);
        let introspect = match self.mode {
            IntrospectionMode::Always => true,
            IntrospectionMode::Auto => !jwt_shaped,
            IntrospectionMode::Never if jwt_shaped => false,
            IntrospectionMode::Never => return Err(TokenError::Refused(TokenRefusal::Malformed)),
        };
        let (claims, source) = if introspect {
            let answer = self
                .provider
                .introspect(token)
                .await
                .map_err(|e| TokenError::Unavailable(e.to_string()))?;
            if answer.get("active") != Some(&Value::Bool(true)) {
                return Err(TokenError::Refused(TokenRefusal::Inactive));
            }
            (answer, claims::Source::Introspection)
        } else {
            let claims = jwt::verify(token, &self.provider)
                .await
                .map_err(jwt_refusal)?;
            (claims, claims::Source::Jwt)
        };
        claims::check(&claims, &self.rules, source, self.clock.now()).map_err(TokenError::Refused)
    }
}

fn jwt_refusal(e: JwtError) -> TokenError {
    let refusal = match e {
        JwtError::Malformed(_) | JwtError::Critical => TokenRefusal::Malformed,
        JwtError::Algorithm(_) => TokenRefusal::Algorithm,
        JwtError::UnknownKey(_) => TokenRefusal::UnknownKey,
        JwtError::BadSignature => TokenRefusal::BadSignature,
        JwtError::Keys(why) => return TokenError::Unavailable(why.to_string()),
    };
    TokenError::Refused(refusal)
}

/// Three dot-separated parts, the first a base64url JSON object: a JWT to verify here.
/// Opaque tokens (random strings) never look like that.
fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .is_some_and(|h| h.is_object())
}

#[async_trait]
impl TokenVerifier for TokenValidator {
    async fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(TokenError::Refused(TokenRefusal::TooLong));
        }
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            // RFC 6750's b64token: nothing else is a token, and it is not worth a request.
            return Err(TokenError::Refused(TokenRefusal::Malformed));
        }
        let key = cache::key(token);
        if let Some(verdict) = self.cache.get(&key) {
            return verdict.map_err(TokenError::Refused);
        }
        let verdict = self.check(token).await;
        match &verdict {
            Ok(id) => self.cache.put(key, Ok(id.clone())),
            Err(TokenError::Refused(r)) => self.cache.put(key, Err(*r)),
            // Nobody could tell: the next attempt asks again.
            Err(TokenError::Unavailable(_)) => {}
        }
        verdict
    }

    fn challenge(&self) -> TokenChallenge {
        self.challenge.clone()
    }
}
