//! The `[oidc]` config section ([`OidcSection`]), checked into [`OidcSettings`].

use std::path::PathBuf;
use std::time::Duration;

use openidconnect::url::{self, Url};
use serde::Deserialize;

use crate::secret::Secret;
use crate::settings_check::{inline_or_file, one_of, problem, trimmed, Problem, Within};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OidcSection {
    display_name: Option<String>,
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    jwks_uri: Option<String>,
    end_session_endpoint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    token_endpoint_auth_method: Option<String>,
    redirect_url: Option<String>,
    scopes: Option<Vec<String>>,
    address_claim: Option<String>,
    template_claim: Option<String>,
    name_claim: Option<String>,
    ignore_tls_errors: Option<bool>,
    provision: Option<bool>,
    require_verified_email: Option<bool>,
    timeout_ms: Option<u64>,
    liveness_check_hours: Option<f64>,
    liveness_concurrency: Option<u64>,
    liveness_max_suspend_percent: Option<f64>,
    max_days_without_sign_in: Option<u64>,
}

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
    pub liveness: LivenessSettings,
}

/// How often and how carefully the provider is asked whether it still knows each linked
/// person (`oidc::liveness`).
#[derive(Clone, Debug, PartialEq)]
pub struct LivenessSettings {
    /// `None`: the daemon runs no periodic check (`liveness_check_hours = 0`).
    pub interval: Option<Duration>,
    /// Refresh requests in flight at once.
    pub concurrency: usize,
    /// A pass suspends its refused mailboxes only while they are at most
    /// max(1, checked × this / 100); otherwise the brake holds.
    pub max_suspend_percent: f64,
    /// App passwords of a provider mailbox whose last web sign-in is older are refused.
    pub max_days_without_sign_in: Option<u64>,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        LivenessSettings {
            interval: Some(Duration::from_secs(6 * 3600)),
            concurrency: 4,
            max_suspend_percent: 10.0,
            max_days_without_sign_in: None,
        }
    }
}

// Compared by value at reload like the rest; the percentage is a checked finite number.
impl Eq for LivenessSettings {}

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

pub(crate) fn parse_url(
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

const CLIENT_AUTH: [(&str, ClientAuth); 2] = [
    ("client_secret_basic", ClientAuth::Basic),
    ("client_secret_post", ClientAuth::Post),
];

/// `None` when a required key is missing or broken; the problems say which.
pub fn check(section: OidcSection, problems: &mut Vec<Problem>) -> Option<OidcSettings> {
    let liveness = liveness(&section, problems);
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
        // (value, key, required), checked in this order.
        let [authorization, token, jwks, userinfo, end_session] = [
            (
                &section.authorization_endpoint,
                "oidc.authorization_endpoint",
                true,
            ),
            (&section.token_endpoint, "oidc.token_endpoint", true),
            (&section.jwks_uri, "oidc.jwks_uri", true),
            (&section.userinfo_endpoint, "oidc.userinfo_endpoint", false),
            (
                &section.end_session_endpoint,
                "oidc.end_session_endpoint",
                false,
            ),
        ]
        .map(|(value, key, required)| parse_url(value.as_deref(), key, required, problems));
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
    let client_secret = inline_or_file(
        "oidc",
        "client_secret",
        section.client_secret,
        section.client_secret_file.as_deref(),
        problems,
    )
    .map(Secret::from)
    .filter(|s| !s.is_empty());

    // Unset: as the provider advertises (`oidc::client_auth`).
    let client_auth = one_of(
        problems,
        "oidc.token_endpoint_auth_method",
        section.token_endpoint_auth_method.as_deref(),
        &CLIENT_AUTH,
    );

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
    problems.within("oidc.timeout_ms", timeout_ms, 500..=120_000);

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
        display_name: trimmed(section.display_name)
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
        liveness,
    })
}

