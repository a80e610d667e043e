//! The OpenID Connect relying party: Authorization Code flow with PKCE (S256), `state` and
//! `nonce`; the ID token validated (JWKS signature, `iss`, `aud`, `exp`, nonce); UserInfo
//! claims merged over the ID token's.
//!
//! Nothing here knows about HTTP requests from browsers or the mailbox store: the web layer
//! keeps the pending sign-in in its session and hands the validated claims to provisioning.

pub mod claims;
pub mod fetch;
pub mod jwt;
pub mod liveness;
pub mod logout;
pub mod probe;
pub mod refresh;
pub mod sealed;
pub mod settings;
pub mod tokens;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::url::form_urlencoded;
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthType, AuthUrl, AuthorizationCode, Client,
    ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndSessionUrl, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpClientError, IdToken, IdTokenFields, IssuerUrl, JsonWebKeySet,
    JsonWebKeySetUrl, LogoutProviderMetadata, LogoutRequest, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadata, RedirectUrl,
    RequestTokenError, ResponseTypes, Scope, StandardErrorResponse, StandardTokenResponse,
    TokenResponse, TokenUrl, UserInfoClaims, UserInfoError, UserInfoUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::sync::Mutex;

pub use claims::{ClaimError, ClaimNames};
pub use settings::{ClientAuth, ExplicitEndpoints, LivenessSettings, OidcSettings};

use crate::clock::Clock;
use crate::provision::SignInClaims;
use crate::secret::Secret;
use fetch::FetchError;

/// Provider metadata and keys are re-read this often, so key rotation and endpoint changes
/// reach us without a restart.
const METADATA_MAX_AGE: Duration = Duration::from_secs(600);

/// The scope that asks for a refresh token (OpenID Connect Core §11).
const OFFLINE_ACCESS: &str = "offline_access";

/// Every claim the provider sends, beyond the standard ones, kept as JSON: which claims
/// matter (address, template, name) is configuration, not code.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl AdditionalClaims for ExtraClaims {}

type IdFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenResp = StandardTokenResponse<IdFields, CoreTokenType>;
type OurIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
/// Discovery fields beyond the standard and logout ones that we act on.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraProviderMetadata {
    /// RFC 9207: the provider puts `iss` in every authorisation response, so a response
    /// from another provider (a mix-up attack) can be told apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<Value>,
}

impl AdditionalProviderMetadata for ExtraProviderMetadata {}

impl ExtraProviderMetadata {
    /// `true` (or the string `"true"`, which some providers send).
    pub fn sends_response_iss(&self) -> bool {
        match &self.authorization_response_iss_parameter_supported {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }
}

pub(crate) type Metadata = ProviderMetadata<
    LogoutProviderMetadata<ExtraProviderMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;
pub(crate) type OidcClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResp,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Debug, Error)]
pub enum OidcError {
    #[error("cannot reach the identity provider: {0}")]
    Unreachable(String),
    #[error("the identity provider's metadata is unusable: {0}")]
    Metadata(String),
    #[error("the token endpoint refused the code: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    TokenRefused {
        error: String,
        description: Option<String>,
    },
    #[error("the token endpoint's answer is unusable: {0}")]
    TokenResponse(String),
    #[error("the token response has no ID token")]
    NoIdToken,
    #[error("ID token rejected: {0}")]
    IdToken(String),
    #[error("UserInfo failed: {0}")]
    UserInfo(String),
    #[error(transparent)]
    Claims(#[from] ClaimError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// RFC 9207: the authorisation response names another issuer, or none although the
    /// provider promises to name itself.
    #[error(
        "the sign-in answer's iss parameter {offered:?} is not the provider's issuer {expected}"
    )]
    ResponseIssuer {
        offered: Option<String>,
        expected: String,
    },
}

impl OidcError {
    /// What the person signing in is told; details stay in the log.
    pub fn person_message(&self) -> String {
        match self {
            OidcError::Unreachable(_) | OidcError::Metadata(_) | OidcError::Client(_) => {
                "Your organisation's sign-in service cannot be reached right now. Try again in a few minutes.".into()
            }
            OidcError::TokenRefused { .. } => {
                "Your organisation's sign-in service did not accept this sign-in (it may have been used already or taken too long). Please sign in again.".into()
            }
            OidcError::TokenResponse(_)
            | OidcError::NoIdToken
            | OidcError::IdToken(_)
            | OidcError::ResponseIssuer { .. } => {
                "The answer from your organisation's sign-in service could not be verified, so you are not signed in. If this keeps happening, tell the postmaster.".into()
            }
            OidcError::UserInfo(_) => {
                "Your organisation's sign-in service did not say who you are. Try again in a few minutes.".into()
            }
            OidcError::Claims(e) => e.person_message(),
        }
    }
}

