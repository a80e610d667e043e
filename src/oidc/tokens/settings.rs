//! The `[oauth]` config section ([`OAuthSection`]), checked into [`OAuthSettings`]: which
//! access tokens mail logins accept.

use std::path::PathBuf;
use std::time::Duration;

use openidconnect::url::Url;
use serde::Deserialize;

use crate::oidc::settings::parse_url;
use crate::oidc::OidcSettings;
use crate::secret::Secret;
use crate::settings_check::{inline_or_file, one_of, problem, trimmed, Problem, Within};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OAuthSection {
    audiences: Option<Vec<String>>,
    required_scope: Option<String>,
    introspection: Option<String>,
    introspection_url: Option<String>,
    clock_skew_seconds: Option<u64>,
    cache_size: Option<u64>,
    cache_seconds: Option<u64>,
    timeout_ms: Option<u64>,
    introspection_clients: Vec<IntrospectionClientSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct IntrospectionClientSection {
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
}

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

const MODES: [(&str, IntrospectionMode); 3] = [
    ("auto", IntrospectionMode::Auto),
    ("always", IntrospectionMode::Always),
    ("never", IntrospectionMode::Never),
];

/// A scope or client id as the provider writes it: one word, no blanks or control
/// characters (a scope list is space separated, so a blank would split it).
fn is_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `None` when `[oauth]` cannot be used; the problems say why. `oidc` is the checked
/// `[oidc]`, `None` when the file has none.
pub fn check(
    section: OAuthSection,
    oidc: Option<&OidcSettings>,
    problems: &mut Vec<Problem>,
) -> Option<OAuthSettings> {
    let before = problems.len();
    if oidc.is_none() {
        problem(
            problems,
            "oauth",
            "needs an [oidc] section: the issuer, the provider's keys and mailauthd's client credentials come from there",
        );
    }
    let audiences: Vec<String> = section
        .audiences
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.trim().to_string())
        .collect();
    if audiences.is_empty() {
        problem(
            problems,
            "oauth.audiences",
            "is required: the client ids of the webmail (or other programs) whose tokens mail logins accept, e.g. [\"roundcube\"]",
        );
    } else if !audiences.iter().all(|a| is_word(a)) {
        problem(
            problems,
            "oauth.audiences",
            "each entry is one client id, without blanks",
        );
    }
    let required_scope = trimmed(section.required_scope);
    if required_scope.as_deref().is_some_and(|s| !is_word(s)) {
        problem(
            problems,
            "oauth.required_scope",
            "must be one scope, without blanks",
        );
    }
    let introspection = one_of(
        problems,
        "oauth.introspection",
        section.introspection.as_deref(),
        &MODES,
    )
    .unwrap_or(IntrospectionMode::Auto);
    let introspection_url = parse_url(
        section.introspection_url.as_deref(),
        "oauth.introspection_url",
        false,
        problems,
    );
    let by_hand = oidc.is_some_and(|o| o.endpoints.is_some());
    if by_hand
        && introspection_url.is_none()
        && section.introspection_url.is_none()
        && introspection != IntrospectionMode::Never
    {
        problem(
            problems,
            "oauth.introspection_url",
            "is required when [oidc] sets its endpoints by hand (there is no discovery document to name one), unless introspection = \"never\"",
        );
    }
    if introspection_url.is_some() && introspection == IntrospectionMode::Never {
        problem(
            problems,
            "oauth.introspection_url",
            "is never used with introspection = \"never\"; remove one of them",
        );
    }
    let skew = section.clock_skew_seconds.unwrap_or(60);
    problems.within("oauth.clock_skew_seconds", skew, 0..=600);
    let cache_size = section.cache_size.unwrap_or(10_000);
    problems.within("oauth.cache_size", cache_size, 0..=1_000_000);
    let cache_seconds = section.cache_seconds.unwrap_or(300);
    problems.within("oauth.cache_seconds", cache_seconds, 0..=86_400);
    let timeout_ms = section.timeout_ms.unwrap_or(3000);
    problems.within("oauth.timeout_ms", timeout_ms, 100..=60_000);
    let endpoint_clients = endpoint_clients(section.introspection_clients, problems);
    if problems.len() > before {
        return None;
    }
    Some(OAuthSettings {
        audiences,
        required_scope,
        introspection,
        introspection_url,
        clock_skew: Duration::from_secs(skew),
        cache_entries: usize::try_from(cache_size).unwrap_or(10_000),
        cache_ttl: Duration::from_secs(cache_seconds),
        timeout: Duration::from_millis(timeout_ms),
        endpoint_clients,
    })
}

