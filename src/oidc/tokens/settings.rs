//! The `[oauth]` config section: which access tokens mail logins accept.

use std::time::Duration;

use openidconnect::url::Url;

use crate::secret::Secret;

/// How a token is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntrospectionMode {
    /// A JWT is verified here against the provider's keys; anything else is introspected.
    Auto,
    /// Every token is introspected (RFC 7662), JWT or not: revocation shows at once.
    Always,
    /// Only JWTs are accepted; nothing is sent to the provider but key fetches.
    Never,
}

/// A client that may call the introspection endpoint mailauthd serves (Dovecot 2.4's
/// `oauth2` passdb), with HTTP Basic authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntrospectionClient {
    pub client_id: String,
    pub client_secret: Secret,
}

/// `[oauth]`, checked. Needs `[oidc]`: the issuer, the discovery document and mailauthd's
/// own client credentials (for introspection at the provider) come from there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthSettings {
    /// The webmail clients whose tokens are accepted: `aud` or `azp` must name one.
    pub audiences: Vec<String>,
    /// A scope every token must carry, if set.
    pub required_scope: Option<String>,
    pub introspection: IntrospectionMode,
    /// The provider's RFC 7662 endpoint; by default the discovery document's
    /// `introspection_endpoint`.
    pub introspection_url: Option<Url>,
    /// Leeway for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// How many verdicts the validation cache holds.
    pub cache_entries: usize,
    /// How long a verdict is kept at most (never past the token's `exp`).
    pub cache_ttl: Duration,
    /// How long one call to the provider may take.
    pub timeout: Duration,
    /// Who may call our own introspection endpoint; none: the endpoint is off.
    pub endpoint_clients: Vec<IntrospectionClient>,
}