/// The error text with its causes, e.g. the TLS reason under "error sending request".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// A form POST to one of the provider's endpoints (token, introspection) as our client:
/// its id and secret in HTTP Basic or in the form, as `auth` says, or the id alone when
/// there is no secret.
pub(crate) async fn post_form_as_client(
    mut request: reqwest::RequestBuilder,
    auth: ClientAuth,
    settings: &OidcSettings,
    pairs: &[(&str, &str)],
) -> Result<reqwest::Response, reqwest::Error> {
    let secret = settings
        .client_secret
        .as_ref()
        .map(|s| String::from_utf8_lossy(s.expose()).into_owned());
    let mut pairs = pairs.to_vec();
    match (auth, &secret) {
        (ClientAuth::Basic, Some(secret)) => {
            // RFC 6749 §2.3.1: both form-encoded before they are joined.
            let id: String =
                form_urlencoded::byte_serialize(settings.client_id.as_bytes()).collect();
            let pw: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            request = request.basic_auth(id, Some(pw));
        }
        (ClientAuth::Post, Some(secret)) => {
            pairs.push(("client_id", &settings.client_id));
            pairs.push(("client_secret", secret));
        }
        (_, None) => pairs.push(("client_id", &settings.client_id)),
    }
    // Built before the request is sent: the encoder is not `Send`.
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    request
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
}

fn request_error(e: &HttpClientError<reqwest::Error>) -> OidcError {
    OidcError::Unreachable(error_chain(e))
}

