//! The `[web]` config section, checked into [`WebSettings`].

use std::net::SocketAddr;
use std::time::Duration;

use openidconnect::url::Url;

use crate::config::{problem, Problem, WebSection};
use crate::oidc::OidcSettings;

#[derive(Clone, Debug)]
pub struct WebSettings {
    pub listen: SocketAddr,
    /// Page title and heading, e.g. "Example Mail".
    pub title: String,
    /// Host name mail clients connect to, shown with a new app password.
    pub mail_host: Option<String>,
    /// `Secure` on cookies; off only for plain-HTTP test setups.
    pub secure_cookies: bool,
    pub session_lifetime: Duration,
    pub trust_x_forwarded_for: bool,
    /// Where the provider sends people back after signing out: the page's own root.
    pub public_root: Option<Url>,
}

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
    let mail_host = section
        .mail_host
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| {
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
        title: section
            .title
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "Mail account".into()),
        mail_host,
        secure_cookies: section.secure_cookies.unwrap_or(true),
        session_lifetime: Duration::from_secs(minutes.clamp(5, 7 * 24 * 60) * 60),
        trust_x_forwarded_for: section.trust_x_forwarded_for.unwrap_or(false),
        public_root,
    })
}
