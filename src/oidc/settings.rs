//! The `[oidc]` config section, checked into [`OidcSettings`].

use std::time::Duration;

use openidconnect::url::{self, Url};

use crate::config::{problem, OidcSection, Problem};
use crate::secret::Secret;

pub const DEFAULT_SCOPES: [&str; 4] = ["openid", "profile", "email", "mailcow_template"];

/// How the relying party authenticates itself at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret (the OpenID Connect default).
    Basic,
    /// Client id and secret in the form body.
    Post,
}

/// Endpoints given by hand, for providers without discovery (mailcow's admin form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplicitEndpoints {
    pub authorization: Url,
    pub token: Url,
    pub userinfo: Option<Url>,
    pub jwks: Url,
    pub end_session: Option<Url>,
}

/// Compared by value at reload: a client secret rotated in `client_secret_file` differs
/// although its `Debug` (redacted) does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcSettings {
    /// Shown on the sign-in button: "Sign in with …".
    pub display_name: String,
    /// Exactly as configured (and as the provider's ID tokens must name it).
    pub issuer: String,
    /// `None`: read everything from `<issuer>/.well-known/openid-configuration`.
    pub endpoints: Option<ExplicitEndpoints>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// `None`: as the provider advertises (basic when it advertises nothing we know).
    pub client_auth: Option<ClientAuth>,
    pub redirect_url: Url,
    pub scopes: Vec<String>,
    pub address_claim: String,
    pub template_claim: String,
    pub name_claim: String,
    pub ignore_tls_errors: bool,
    pub provision: bool,
    /// Only an explicit `email_verified: true` creates or binds a mailbox (or signs in).
    pub require_verified_email: bool,
    pub timeout: Duration,
}

/// Loopback addresses may use plain HTTP (tests, a provider on the same host); anything
/// else carries tokens and must be HTTPS.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn parse_url(
    value: Option<&str>,
    key: &str,
    required: bool,
    problems: &mut Vec<Problem>,
) -> Option<Url> {
    let Some(text) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        if required {
            problem(problems, key, "is required");
        }
        return None;
    };
    match Url::parse(text) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback(&u)) => Some(u),
        Ok(_) => {
            problem(
                problems,
                key,
                "must be an https:// URL (plain http only for loopback addresses)",
            );
            None
        }
        Err(e) => {
            problem(problems, key, format!("{text:?} is not a URL: {e}"));
            None
        }
    }
}

fn claim_name(
    value: Option<String>,
    default: &str,
    key: &str,
    problems: &mut Vec<Problem>,
) -> String {
    let name = value.unwrap_or_else(|| default.to_string());
    if name.trim().is_empty() || name.len() > 100 {
        problem(problems, key, "must be a claim name of 1 to 100 characters");
    }
    name.trim().to_string()
}