fn endpoint_clients(
    sections: Vec<IntrospectionClientSection>,
    problems: &mut Vec<Problem>,
) -> Vec<IntrospectionClient> {
    let mut clients: Vec<IntrospectionClient> = Vec::new();
    for (i, c) in sections.into_iter().enumerate() {
        let section = format!("oauth.introspection_clients[{i}]");
        let client_id = c.client_id.unwrap_or_default().trim().to_string();
        if client_id.is_empty() {
            problem(problems, &format!("{section}.client_id"), "is required");
        } else if !is_word(&client_id) || client_id.contains(':') {
            // HTTP Basic separates the user id from the password with the first colon.
            problem(
                problems,
                &format!("{section}.client_id"),
                "must be one word without blanks or colons",
            );
        } else if clients.iter().any(|o| o.client_id == client_id) {
            problem(
                problems,
                &format!("{section}.client_id"),
                format!("{client_id:?} is listed twice"),
            );
        }
        let reported = problems.len();
        let secret = inline_or_file(
            &section,
            "client_secret",
            c.client_secret,
            c.client_secret_file.as_deref(),
            problems,
        );
        match secret.filter(|s| !s.is_empty()) {
            Some(secret) => clients.push(IntrospectionClient {
                client_id,
                client_secret: Secret::from(secret),
            }),
            None if problems.len() > reported => {}
            None => problem(
                problems,
                &format!("{section}.client_secret"),
                format!("is required: set {section}.client_secret_file (or client_secret)"),
            ),
        }
    }
    clients
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::IntrospectionMode;
    use crate::config::parse;
    use crate::config::tests::{assert_reported, problem_keys};
    use crate::test_support::file_in_tempdir;

    const OIDC: &str = r#"
        [oidc]
        issuer = "http://127.0.0.1:9000"
        client_id = "mail"
        redirect_url = "http://127.0.0.1:8080/callback"
    "#;

    fn with_oauth(oauth: &str) -> String {
        format!("{OIDC}\n[oauth]\n{oauth}\n")
    }

    #[test]
    fn defaults() {
        let c = parse(&with_oauth(r#"audiences = ["roundcube"]"#)).unwrap();
        let o = c.oauth.unwrap();
        assert_eq!(o.audiences, ["roundcube"]);
        assert_eq!(o.required_scope, None);
        assert_eq!(o.introspection, IntrospectionMode::Auto);
        assert_eq!(o.introspection_url, None);
        assert_eq!(o.clock_skew, Duration::from_secs(60));
        assert_eq!(
            (o.cache_entries, o.cache_ttl),
            (10_000, Duration::from_secs(300))
        );
        assert_eq!(o.timeout, Duration::from_millis(3000));
        assert!(o.endpoint_clients.is_empty());
        assert!(parse(OIDC).unwrap().oauth.is_none());
    }

    #[test]
    fn every_key_is_read() {
        let (_dir, secret) = file_in_tempdir("secret", "dovecot-s3cret\n");
        let c = parse(&format!(
            "{OIDC}\n[web]\n[oauth]\n\
             audiences = [\"roundcube\", \" sogo \"]\nrequired_scope = \"email\"\n\
             introspection = \"always\"\n\
             introspection_url = \"https://sso.example.org/introspect\"\n\
             clock_skew_seconds = 5\ncache_size = 7\ncache_seconds = 0\ntimeout_ms = 250\n\
             [[oauth.introspection_clients]]\nclient_id = \"dovecot\"\nclient_secret_file = {secret:?}\n\
             [[oauth.introspection_clients]]\nclient_id = \"other\"\nclient_secret = \"inline\"\n"
        ))
        .unwrap();
        let o = c.oauth.unwrap();
        assert_eq!(o.audiences, ["roundcube", "sogo"]);
        assert_eq!(o.required_scope.as_deref(), Some("email"));
        assert_eq!(o.introspection, IntrospectionMode::Always);
        assert_eq!(
            o.introspection_url.unwrap().as_str(),
            "https://sso.example.org/introspect"
        );
        assert_eq!(o.clock_skew, Duration::from_secs(5));
        assert_eq!((o.cache_entries, o.cache_ttl), (7, Duration::ZERO));
        assert_eq!(o.timeout, Duration::from_millis(250));
        let clients: Vec<(&str, &[u8])> = o
            .endpoint_clients
            .iter()
            .map(|c| (c.client_id.as_str(), c.client_secret.expose()))
            .collect();
        assert_eq!(
            clients,
            [
                ("dovecot", &b"dovecot-s3cret"[..]),
                ("other", &b"inline"[..])
            ]
        );
        assert!(!format!("{:?}", o.endpoint_clients).contains("s3cret"));
        let never = parse(&with_oauth(
            "audiences = [\"r\"]\nintrospection = \"never\"",
        ))
        .unwrap();
        assert_eq!(never.oauth.unwrap().introspection, IntrospectionMode::Never);
    }

    #[test]
    fn oauth_without_oidc_is_a_clear_problem() {
        let problems = parse("[oauth]\naudiences = [\"roundcube\"]\n").unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "oauth");
        assert!(problems[0].message.contains("[oidc]"), "{}", problems[0]);
        // A broken [oidc] is reported as itself, not as a missing one.
        let keys = problem_keys("[oidc]\nclient_id = \"m\"\n[oauth]\naudiences = [\"r\"]\n");
        assert!(keys.iter().any(|k| k == "oidc.issuer"), "{keys:?}");
        assert!(!keys.iter().any(|k| k == "oauth"), "{keys:?}");
    }

    #[test]
    fn bad_values_name_their_keys() {
        assert_reported(
            &with_oauth(
                "introspection = \"sometimes\"\nintrospection_url = \"http://sso.example.org/i\"\n\
                 required_scope = \"email profile\"\nclock_skew_seconds = 601\n\
                 cache_size = 1000001\ncache_seconds = 86401\ntimeout_ms = 50\n",
            ),
            &[
                "oauth.audiences",
                "oauth.introspection",
                "oauth.introspection_url",
                "oauth.required_scope",
                "oauth.clock_skew_seconds",
                "oauth.cache_size",
                "oauth.cache_seconds",
                "oauth.timeout_ms",
            ],
        );
        for audiences in ["[]", "[\"\"]", "[\"two words\"]"] {
            assert_reported(
                &with_oauth(&format!("audiences = {audiences}")),
                &["oauth.audiences"],
            );
        }
        assert_reported(
            &with_oauth("audiences = [\"r\"]\ncolour = \"blue\""),
            &["oauth.?.colour"],
        );
        let message = parse(&with_oauth(
            "audiences = [\"r\"]\nintrospection = \"sometimes\"",
        ))
        .unwrap_err()
        .into_iter()
        .find(|p| p.key == "oauth.introspection")
        .unwrap()
        .message;
        assert!(message.contains("auto or always or never"), "{message}");
    }

    #[test]
    fn introspection_clients_are_checked() {
        let base = format!("{OIDC}\n[web]\n[oauth]\naudiences = [\"r\"]\n");
        let keys = problem_keys(&format!(
            "{base}[[oauth.introspection_clients]]\nclient_secret = \"x\"\n\
             [[oauth.introspection_clients]]\nclient_id = \"a:b\"\nclient_secret = \"x\"\n\
             [[oauth.introspection_clients]]\nclient_id = \"d\"\n\
             [[oauth.introspection_clients]]\nclient_id = \"e\"\nclient_secret = \"x\"\nclient_secret_file = \"/nonexistent\"\n\
             [[oauth.introspection_clients]]\nclient_id = \"f\"\nclient_secret_file = \"/nonexistent\"\n\
             [[oauth.introspection_clients]]\nclient_id = \"g\"\nclient_secret = \"x\"\n\
             [[oauth.introspection_clients]]\nclient_id = \"g\"\nclient_secret = \"y\"\n"
        ));
        for expected in [
            "oauth.introspection_clients[0].client_id",
            "oauth.introspection_clients[1].client_id",
            "oauth.introspection_clients[2].client_secret",
            "oauth.introspection_clients[3].client_secret_file",
            "oauth.introspection_clients[4].client_secret_file",
            "oauth.introspection_clients[6].client_id",
        ] {
            assert!(
                keys.iter().any(|k| k == expected),
                "{expected} missing from {keys:?}"
            );
        }
        // One problem per broken client, not two.
        assert_eq!(keys.len(), 6, "{keys:?}");
        // The endpoint lives on the web listener.
        assert_reported(
            &with_oauth(
                "audiences = [\"r\"]\n[[oauth.introspection_clients]]\nclient_id = \"d\"\nclient_secret = \"x\"\n",
            ),
            &["oauth.introspection_clients"],
        );
    }

    #[test]
    fn endpoints_by_hand_need_an_introspection_url_unless_never() {
        let by_hand = format!(
            "{}[oauth]\naudiences = [\"r\"]\n",
            crate::oidc::settings::tests::OIDC_BY_HAND
        );
        assert_reported(&by_hand, &["oauth.introspection_url"]);
        parse(&format!("{by_hand}introspection = \"never\"\n")).unwrap();
        parse(&format!(
            "{by_hand}introspection_url = \"http://127.0.0.1:9000/introspect\"\n"
        ))
        .unwrap();
        assert_reported(
            &with_oauth(
                "audiences = [\"r\"]\nintrospection = \"never\"\nintrospection_url = \"https://x.example/i\"",
            ),
            &["oauth.introspection_url"],
        );
    }
}
