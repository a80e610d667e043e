//! The validator's view of the provider: where its keys and introspection endpoint are,
//! the keys themselves, and the RFC 7662 call.
//!
//! Everything is fetched when a token first needs it, never at start: the daemon must come
//! up while the provider is down, and tokens then fail temporarily. A failed fetch is not
//! tried again for [`RETRY_AFTER`], so a flood of logins during an outage does not become
//! a flood of requests that each wait for the timeout. The key set is kept for
//! [`KEYS_MAX_AGE`]; a token with an unknown `kid` asks for it anew, at most once every
//! [`REFETCH_EVERY`] whatever the tokens say (anyone can make up a `kid`).
//!
//! Its own small discovery rather than the relying party's: it needs the discovery
//! document's `introspection_endpoint` (which the openidconnect metadata type does not
//! carry) and its own refetch limit, and it must not share the sign-in pages' timeout.

use std::time::{Duration, Instant};

use openidconnect::core::CoreJsonWebKey;
use openidconnect::url::Url;
use openidconnect::JsonWebKeySet;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::clock::Clock;
use crate::oidc::fetch::{read_body, FetchError};
use crate::oidc::settings::ClientAuth;
use crate::oidc::{discovery_url, jwt, post_form_as_client, OidcSettings};

/// How long the discovery document and the key set are used before they are read anew.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(600);
/// The least time between two fetches of the key set asked for by unknown `kid`s.
pub const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// After a failed fetch, tokens fail temporarily this long without asking again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct Directory {
    jwks: Url,
    introspection: Option<Url>,
    auth: ClientAuth,
    fetched: Instant,
}

#[derive(Default)]
struct State {
    directory: Option<Directory>,
    keys: Option<(Vec<CoreJsonWebKey>, Instant)>,
    /// The last fetch of the key set, whether it worked or not.
    last_keys_fetch: Option<Instant>,
    /// The last failure of discovery or keys: no new attempt before [`RETRY_AFTER`].
    failed: Option<(Instant, FetchError)>,
}

pub struct Provider {
    oidc: OidcSettings,
    introspection_url: Option<Url>,
    http: reqwest::Client,
    clock: std::sync::Arc<dyn Clock>,
    state: Mutex<State>,
}

impl Provider {
    pub fn new(
        oidc: OidcSettings,
        introspection_url: Option<Url>,
        http: reqwest::Client,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Self {
        Provider {
            oidc,
            introspection_url,
            http,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn backing_off(&self, state: &State) -> Option<FetchError> {
        let (at, why) = state.failed.as_ref()?;
        let age = self.clock.instant().saturating_duration_since(*at);
        (age < RETRY_AFTER).then(|| why.clone())
    }

    fn fail(&self, state: &mut State, why: FetchError) -> FetchError {
        state.failed = Some((self.clock.instant(), why.clone()));
        why
    }

    async fn directory(&self, state: &mut State) -> Result<Directory, FetchError> {
        let now = self.clock.instant();
        if let Some(d) = &state.directory {
            if now.saturating_duration_since(d.fetched) < KEYS_MAX_AGE {
                return Ok(d.clone());
            }
        }
        if let Some(why) = self.backing_off(state) {
            return state.directory.clone().ok_or(why);
        }
        match self.discover().await {
            Ok(d) => {
                state.directory = Some(d.clone());
                Ok(d)
            }
            Err(e) => {
                let e = self.fail(state, e);
                match &state.directory {
                    Some(old) => {
                        tracing::warn!(error = %e, "identity provider discovery failed; using the previous copy");
                        Ok(old.clone())
                    }
                    None => Err(e),
                }
            }
        }
    }

    async fn discover(&self) -> Result<Directory, FetchError> {
        let fetched = self.clock.instant();
        if let Some(e) = &self.oidc.endpoints {
            return Ok(Directory {
                jwks: e.jwks.clone(),
                introspection: self.introspection_url.clone(),
                auth: self.oidc.client_auth.unwrap_or(ClientAuth::Basic),
                fetched,
            });
        }
        let url = discovery_url(&self.oidc);
        let doc: Map<String, Value> = match serde_json::from_slice(&self.get(&url).await?) {
            Ok(Value::Object(m)) => m,
            _ => return Err(FetchError::unusable(&url, "not a JSON object")),
        };
        if doc.get("issuer").and_then(Value::as_str) != Some(self.oidc.issuer.as_str()) {
            return Err(FetchError::unusable(
                &url,
                format_args!(
                    "names another issuer than oidc.issuer {:?}",
                    self.oidc.issuer
                ),
            ));
        }
        let url_of = |name: &str| -> Result<Option<Url>, FetchError> {
            match doc.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Url::parse(s)
                    .map(Some)
                    .map_err(|e| FetchError::unusable(&url, format_args!("{name} {s:?}: {e}"))),
                Some(_) => Err(FetchError::unusable(
                    &url,
                    format_args!("{name} is not a URL"),
                )),
            }
        };
        let jwks =
            url_of("jwks_uri")?.ok_or_else(|| FetchError::unusable(&url, "names no jwks_uri"))?;
        let introspection = match &self.introspection_url {
            Some(u) => Some(u.clone()),
            None => url_of("introspection_endpoint")?,
        };
        Ok(Directory {
            jwks,
            introspection,
            auth: self
                .oidc
                .client_auth
                .unwrap_or_else(|| advertised_auth(&doc)),
            fetched,
        })
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| FetchError::unreachable(url, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.into(),
                status: status.as_u16(),
            });
        }
        read_body(response).await
    }