/// `None` when a required key is missing or broken; the problems say which.
pub fn check(section: OidcSection, problems: &mut Vec<Problem>) -> Option<OidcSettings> {
    // Kept as written: ID tokens must name the issuer exactly, and a parsed URL would gain a
    // trailing slash.
    let issuer = parse_url(section.issuer.as_deref(), "oidc.issuer", true, problems)
        .and(section.issuer.as_deref().map(|i| i.trim().to_string()));

    let explicit_keys = [
        section.authorization_endpoint.is_some(),
        section.token_endpoint.is_some(),
        section.jwks_uri.is_some(),
    ];
    let endpoints = if explicit_keys.iter().any(|k| *k) {
        let authorization = parse_url(
            section.authorization_endpoint.as_deref(),
            "oidc.authorization_endpoint",
            true,
            problems,
        );
        let token = parse_url(
            section.token_endpoint.as_deref(),
            "oidc.token_endpoint",
            true,
            problems,
        );
        let jwks = parse_url(section.jwks_uri.as_deref(), "oidc.jwks_uri", true, problems);
        let userinfo = parse_url(
            section.userinfo_endpoint.as_deref(),
            "oidc.userinfo_endpoint",
            false,
            problems,
        );
        let end_session = parse_url(
            section.end_session_endpoint.as_deref(),
            "oidc.end_session_endpoint",
            false,
            problems,
        );
        match (authorization, token, jwks) {
            (Some(authorization), Some(token), Some(jwks)) => Some(ExplicitEndpoints {
                authorization,
                token,
                userinfo,
                jwks,
                end_session,
            }),
            _ => None,
        }
    } else {
        for (value, key) in [
            (&section.userinfo_endpoint, "oidc.userinfo_endpoint"),
            (&section.end_session_endpoint, "oidc.end_session_endpoint"),
        ] {
            if value.is_some() {
                problem(
                    problems,
                    key,
                    "only used with explicit endpoints (set authorization_endpoint, token_endpoint and jwks_uri too, or remove it and use discovery)",
                );
            }
        }
        None
    };

    let client_id = section.client_id.unwrap_or_default().trim().to_string();
    if client_id.is_empty() {
        problem(problems, "oidc.client_id", "is required");
    }
    let client_secret = match (section.client_secret, &section.client_secret_file) {
        (Some(_), Some(_)) => {
            problem(
                problems,
                "oidc.client_secret_file",
                "set either oidc.client_secret or oidc.client_secret_file, not both",
            );
            None
        }
        (Some(s), None) => Some(Secret::from(s.trim().to_string())),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(Secret::from(text.trim().to_string())),
            Err(e) => {
                problem(
                    problems,
                    "oidc.client_secret_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    }
    .filter(|s| !s.is_empty());

    let client_auth = match section.token_endpoint_auth_method.as_deref() {
        None => None,
        Some("client_secret_basic") => Some(ClientAuth::Basic),
        Some("client_secret_post") => Some(ClientAuth::Post),
        Some(other) => {
            problem(
                problems,
                "oidc.token_endpoint_auth_method",
                format!("{other:?}: use client_secret_basic or client_secret_post"),
            );
            None
        }
    };

    let redirect_url = parse_url(
        section.redirect_url.as_deref(),
        "oidc.redirect_url",
        true,
        problems,
    );
    if let Some(u) = &redirect_url {
        if u.path() != "/callback" {
            problem(
                problems,
                "oidc.redirect_url",
                "must end in /callback at the root of the web page, e.g. https://mail.example.org/callback",
            );
        }
    }

    let scopes = section
        .scopes
        .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
    if !scopes.iter().any(|s| s == "openid") {
        problem(problems, "oidc.scopes", "must include \"openid\"");
    }
    if scopes
        .iter()
        .any(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        problem(
            problems,
            "oidc.scopes",
            "scopes are single words without spaces",
        );
    }

    let timeout_ms = section.timeout_ms.unwrap_or(10_000);
    if !(500..=120_000).contains(&timeout_ms) {
        problem(
            problems,
            "oidc.timeout_ms",
            "must be between 500 and 120000",
        );
    }

    let address_claim = claim_name(
        section.address_claim,
        "email",
        "oidc.address_claim",
        problems,
    );
    let template_claim = claim_name(
        section.template_claim,
        "mailcow_template",
        "oidc.template_claim",
        problems,
    );
    let name_claim = claim_name(section.name_claim, "name", "oidc.name_claim", problems);
    let (Some(issuer), Some(redirect_url)) = (issuer, redirect_url) else {
        return None;
    };
    Some(OidcSettings {
        display_name: section
            .display_name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "your organisation's account".into()),
        issuer,
        endpoints,
        client_id,
        client_secret,
        client_auth,
        redirect_url,
        scopes,
        address_claim,
        template_claim,
        name_claim,
        ignore_tls_errors: section.ignore_tls_errors.unwrap_or(false),
        provision: section.provision.unwrap_or(true),
        require_verified_email: section.require_verified_email.unwrap_or(true),
        timeout: Duration::from_millis(timeout_ms),
    })
}