fn liveness(section: &OidcSection, problems: &mut Vec<Problem>) -> LivenessSettings {
    let defaults = LivenessSettings::default();
    let hours = section.liveness_check_hours.unwrap_or(6.0);
    let percent = section.liveness_max_suspend_percent.unwrap_or(10.0);
    let hours_and_percent = [
        (
            "oidc.liveness_check_hours",
            hours,
            8760.0,
            "a number of hours between 0 (off) and 8760",
        ),
        (
            "oidc.liveness_max_suspend_percent",
            percent,
            100.0,
            "a percentage between 0 and 100",
        ),
    ];
    // `contains` is false for NaN, so a value that fits is also finite.
    let [hours_fit, percent_fits] = hours_and_percent.map(|(key, value, most, what)| {
        let fits = (0.0..=most).contains(&value);
        if !fits {
            problem(problems, key, format!("must be {what}"));
        }
        fits
    });
    let concurrency = section.liveness_concurrency.unwrap_or(4);
    problems.within("oidc.liveness_concurrency", concurrency, 1..=64);
    let days = section.max_days_without_sign_in.unwrap_or(0);
    problems.within("oidc.max_days_without_sign_in", days, 0..=36_500);
    let interval = (hours_fit && hours > 0.0).then(|| Duration::from_secs_f64(hours * 3600.0));
    LivenessSettings {
        interval,
        concurrency: usize::try_from(concurrency).unwrap_or(defaults.concurrency),
        max_suspend_percent: if percent_fits {
            percent
        } else {
            defaults.max_suspend_percent
        },
        max_days_without_sign_in: (days > 0).then_some(days),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::config::parse;
    use crate::config::tests::assert_reported;
    use crate::test_support::file_in_tempdir;

    #[test]
    fn oidc_and_web_sections_get_their_defaults() {
        let (_dir, secret) = file_in_tempdir("secret", "s3cret-client\n");
        let text = format!(
            "[oidc]\nissuer = \"https://sso.example.org/realms/x\"\nclient_id = \"mail\"\n\
             client_secret_file = {secret:?}\nredirect_url = \"https://mail.example.org/callback\"\n[web]\n"
        );
        let c = parse(&text).unwrap();
        let o = c.oidc.as_ref().unwrap();
        assert_eq!(o.scopes, ["openid", "profile", "email", "mailcow_template"]);
        assert_eq!(
            (o.address_claim.as_str(), o.template_claim.as_str()),
            ("email", "mailcow_template")
        );
        assert!(o.provision && !o.ignore_tls_errors && o.endpoints.is_none());
        assert!(
            o.require_verified_email,
            "an absent email_verified is refused by default"
        );
        assert_eq!(o.client_secret.as_ref().unwrap().expose(), b"s3cret-client");
        assert!(!format!("{c:?}").contains("s3cret"));
        let w = c.web.as_ref().unwrap();
        assert_eq!(w.listen.to_string(), "127.0.0.1:8080");
        assert!(w.secure_cookies);
        assert_eq!(w.mail_host.as_deref(), Some("mail.example.org"));
        assert_eq!(
            w.public_root.as_ref().unwrap().as_str(),
            "https://mail.example.org/"
        );
    }

    #[test]
    fn oidc_problems_name_their_keys() {
        let text = r#"
            [oidc]
            issuer = "http://sso.example.org"
            client_secret = "a"
            client_secret_file = "/nonexistent"
            redirect_url = "https://mail.example.org/elsewhere"
            token_endpoint = "https://sso.example.org/token"
            token_endpoint_auth_method = "private_key_jwt"
            scopes = ["profile"]
            [web]
            listen = "localhost"
        "#;
        assert_reported(
            text,
            &[
                "oidc.issuer",
                "oidc.client_id",
                "oidc.client_secret_file",
                "oidc.redirect_url",
                "oidc.authorization_endpoint",
                "oidc.jwks_uri",
                "oidc.token_endpoint_auth_method",
                "oidc.scopes",
            ],
        );
    }

    #[test]
    fn require_verified_email_can_be_turned_off_and_must_be_a_boolean() {
        let base = MINIMAL_OIDC;
        let off = parse(&format!("{base}require_verified_email = false\n")).unwrap();
        assert!(!off.oidc.unwrap().require_verified_email);
        let problems = parse(&format!("{base}require_verified_email = \"no\"\n")).unwrap_err();
        let shown: Vec<String> = problems.iter().map(|p| format!("{p:?}")).collect();
        assert!(
            shown.iter().any(|p| p.contains("require_verified_email")),
            "{shown:?}"
        );
    }

    #[test]
    fn liveness_keys_have_their_defaults_and_bounds() {
        let base = MINIMAL_OIDC;
        let l = parse(base).unwrap().oidc.unwrap().liveness;
        assert_eq!(l.interval, Some(std::time::Duration::from_secs(6 * 3600)));
        assert_eq!((l.concurrency, l.max_suspend_percent), (4, 10.0));
        assert_eq!(l.max_days_without_sign_in, None);
        let set = parse(&format!(
            "{base}liveness_check_hours = 0.001\nliveness_concurrency = 2\n\
             liveness_max_suspend_percent = 25\nmax_days_without_sign_in = 90\n"
        ))
        .unwrap()
        .oidc
        .unwrap()
        .liveness;
        assert_eq!(set.interval, Some(std::time::Duration::from_secs_f64(3.6)));
        assert_eq!((set.concurrency, set.max_suspend_percent), (2, 25.0));
        assert_eq!(set.max_days_without_sign_in, Some(90));
        let off = parse(&format!("{base}liveness_check_hours = 0\n")).unwrap();
        assert_eq!(off.oidc.unwrap().liveness.interval, None);
        assert_reported(
            &format!(
                "{base}liveness_check_hours = -1\nliveness_concurrency = 0\n\
                 liveness_max_suspend_percent = 101\n"
            ),
            &[
                "oidc.liveness_check_hours",
                "oidc.liveness_concurrency",
                "oidc.liveness_max_suspend_percent",
            ],
        );
    }

    /// The keys an `[oidc]` section cannot do without (a macro, for `concat!`).
    macro_rules! minimal_oidc {
        () => {
            r#"
            [oidc]
            issuer = "http://127.0.0.1:9000"
            client_id = "mail"
            redirect_url = "http://127.0.0.1:8080/callback"
            "#
        };
    }

    /// [`minimal_oidc`]: the endpoints come from discovery.
    const MINIMAL_OIDC: &str = minimal_oidc!();

    /// An `[oidc]` section with its endpoints written out (no discovery) and no UserInfo.
    pub(crate) const OIDC_BY_HAND: &str = concat!(
        minimal_oidc!(),
        r#"
        authorization_endpoint = "http://127.0.0.1:9000/auth"
        token_endpoint = "http://127.0.0.1:9000/token"
        jwks_uri = "http://127.0.0.1:9000/jwks"
    "#
    );

    #[test]
    fn explicit_endpoints_turn_discovery_off() {
        let text = format!("{OIDC_BY_HAND}userinfo_endpoint = \"http://127.0.0.1:9000/me\"\n");
        let c = parse(&text).unwrap();
        let e = c.oidc.unwrap().endpoints.unwrap();
        assert_eq!(e.token.as_str(), "http://127.0.0.1:9000/token");
        assert_eq!(e.userinfo.unwrap().as_str(), "http://127.0.0.1:9000/me");
        assert!(c.web.is_none());
    }
}
