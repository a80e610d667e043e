//! The `[web]` config section, checked into [`WebSettings`], and `[metrics]`, checked into
//! [`MetricsSettings`]: where `/metrics` is served depends on the web page's listener and
//! must not take one of its paths.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use openidconnect::url::Url;
use serde::Deserialize;

use crate::oidc::OidcSettings;
use crate::settings_check::{networks, problem, trimmed, Problem, Within};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WebSection {
    listen: Option<String>,
    title: Option<String>,
    mail_host: Option<String>,
    secure_cookies: Option<bool>,
    session_minutes: Option<u64>,
    /// Replaced by `trusted_proxies`; refused when true, with a pointer to it.
    trust_x_forwarded_for: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    max_connections: Option<u64>,
    header_timeout_seconds: Option<u64>,
    max_anonymous_sessions: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MetricsSection {
    listen: Option<String>,
    path: Option<String>,
    on_web_listener: Option<bool>,
}

/// Compared by value at reload, like every checked section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSettings {
    pub listen: SocketAddr,
    /// Page title and heading, e.g. "Example Mail".
    pub title: String,
    /// Host name mail clients connect to, shown with a new app password.
    pub mail_host: Option<String>,
    /// `Secure` on cookies; off only for plain-HTTP test setups.
    pub secure_cookies: bool,
    pub session_lifetime: Duration,
    /// Reverse proxies whose `X-Forwarded-For` is read (see [`super::client_ip`]).
    pub trusted_proxies: Vec<IpNet>,
    /// Connections the listener serves at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// A client gets this long to send a request's headers (also between requests on a
    /// kept-alive connection); then the connection is closed.
    pub header_timeout: Duration,
    /// Where the provider sends people back after signing out: the page's own root.
    pub public_root: Option<Url>,
    /// Sessions nobody has signed in to kept in the store at most (all daemons together);
    /// past it the ones closest to expiry make room.
    pub max_anonymous_sessions: u64,
}

/// Enough for every person signing in at once on a busy site, far below the descriptor
/// limit.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 512;

pub fn check(
    section: WebSection,
    oidc: Option<&OidcSettings>,
    problems: &mut Vec<Problem>,
) -> Option<WebSettings> {
    let listen_text = section
        .listen
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listen = match listen_text.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problem(
                problems,
                "web.listen",
                format!(
                    "{listen_text:?} is not an address:port such as 127.0.0.1:8080 or [::1]:8080"
                ),
            );
            None
        }
    };
    let minutes = section.session_minutes.unwrap_or(60);
    if !(5..=7 * 24 * 60).contains(&minutes) {
        problem(
            problems,
            "web.session_minutes",
            "must be between 5 and 10080 (a week)",
        );
    }
    if section.trust_x_forwarded_for == Some(true) {
        problem(
            problems,
            "web.trust_x_forwarded_for",
            "has been replaced by web.trusted_proxies: list your reverse proxies' addresses, \
             e.g. trusted_proxies = [\"127.0.0.1/32\", \"::1/128\"], and remove this key",
        );
    }
    let trusted_proxies = networks(
        "web.trusted_proxies",
        section.trusted_proxies.as_deref().unwrap_or_default(),
        problems,
    );
    let max_connections = section.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    problems.within("web.max_connections", max_connections, 1..=1_000_000);
    let header_timeout = section.header_timeout_seconds.unwrap_or(10);
    problems.within("web.header_timeout_seconds", header_timeout, 1..=300);
    let max_anonymous = section
        .max_anonymous_sessions
        .unwrap_or(super::session::MAX_ANONYMOUS);
    problems.within("web.max_anonymous_sessions", max_anonymous, 10..=10_000_000);
    let mail_host = trimmed(section.mail_host).or_else(|| {
        oidc.and_then(|o| o.redirect_url.host_str().map(str::to_string))
            .filter(|h| h != "127.0.0.1" && h != "localhost" && h != "[::1]")
    });
    let public_root = oidc.map(|o| {
        let mut root = o.redirect_url.clone();
        root.set_path("/");
        root.set_query(None);
        root.set_fragment(None);
        root
    });
    Some(WebSettings {
        listen: listen?,
        title: trimmed(section.title).unwrap_or_else(|| "Mail account".into()),
        mail_host,
        secure_cookies: section.secure_cookies.unwrap_or(true),
        session_lifetime: Duration::from_secs(minutes.clamp(5, 7 * 24 * 60) * 60),
        trusted_proxies,
        max_connections: usize::try_from(max_connections.clamp(1, 1_000_000)).unwrap_or(1),
        header_timeout: Duration::from_secs(header_timeout.clamp(1, 300)),
        public_root,
        max_anonymous_sessions: max_anonymous.clamp(10, 10_000_000),
    })
}

