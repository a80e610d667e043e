//! `mailauthd idp test`: proves the provider settings work, one step at a time, before a
//! person finds out at the sign-in button.
//!
//! The token-endpoint step is the one mailcow's test lacks: an invented code sent with our
//! client credentials must come back `invalid_grant` ("your code is bad"), which proves the
//! provider accepted the client id and secret; `invalid_client` proves they are wrong.

use openidconnect::core::CoreGenderClaim;
use openidconnect::{
    AccessToken, AuthorizationCode, PkceCodeChallenge, RequestTokenError, UserInfoClaims,
    UserInfoError,
};

use super::{build_client, discovery_url, error_chain, http_client, load_keys, load_metadata};
use super::{ClientAuth, ExtraClaims, OidcError, OidcSettings};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Warn,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Step {
    pub status: Status,
    pub title: String,
    pub detail: String,
    /// What to do about a failure; empty when it passed.
    pub hint: String,
}

impl Step {
    fn pass(title: &str, detail: impl Into<String>) -> Self {
        Step {
            status: Status::Pass,
            title: title.into(),
            detail: detail.into(),
            hint: String::new(),
        }
    }

    fn fail(title: &str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Step {
            status: Status::Fail,
            title: title.into(),
            detail: detail.into(),
            hint: hint.into(),
        }
    }

    fn warn(title: &str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Step {
            status: Status::Warn,
            title: title.into(),
            detail: detail.into(),
            hint: hint.into(),
        }
    }
}

pub const TLS_WARNING: &str = "oidc.ignore_tls_errors = true: the provider's TLS certificate is NOT checked; anyone on the network path can impersonate it and sign in as anybody. Use this only in a test setup.";

fn is_tls_problem(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "unknownissuer", "ssl"]
        .iter()
        .any(|w| t.contains(w))
}

fn tls_hint(text: &str) -> String {
    let t = text.to_ascii_lowercase();
    let why = if t.contains("unknownissuer") || t.contains("unknown issuer") {
        "the certificate is signed by a CA this host does not trust (self-signed or a private CA)"
    } else if t.contains("causedasendentity") {
        "the certificate is self-signed (a CA certificate used as the server's own), which this host does not trust"
    } else if t.contains("expired") {
        "the certificate has expired"
    } else if t.contains("notvalidforname") || t.contains("not valid for") {
        "the certificate is for another host name than the URL's"
    } else {
        "the TLS handshake failed"
    };
    format!("{why}. Install the provider's CA certificate in the system store (update-ca-certificates) and test again; oidc.ignore_tls_errors = true is for test setups only")
}

/// A failed request to one of the provider's endpoints: the TLS advice when the error is
/// about the certificate or handshake, else `otherwise`.
fn request_failed(step: &str, text: String, otherwise: &str) -> Step {
    let hint = if is_tls_problem(&text) {
        tls_hint(&text)
    } else {
        otherwise.into()
    };
    Step::fail(step, text, hint)
}