    async fn fetch_keys(&self, jwks: &Url) -> Result<Vec<CoreJsonWebKey>, FetchError> {
        let body = self.get(jwks.as_str()).await?;
        let set: JsonWebKeySet<CoreJsonWebKey> = serde_json::from_slice(&body)
            .map_err(|e| FetchError::unusable(jwks, format_args!("not a key set: {e}")))?;
        Ok(set.keys().clone())
    }

    /// The provider's RFC 7662 answer for `token`, as a JSON object; any other answer, or
    /// none within the timeout, is an error (a temporary failure for the caller).
    pub async fn introspect(&self, token: &str) -> Result<Map<String, Value>, FetchError> {
        let directory = {
            let mut state = self.state.lock().await;
            self.directory(&mut state).await?
        };
        let Some(url) = directory.introspection else {
            return Err(FetchError::NotConfigured(
                "the provider names no introspection_endpoint: set oauth.introspection_url, or introspection = \"never\" if its tokens are JWTs",
            ));
        };
        let response = post_form_as_client(
            self.http.post(url.clone()),
            directory.auth,
            &self.oidc,
            &[("token", token), ("token_type_hint", "access_token")],
        )
        .await
        .map_err(|e| FetchError::unreachable(&url, &e))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(FetchError::Status {
                url: url.into(),
                status: status.as_u16(),
            });
        }
        match serde_json::from_slice(&read_body(response).await?) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(FetchError::unusable(url, "the answer is not a JSON object")),
        }
    }
}

/// The client authentication the introspection endpoint advertises (RFC 8414), else the
/// token endpoint's; basic when neither names one we know.
fn advertised_auth(doc: &Map<String, Value>) -> ClientAuth {
    for name in [
        "introspection_endpoint_auth_methods_supported",
        "token_endpoint_auth_methods_supported",
    ] {
        let Some(Value::Array(methods)) = doc.get(name) else {
            continue;
        };
        let offers = |m: &str| methods.iter().any(|v| v.as_str() == Some(m));
        if offers("client_secret_basic") {
            return ClientAuth::Basic;
        }
        if offers("client_secret_post") {
            return ClientAuth::Post;
        }
    }
    ClientAuth::Basic
}

#[async_trait::async_trait]
impl jwt::KeySource for Provider {
    async fn keys(&self, refetch: bool) -> Result<Vec<CoreJsonWebKey>, FetchError> {
        let mut state = self.state.lock().await;
        let now = self.clock.instant();
        if let Some((keys, fetched)) = &state.keys {
            let fresh = now.saturating_duration_since(*fetched) < KEYS_MAX_AGE;
            let recently = state
                .last_keys_fetch
                .is_some_and(|at| now.saturating_duration_since(at) < REFETCH_EVERY);
            if fresh && !refetch {
                return Ok(keys.clone());
            }
            if refetch && recently {
                // Asked again too soon: the copy answers, unless the last try failed, in
                // which case nobody can say whether the key exists.
                return match &state.failed {
                    Some((_, why)) => Err(why.clone()),
                    None => Ok(keys.clone()),
                };
            }
        }
        // A refetch is asked for a token whose key the copy lacks: if the provider cannot
        // be asked, the copy cannot say the key does not exist, so nobody can tell.
        if let Some(why) = self.backing_off(&state) {
            return match &state.keys {
                Some((keys, _)) if !refetch => Ok(keys.clone()),
                _ => Err(why),
            };
        }
        let directory = self.directory(&mut state).await?;
        state.last_keys_fetch = Some(now);
        match self.fetch_keys(&directory.jwks).await {
            Ok(keys) => {
                state.keys = Some((keys.clone(), now));
                state.failed = None;
                Ok(keys)
            }
            Err(e) => {
                let e = self.fail(&mut state, e);
                match &state.keys {
                    Some((keys, _)) if !refetch => {
                        tracing::warn!(error = %e, "the identity provider's keys cannot be fetched; using the previous copy");
                        Ok(keys.clone())
                    }
                    _ => Err(e),
                }
            }
        }
    }
}