/// Where `/metrics` is served: its own listener, the web page's, both or neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// A listener of its own, which also answers `/healthz` and `/readyz`.
    pub listen: Option<SocketAddr>,
    pub path: String,
    pub on_web_listener: bool,
}

/// The web page's own paths, which `/metrics` on its listener must not shadow.
const WEB_PAGE_PATHS: [&str; 11] = [
    "/",
    "/login",
    "/login/password",
    "/callback",
    "/logout",
    "/app-passwords",
    "/app-passwords/revoke",
    "/devices",
    "/.well-known/autoconfig/mail/config-v1.1.xml",
    "/mail/config-v1.1.xml",
    "/autodiscover/autodiscover.xml",
];

/// Whether `path` is one of the page's: its own paths, the device setup's results and
/// downloads below `/devices/`, and Autodiscover's path in any case.
fn is_web_page_path(path: &str) -> bool {
    WEB_PAGE_PATHS.contains(&path)
        || path.starts_with("/devices/")
        || WEB_PAGE_PATHS.contains(&path.to_ascii_lowercase().as_str())
}

pub fn check_metrics(
    section: MetricsSection,
    web_configured: bool,
    problems: &mut Vec<Problem>,
) -> MetricsSettings {
    let listen = section.listen.as_deref().and_then(|text| {
        text.trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                problem(
                    problems,
                    "metrics.listen",
                    format!("{text:?} is not ADDRESS:PORT (e.g. 127.0.0.1:9154)"),
                )
            })
            .ok()
    });
    let path = section.path.unwrap_or_else(|| "/metrics".into());
    if !path.starts_with('/') || path.len() > 200 || path.chars().any(char::is_whitespace) {
        problem(
            problems,
            "metrics.path",
            "must be a URL path starting with / (default /metrics)",
        );
    }
    let on_web_listener = section.on_web_listener.unwrap_or(false);
    if on_web_listener && !web_configured {
        problem(
            problems,
            "metrics.on_web_listener",
            "needs a [web] section (or use metrics.listen for a listener of its own)",
        );
    }
    if ["/healthz", "/readyz"].contains(&path.as_str())
        || (on_web_listener && is_web_page_path(&path))
    {
        problem(
            problems,
            "metrics.path",
            format!("{path} is already a page of its listener; pick another path"),
        );
    }
    MetricsSettings {
        listen,
        path,
        on_web_listener,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::config::tests::{assert_only_problem, problem_keys as keys};

    #[test]
    fn trusted_proxies_and_limits_are_checked() {
        let c = parse(
            "[web]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nmax_connections = 64\nheader_timeout_seconds = 5\n",
        )
        .unwrap();
        let w = c.web.unwrap();
        assert_eq!(w.trusted_proxies.len(), 2);
        assert!(w.trusted_proxies[1].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(w.max_connections, 64);
        assert_eq!(w.header_timeout.as_secs(), 5);
        let d = parse("[web]\n").unwrap().web.unwrap();
        assert!(d.trusted_proxies.is_empty(), "nobody is trusted by default");
        assert_eq!((d.max_connections, d.header_timeout.as_secs()), (512, 10));
        assert_eq!(
            keys("[web]\ntrusted_proxies = [\"proxy.example\"]\n"),
            ["web.trusted_proxies"]
        );
        assert_eq!(
            keys("[web]\nmax_connections = 0\nheader_timeout_seconds = 0\n"),
            ["web.max_connections", "web.header_timeout_seconds"]
        );
    }

    #[test]
    fn the_old_all_or_nothing_key_points_to_the_new_one() {
        assert_only_problem(
            "[web]\ntrust_x_forwarded_for = true\n",
            "web.trust_x_forwarded_for",
            "web.trusted_proxies",
        );
        // Saying "no" asked for nothing; it is accepted and means what it always meant.
        assert!(parse("[web]\ntrust_x_forwarded_for = false\n")
            .unwrap()
            .web
            .unwrap()
            .trusted_proxies
            .is_empty());
    }

    #[test]
    fn metrics_settings_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.metrics.listen, None);
        assert!(!c.metrics.on_web_listener);
        assert_eq!(c.metrics.path, "/metrics");
        assert_eq!(
            keys("[metrics]\nlisten = \"localhost\"\npath = \"metrics\"\non_web_listener = true\n"),
            ["metrics.listen", "metrics.path", "metrics.on_web_listener"]
        );
        assert_eq!(
            keys("[metrics]\nlisten = \"127.0.0.1:1\"\npath = \"/readyz\"\n"),
            ["metrics.path"]
        );
        for taken in [
            "/devices",
            "/devices/done/x",
            "/Autodiscover/Autodiscover.xml",
        ] {
            assert_eq!(
                keys(&format!(
                    "[web]\n[metrics]\non_web_listener = true\npath = \"{taken}\"\n"
                )),
                ["metrics.path"],
                "{taken}"
            );
        }
    }
}