/// Runs every step it can; later steps need the earlier ones, so a failure stops there.
pub async fn run(settings: &OidcSettings) -> Vec<Step> {
    let mut steps = Vec::new();
    if settings.ignore_tls_errors {
        steps.push(Step::warn("TLS verification", "disabled", TLS_WARNING));
    }
    let http = match http_client(settings) {
        Ok(h) => h,
        Err(e) => {
            steps.push(Step::fail(
                "HTTP client",
                e.to_string(),
                "report this as a bug",
            ));
            return steps;
        }
    };

    let title = if settings.endpoints.is_some() {
        "endpoints (configured by hand)"
    } else {
        "discovery"
    };
    let metadata = match load_metadata(settings, &http).await {
        Ok(m) => {
            let detail = match &settings.endpoints {
                Some(_) => format!("issuer {}", settings.issuer),
                None => format!("{} read", discovery_url(settings)),
            };
            steps.push(Step::pass(title, detail));
            let issuer_url = openidconnect::url::Url::parse(&settings.issuer).ok();
            if let Some(url) = issuer_url.filter(|u| u.scheme() == "https") {
                if !settings.ignore_tls_errors {
                    steps.push(Step::pass(
                        "TLS",
                        format!(
                            "certificate of {} is valid and trusted",
                            url.host_str().unwrap_or("the provider")
                        ),
                    ));
                }
            }
            m
        }
        Err(e) => {
            let text = e.to_string();
            if is_tls_problem(&text) {
                steps.push(Step::fail("TLS", text.clone(), tls_hint(&text)));
            } else {
                let hint = match &e {
                    OidcError::Unreachable(_) => "check oidc.issuer, DNS, and that this host may connect to the provider (firewall, proxy)".to_string(),
                    _ => "oidc.issuer must be exactly the provider's issuer (compare with the \"issuer\" in its discovery document); or configure the endpoints by hand".to_string(),
                };
                steps.push(Step::fail(title, text, hint));
            }
            return steps;
        }
    };

    match load_keys(&metadata, &http).await {
        Ok(keys) if !keys.keys().is_empty() => steps.push(Step::pass(
            "JWKS",
            format!(
                "{} signing key(s) at {}",
                keys.keys().len(),
                metadata.jwks_uri().as_str()
            ),
        )),
        Ok(_) => steps.push(Step::fail(
            "JWKS",
            format!("{} has no keys", metadata.jwks_uri().as_str()),
            "the provider publishes no signing keys; ID tokens could not be verified",
        )),
        Err(e) => {
            steps.push(request_failed("JWKS", e.to_string(), "check jwks_uri (discovery's or oidc.jwks_uri) and that it is reachable from this host"));
            return steps;
        }
    }

    let (client, auth, end_session) = build_client(settings, metadata.clone());
    let auth_name = match auth {
        ClientAuth::Basic => "client_secret_basic",
        ClientAuth::Post => "client_secret_post",
    };
    let (_, verifier) = PkceCodeChallenge::new_random_sha256();
    let token_step = "token endpoint";
    match client.exchange_code(AuthorizationCode::new(
        "mailauthd-idp-test-invented-code".into(),
    )) {
        Err(_) => steps.push(Step::fail(
            token_step,
            "no token endpoint",
            "the provider's metadata names no token_endpoint; set oidc.token_endpoint",
        )),
        Ok(request) => {
            let result = request
                .set_pkce_verifier(verifier)
                .request_async(&http)
                .await;
            steps.push(match result {
                Err(RequestTokenError::ServerResponse(r)) => {
                    let code = r.error().to_string();
                    match code.as_str() {
                        "invalid_grant" => Step::pass(
                            token_step,
                            format!("client credentials accepted ({auth_name}): an invented code was refused with invalid_grant"),
                        ),
                        "invalid_client" | "unauthorized_client" => Step::fail(
                            token_step,
                            format!("the provider refused the client ({code}{})", r.error_description().map(|d| format!(": {d}")).unwrap_or_default()),
                            format!("check oidc.client_id and oidc.client_secret; mailauthd sent them with {auth_name} (set oidc.token_endpoint_auth_method if the provider expects the other)"),
                        ),
                        _ => Step::fail(
                            token_step,
                            format!("unexpected answer {code}{}", r.error_description().map(|d| format!(": {d}")).unwrap_or_default()),
                            "expected invalid_grant for an invented code; check that the client may use the authorization_code grant and that oidc.redirect_url is registered",
                        ),
                    }
                }
                Err(RequestTokenError::Request(e)) => {
                    request_failed(token_step, error_chain(&e), "the token endpoint is not reachable from this host")
                }
                Err(e) => Step::fail(
                    token_step,
                    error_chain(&e),
                    "the token endpoint answered something that is not an OAuth 2 error",
                ),
                Ok(_) => Step::fail(
                    token_step,
                    "an invented code was accepted",
                    "this provider does not check authorization codes; do not use it",
                ),
            });
        }
    }

    let userinfo_step = "userinfo endpoint";
    match client.user_info(AccessToken::new("mailauthd-idp-test-invented-token".into()), None) {
        Err(_) => steps.push(Step::fail(
            userinfo_step,
            "not configured",
            "without UserInfo only the ID token's claims are read; mailcow_template usually lives in UserInfo (set oidc.userinfo_endpoint)",
        )),
        Ok(request) => {
            let result: Result<UserInfoClaims<ExtraClaims, CoreGenderClaim>, _> =
                request.request_async(&http).await;
            steps.push(match result {
                Err(UserInfoError::Response(status, _, _)) => Step::pass(
                    userinfo_step,
                    format!("{} answers (HTTP {status} for an invented token, as expected)", client.user_info_url().map(|u| u.as_str()).unwrap_or("")),
                ),
                Err(UserInfoError::Request(e)) => {
                    request_failed(userinfo_step, error_chain(&e), "the userinfo endpoint is not reachable from this host")
                }
                Err(e) => Step::pass(
                    userinfo_step,
                    format!("answers ({})", error_chain(&e)),
                ),
                Ok(_) => Step::fail(
                    userinfo_step,
                    "claims returned for an invented token",
                    "this provider does not check access tokens; do not use it",
                ),
            });
        }
    }

    steps.push(match end_session {
        Some(url) => Step::pass(
            "logout",
            format!("RP-initiated logout at {}", url.url().as_str()),
        ),
        None => Step::warn(
            "logout",
            "the provider offers no end_session_endpoint",
            "signing out of mailauthd will not sign the person out of the provider",
        ),
    });
    steps
}