/// The HTTP client for every provider call: rustls, no redirects (a provider answering
/// with one is misconfigured, and following them invites SSRF), a timeout on every call.
pub fn http_client(settings: &OidcSettings) -> Result<reqwest::Client, OidcError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .danger_accept_invalid_certs(settings.ignore_tls_errors)
        .user_agent(concat!("mailauthd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OidcError::Client(error_chain(&e)))
}

/// A sign-in started in a browser and not finished yet; kept server-side in the session.
#[derive(Clone, Debug)]
pub struct PendingSignIn {
    pub state: Secret,
    pub nonce: Secret,
    pub pkce_verifier: Secret,
}

pub struct Authorization {
    pub url: openidconnect::url::Url,
    pub pending: PendingSignIn,
}

/// A finished sign-in: the claims to provision with, the ID token for logout, the provider's
/// session id for back-channel logout, and the refresh token when the provider issued one.
#[derive(Debug)]
pub struct Identity {
    pub claims: SignInClaims,
    pub id_token: Secret,
    /// The ID token's `sid`: the provider's session, named again in a back-channel logout.
    pub session_id: Option<String>,
    /// Kept, sealed, to ask the provider later whether it still knows the person.
    pub refresh_token: Option<Secret>,
}

pub(crate) struct Provider {
    pub client: OidcClient,
    pub end_session: Option<EndSessionUrl>,
    /// The issuer as the provider names itself, and whether it promises `iss` in every
    /// authorisation response (RFC 9207).
    issuer: String,
    sends_response_iss: bool,
    /// How the token endpoint wants the client authenticated (the refresh grant is sent
    /// by hand, see `refresh`).
    auth: ClientAuth,
    /// `offline_access` is in the provider's `scopes_supported`: asked for at sign-in, so
    /// the provider issues a refresh token the liveness check can use.
    offers_offline_access: bool,
    fetched: Instant,
    /// The key set, for the JWTs openidconnect does not verify itself (logout tokens).
    keys: Vec<CoreJsonWebKey>,
}

pub struct RelyingParty {
    settings: OidcSettings,
    http: reqwest::Client,
    provider: Mutex<Option<Arc<Provider>>>,
    /// The age of the provider's metadata is read on its monotonic reading.
    clock: Arc<dyn Clock>,
}

impl RelyingParty {
    pub fn new(settings: OidcSettings, clock: Arc<dyn Clock>) -> Result<Self, OidcError> {
        let http = http_client(&settings)?;
        Ok(RelyingParty {
            settings,
            http,
            provider: Mutex::new(None),
            clock,
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    pub fn claim_names(&self) -> ClaimNames {
        ClaimNames {
            address: self.settings.address_claim.clone(),
            template: self.settings.template_claim.clone(),
            name: self.settings.name_claim.clone(),
        }
    }

    /// The provider's metadata and keys, fetched when first needed and then every
    /// [`METADATA_MAX_AGE`]; a failed refresh keeps the old copy.
    async fn provider(&self, force: bool) -> Result<Arc<Provider>, OidcError> {
        let mut slot = self.provider.lock().await;
        if let Some(p) = slot.as_ref() {
            let age = self.clock.instant().saturating_duration_since(p.fetched);
            let fresh = age < METADATA_MAX_AGE;
            if fresh && !(force && age > Duration::from_secs(30)) {
                return Ok(p.clone());
            }
        }
        match load_provider(&self.settings, &self.http, &*self.clock).await {
            Ok(p) => {
                let p = Arc::new(p);
                *slot = Some(p.clone());
                Ok(p)
            }
            Err(e) => match slot.as_ref() {
                Some(old) => {
                    tracing::warn!(error = %e, "identity provider metadata refresh failed; using the previous copy");
                    Ok(old.clone())
                }
                None => Err(e),
            },
        }
    }

    /// The provider's issuer as it names itself: what a logout token's `iss` must be.
    pub async fn issuer(&self) -> Result<String, OidcError> {
        Ok(self.provider(false).await?.issuer.clone())
    }

    /// Starts a sign-in: where to send the browser, and what to remember until it returns.
    pub async fn begin(&self) -> Result<Authorization, OidcError> {
        let p = self.provider(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = p.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if p.offers_offline_access && !self.settings.scopes.iter().any(|s| s == OFFLINE_ACCESS) {
            request = request.add_scope(Scope::new(OFFLINE_ACCESS.into()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Authorization {
            url,
            pending: PendingSignIn {
                state: Secret::from(state.secret().clone()),
                nonce: Secret::from(nonce.secret().clone()),
                pkce_verifier: Secret::from(verifier.secret().clone()),
            },
        })
    }

    /// RFC 9207: an authorisation response (success or error) that carries `iss` must name
    /// our provider; one without it is refused when the provider advertises
    /// `authorization_response_iss_parameter_supported`. Call once `state` has matched.
    pub async fn check_response_issuer(&self, offered: Option<&str>) -> Result<(), OidcError> {
        let p = self.provider(false).await?;
        let refused = || OidcError::ResponseIssuer {
            offered: offered.map(|o| o.chars().take(200).collect()),
            expected: p.issuer.clone(),
        };
        match offered {
            Some(iss) if iss == p.issuer => Ok(()),
            Some(_) => Err(refused()),
            None if p.sends_response_iss => Err(refused()),
            None => Ok(()),
        }
    }

    /// Finishes a sign-in with the code the browser brought back (its `state` already
    /// checked against `pending` by the caller).
    pub async fn finish(&self, pending: &PendingSignIn, code: &str) -> Result<Identity, OidcError> {
        let p = self.provider(false).await?;
        let verifier = String::from_utf8_lossy(pending.pkce_verifier.expose()).into_owned();
        let token = p
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Metadata(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => OidcError::TokenRefused {
                    error: r.error().to_string(),
                    description: r.error_description().cloned(),
                },
                RequestTokenError::Request(e) => request_error(&e),
                RequestTokenError::Parse(e, _) => OidcError::TokenResponse(error_chain(&e)),
                RequestTokenError::Other(e) => OidcError::TokenResponse(e),
            })?;
        let id_token = token.id_token().ok_or(OidcError::NoIdToken)?;
        let nonce = Nonce::new(String::from_utf8_lossy(pending.nonce.expose()).into_owned());
        let id_claims = match id_token.claims(&p.client.id_token_verifier(), &nonce) {
            Ok(c) => c.clone(),
            Err(first) => {
                // The provider may have rotated its keys since we fetched them: once more
                // with fresh ones before refusing.
                let fresh = self.provider(true).await?;
                let verifier = fresh.client.id_token_verifier();
                let claims = id_token.claims(&verifier, &nonce).map_err(|e| {
                    OidcError::IdToken(format!("{}; {}", error_chain(&first), error_chain(&e)))
                })?;
                claims.clone()
            }
        };
        let issuer = id_claims.issuer().as_str().to_string();
        let subject = id_claims.subject().clone();
        let id_map = to_map(&id_claims).map_err(|e| OidcError::IdToken(e.to_string()))?;
        let session_id = id_map
            .get("sid")
            .and_then(|v| v.as_str())
            .map(|sid| sid.chars().take(255).collect());

        let userinfo = match p
            .client
            .user_info(token.access_token().clone(), Some(subject))
        {
            Err(_) => None, // no UserInfo endpoint: the ID token is all there is
            Ok(request) => {
                let claims: UserInfoClaims<ExtraClaims, CoreGenderClaim> = request
                    .request_async(&self.http)
                    .await
                    .map_err(|e| match e {
                        UserInfoError::Request(e) => request_error(&e),
                        other => OidcError::UserInfo(error_chain(&other)),
                    })?;
                Some(to_map(&claims).map_err(|e| OidcError::UserInfo(e.to_string()))?)
            }
        };
        let merged = claims::merge(id_map, userinfo);
        let claims = claims::read(&issuer, &merged, &self.claim_names())?;
        Ok(Identity {
            claims,
            id_token: Secret::from(id_token.to_string()),
            session_id,
            refresh_token: token
                .refresh_token()
                .map(|t| Secret::from(t.secret().clone())),
        })
    }

    /// The origin (`https://host:port`) of the provider's end-session endpoint, if it has
    /// one; pages with a sign-out form allow it as a form target.
    pub async fn end_session_origin(&self) -> Option<String> {
        let p = self.provider(false).await.ok()?;
        let origin = p.end_session.as_ref()?.url().origin();
        origin.is_tuple().then(|| origin.ascii_serialization())
    }

    /// Where to send the browser to end the provider's session too (RP-initiated logout),
    /// when the provider offers it.
    pub async fn logout_url(
        &self,
        id_token: Option<&Secret>,
        after: &openidconnect::url::Url,
    ) -> Option<openidconnect::url::Url> {
        let p = self.provider(false).await.ok()?;
        let end = p.end_session.clone()?;
        let mut request = LogoutRequest::from(end)
            .set_client_id(ClientId::new(self.settings.client_id.clone()))
            .set_post_logout_redirect_uri(PostLogoutRedirectUrl::from_url(after.clone()));
        if let Some(raw) = id_token {
            if let Ok(token) = OurIdToken::from_str(&String::from_utf8_lossy(raw.expose())) {
                request = request.set_id_token_hint(&token);
            }
        }
        Some(request.http_get_url())
    }
}

/// Why a set of claims could not be turned into a JSON object.
#[derive(Debug, Error)]
enum ClaimsShape {
    #[error("claims are not a JSON object")]
    NotAnObject,
    #[error("claims cannot be read: {0}")]
    Unreadable(serde_json::Error),
}

fn to_map<T: Serialize>(claims: &T) -> Result<Map<String, Value>, ClaimsShape> {
    match serde_json::to_value(claims) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ClaimsShape::NotAnObject),
        Err(e) => Err(ClaimsShape::Unreadable(e)),
    }
}

/// Discovery document (or the configured endpoints), then the keys.
pub(crate) async fn load_metadata(
    settings: &OidcSettings,
    http: &reqwest::Client,
) -> Result<Metadata, OidcError> {
    let issuer = IssuerUrl::new(settings.issuer.clone())
        .map_err(|e| OidcError::Metadata(format!("oidc.issuer {:?}: {e}", settings.issuer)))?;
    match &settings.endpoints {
        None => {
            let url = discovery_url(settings);
            let response = http
                .get(url.clone())
                .header("accept", "application/json")
                .send()
                .await
                .map_err(|e| OidcError::Unreachable(format!("{url}: {}", error_chain(&e))))?;
            let status = response.status();
            if !status.is_success() {
                return Err(OidcError::Metadata(format!("{url} answered HTTP {status}")));
            }
            let body = fetch::read_body(response).await.map_err(|e| match e {
                FetchError::Unreachable { .. } => OidcError::Unreachable(e.to_string()),
                _ => OidcError::Metadata(e.to_string()),
            })?;
            let metadata: Metadata = serde_json::from_slice(&body)
                .map_err(|e| OidcError::Metadata(format!("{url}: {e}")))?;
            if metadata.issuer().as_str() != issuer.as_str() {
                return Err(OidcError::Metadata(format!(
                    "{url} names the issuer {} but oidc.issuer is {}; they must be identical",
                    metadata.issuer().as_str(),
                    issuer.as_str()
                )));
            }
            Ok(metadata)
        }
        Some(e) => Ok(Metadata::new(
            issuer,
            AuthUrl::from_url(e.authorization.clone()),
            JsonWebKeySetUrl::from_url(e.jwks.clone()),
            vec![ResponseTypes::new(vec![CoreResponseType::Code])],
            vec![CoreSubjectIdentifierType::Public],
            // Without discovery we cannot know the provider's algorithm: allow the
            // asymmetric ones we can verify; the key set decides which actually verify.
            jwt::ALLOWED.to_vec(),
            LogoutProviderMetadata {
                end_session_endpoint: e.end_session.clone().map(EndSessionUrl::from_url),
                additional_metadata: ExtraProviderMetadata::default(),
            },
        )
        .set_token_endpoint(Some(TokenUrl::from_url(e.token.clone())))
        .set_userinfo_endpoint(e.userinfo.clone().map(UserInfoUrl::from_url))),
    }
}

pub(crate) fn discovery_url(settings: &OidcSettings) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        settings.issuer.trim_end_matches('/')
    )
}

pub(crate) async fn load_keys(
    metadata: &Metadata,
    http: &reqwest::Client,
) -> Result<JsonWebKeySet<CoreJsonWebKey>, OidcError> {
    JsonWebKeySet::fetch_async(metadata.jwks_uri(), http)
        .await
        .map_err(|e| {
            OidcError::Unreachable(format!(
                "{}: {}",
                metadata.jwks_uri().as_str(),
                error_chain(&e)
            ))
        })
}

/// The client authentication the token endpoint gets: configured, else as advertised.
pub(crate) fn client_auth(settings: &OidcSettings, metadata: &Metadata) -> ClientAuth {
    if let Some(auth) = settings.client_auth {
        return auth;
    }
    let advertised = metadata.token_endpoint_auth_methods_supported();
    let offers = |m: &CoreClientAuthMethod| advertised.is_some_and(|list| list.contains(m));
    if advertised.is_none() || offers(&CoreClientAuthMethod::ClientSecretBasic) {
        ClientAuth::Basic
    } else if offers(&CoreClientAuthMethod::ClientSecretPost) {
        ClientAuth::Post
    } else {
        ClientAuth::Basic
    }
}

pub(crate) fn build_client(
    settings: &OidcSettings,
    metadata: Metadata,
) -> (OidcClient, ClientAuth, Option<EndSessionUrl>) {
    let auth = client_auth(settings, &metadata);
    let end_session = metadata.additional_metadata().end_session_endpoint.clone();
    let secret = settings
        .client_secret
        .as_ref()
        .map(|s| ClientSecret::new(String::from_utf8_lossy(s.expose()).into_owned()));
    let client = OidcClient::from_provider_metadata(
        metadata,
        ClientId::new(settings.client_id.clone()),
        secret,
    )
    .set_redirect_uri(RedirectUrl::from_url(settings.redirect_url.clone()))
    .set_auth_type(match auth {
        ClientAuth::Basic => AuthType::BasicAuth,
        ClientAuth::Post => AuthType::RequestBody,
    });
    (client, auth, end_session)
}

async fn load_provider(
    settings: &OidcSettings,
    http: &reqwest::Client,
    clock: &dyn Clock,
) -> Result<Provider, OidcError> {
    let metadata = load_metadata(settings, http).await?;
    let keys = load_keys(&metadata, http).await?;
    let issuer = metadata.issuer().as_str().to_string();
    let sends_response_iss = metadata
        .additional_metadata()
        .additional_metadata
        .sends_response_iss();
    let key_list = keys.keys().clone();
    let offers_offline_access = metadata
        .scopes_supported()
        .is_some_and(|scopes| scopes.iter().any(|s| s.as_str() == OFFLINE_ACCESS));
    let (client, auth, end_session) = build_client(settings, metadata.set_jwks(keys));
    Ok(Provider {
        client,
        end_session,
        issuer,
        sends_response_iss,
        auth,
        offers_offline_access,
        fetched: clock.instant(),
        keys: key_list,
    })
}

/// The relying party's copy of the provider's keys; a refetch is the metadata refresh,
/// which happens at most every 30 seconds however often it is asked for.
#[async_trait::async_trait]
impl jwt::KeySource for RelyingParty {
    async fn keys(&self, refetch: bool) -> Result<Vec<CoreJsonWebKey>, FetchError> {
        self.provider(refetch)
            .await
            .map(|p| p.keys.clone())
            .map_err(|e| FetchError::SignInProvider(e.to_string()))
    }
}
