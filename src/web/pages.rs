//! The pages a person sees. Plain HTML: forms post back, the server answers; the only
//! script is the optional copy button (`html::copy_button`).

use std::fmt::Write;

use super::html::{copy_button, esc, page};
use crate::clock::{format_time, UnixTime};
use crate::names::{Protocol, Protocols};
use crate::store::{AppPassword, LastUseInfo, Mailbox};

fn when(t: UnixTime) -> String {
    // Minutes are enough for a person; seconds only add noise.
    let full = format_time(t);
    format!("{} UTC", &full[..full.len().saturating_sub(3)])
}

fn describe_use(u: &LastUseInfo) -> String {
    let mut s = when(u.at);
    if let Some(ip) = &u.ip {
        let _ = write!(s, " from {ip}");
    }
    if let Some(service) = &u.service {
        let _ = write!(s, " ({})", service.to_uppercase());
    }
    s
}

pub(super) fn protocol_names(p: Protocols) -> String {
    let names: Vec<String> = p.iter().map(|p| p.name().to_uppercase()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

pub struct Notice<'a> {
    pub good: bool,
    pub text: &'a str,
}

pub(super) fn notice(n: &Option<Notice<'_>>) -> String {
    match n {
        Some(Notice { good: true, text }) => format!(
            "<section class=\"notice\" role=\"status\"><p>{}</p></section>\n",
            esc(text)
        ),
        Some(Notice { good: false, text }) => format!(
            "<section class=\"problem\" role=\"alert\"><p>{}</p></section>\n",
            esc(text)
        ),
        None => String::new(),
    }
}

pub fn sign_in(
    site: &str,
    provider: Option<&str>,
    csrf: &str,
    message: Option<Notice<'_>>,
    address: &str,
) -> String {
    let mut body = notice(&message);
    body.push_str("<section>\n<h2>Sign in</h2>\n");
    if let Some(name) = provider {
        let _ = write!(
            body,
            "<p>Sign in to see your mailbox and make app passwords for your mail programs.</p>\n\
             <p><a class=\"button\" id=\"provider-sign-in\" href=\"/login\">Sign in with {}</a></p>\n",
            esc(name)
        );
        body.push_str("<p class=\"or\">or, if your mailbox has its own password</p>\n");
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/login/password\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
         <label for=\"address\">Mail address</label>\n\
         <input type=\"email\" id=\"address\" name=\"address\" autocomplete=\"username\" required value=\"{}\">\n\
         <label for=\"password\">Password</label>\n\
         <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\n\
         <p><button type=\"submit\">Sign in with password</button></p>\n</form>\n</section>\n",
        esc(csrf),
        esc(address)
    );
    page(site, "Sign in", None, None, &body)
}

pub fn problem(site: &str, title: &str, message: &str, again: bool) -> String {
    let mut body = format!(
        "<section class=\"problem\" role=\"alert\">\n<h2>{}</h2>\n<p id=\"reason\">{}</p>\n",
        esc(title),
        esc(message)
    );
    if again {
        body.push_str("<p><a class=\"button\" href=\"/\">Back to sign in</a></p>\n");
    }
    body.push_str("</section>\n");
    page(site, title, None, None, &body)
}

pub struct Account<'a> {
    pub site: &'a str,
    pub mailbox: &'a Mailbox,
    pub apps: &'a [AppPassword],
    pub csrf: &'a str,
    pub now: UnixTime,
    pub message: Option<Notice<'a>>,
    /// Device setup is on: link to it.
    pub devices: bool,
}

pub fn account(a: &Account<'_>) -> String {
    let m = a.mailbox;
    let mut body = notice(&a.message);
    let _ = write!(
        body,
        "<section aria-labelledby=\"mailbox-h\">\n<h2 id=\"mailbox-h\">Your mailbox</h2>\n<dl>\n\
         <dt>Address</dt><dd id=\"mailbox-address\">{}</dd>\n",
        esc(&m.address)
    );
    if !m.display_name.is_empty() {
        let _ = writeln!(body, "<dt>Name</dt><dd>{}</dd>", esc(&m.display_name));
    }
    let _ = write!(
        body,
        "<dt>Storage</dt><dd>{}</dd>\n<dt>Allowed for</dt><dd>{}</dd>\n",
        if m.quota == 0 {
            "unlimited".to_string()
        } else {
            crate::size::format_size(m.quota)
        },
        esc(&protocol_names(m.protocols))
    );
    let _ = write!(
        body,
        "<dt>Signs in with</dt><dd>{}</dd>\n</dl>\n</section>\n",
        match m.auth_source {
            crate::store::AuthSource::Oidc =>
                "your organisation's account (mail programs use app passwords)",
            crate::store::AuthSource::Local =>
                "its own password (mail programs may also use app passwords)",
        }
    );

    let _ = write!(
        body,
        "{}<section aria-labelledby=\"apps-h\">\n<h2 id=\"apps-h\">App passwords</h2>\n\
         <p class=\"muted\">Each mail program gets its own app password. Revoke one and that program stops at its next login.</p>\n",
        if a.devices {
            "<section aria-labelledby=\"devices-h\">\n<h2 id=\"devices-h\">Set up a device</h2>\n\
             <p>A phone, tablet or mail program set up in one step, with its own app password.</p>\n\
             <p><a class=\"button\" id=\"set-up-device\" href=\"/devices\">Set up a device</a></p>\n</section>\n"
        } else {
            ""
        }
    );
    if a.apps.is_empty() {
        body.push_str("<p id=\"no-app-passwords\">You have no app passwords yet.</p>\n");
    } else {
        body.push_str("<ul class=\"items\" id=\"app-passwords\">\n");
        for app in a.apps {
            let expires = match app.expires_at {
                None => "never".to_string(),
                Some(t) if t <= a.now => format!("expired {}", when(t)),
                Some(t) => when(t),
            };
            let last = app
                .last_used
                .as_ref()
                .map(describe_use)
                .unwrap_or_else(|| "never".into());
            let _ = write!(
                body,
                "<li>\n<strong>{}</strong>\n<dl>\n<dt>For</dt><dd>{}</dd>\n<dt>Created</dt><dd>{}</dd>\n\
                 <dt>Last used</dt><dd>{}</dd>\n<dt>Expires</dt><dd>{}</dd>\n</dl>\n\
                 <form method=\"post\" action=\"/app-passwords/revoke\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"id\" value=\"{}\">\
                 <button class=\"danger\" type=\"submit\" aria-label=\"Revoke {}\">Revoke</button></form>\n</li>\n",
                esc(&app.name),
                esc(&protocol_names(app.protocols)),
                esc(&when(app.created_at)),
                esc(&last),
                esc(&expires),
                esc(a.csrf),
                app.id,
                esc(&app.name)
            );
        }
        body.push_str("</ul>\n");
    }
    body.push_str("</section>\n");

    let _ = write!(
        body,
        "<section aria-labelledby=\"new-h\">\n<h2 id=\"new-h\">New app password</h2>\n\
         <form method=\"post\" action=\"/app-passwords\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
         <label for=\"name\">Name (which program or device)</label>\n\
         <input type=\"text\" id=\"name\" name=\"name\" maxlength=\"100\" required placeholder=\"e.g. phone, laptop\">\n\
         <fieldset>\n<legend>Allowed for</legend>\n",
        esc(a.csrf)
    );
    for p in Protocol::ALL {
        // What the mailbox itself does not allow would be refused anyway: offer it greyed
        // out with the reason rather than make a password that cannot work.
        let allowed = m.protocols.contains(p);
        let state = match (allowed, p) {
            (false, _) => " disabled",
            (true, Protocol::Imap | Protocol::Smtp) => " checked",
            (true, _) => "",
        };
        let hint = match (allowed, p) {
            (false, _) => "not allowed for your mailbox",
            (true, Protocol::Imap) => "reading mail",
            (true, Protocol::Pop3) => "downloading mail",
            (true, Protocol::Sieve) => "filter rules",
            (true, Protocol::Smtp) => "sending mail",
        };
        let _ = writeln!(
            body,
            "<label><input type=\"checkbox\" name=\"{}\" value=\"on\"{state}> {} <span class=\"muted\">({hint})</span></label>",
            p.name(),
            p.name().to_uppercase()
        );
    }
    body.push_str(
        "</fieldset>\n<label for=\"expires\">Stops working on (optional)</label>\n\
         <input type=\"date\" id=\"expires\" name=\"expires\">\n\
         <p><button type=\"submit\">Create app password</button></p>\n</form>\n</section>\n",
    );
    page(
        a.site,
        "Your mailbox",
        Some(&m.address),
        Some(a.csrf),
        &body,
    )
}

pub struct Created<'a> {
    pub site: &'a str,
    pub address: &'a str,
    pub name: &'a str,
    pub secret: &'a str,
    pub protocols: Protocols,
    pub expires: Option<UnixTime>,
    pub mail_host: Option<&'a str>,
    pub csrf: &'a str,
}

pub fn created(c: &Created<'_>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<section class=\"notice\" aria-labelledby=\"created-h\">\n<h2 id=\"created-h\">App password “{}” created</h2>\n\
         <p>Enter it in your mail program now. <strong>It is shown only this once</strong>; if you lose it, revoke it and make a new one.</p>\n\
         <p class=\"secret\" id=\"app-password\" aria-label=\"App password\">{}</p>\n{}\
         <dl>\n<dt>For</dt><dd>{}</dd>\n<dt>Expires</dt><dd>{}</dd>\n</dl>\n</section>\n",
        esc(c.name),
        esc(c.secret),
        copy_button(),
        esc(&protocol_names(c.protocols)),
        c.expires.map(when).unwrap_or_else(|| "never".into())
    );
    let _ = write!(
        body,
        "<section aria-labelledby=\"settings-h\">\n<h2 id=\"settings-h\">Settings for your mail program</h2>\n<dl id=\"client-settings\">\n\
         <dt>User name</dt><dd><code>{}</code></dd>\n<dt>Password</dt><dd>the app password above</dd>\n",
        esc(c.address)
    );
    let host = c.mail_host.unwrap_or("your mail server");
    let rows = [
        (Protocol::Imap, "Incoming (IMAP)", "993, SSL/TLS"),
        (Protocol::Pop3, "Incoming (POP3)", "995, SSL/TLS"),
        (
            Protocol::Smtp,
            "Outgoing (SMTP)",
            "465, SSL/TLS (or 587, STARTTLS)",
        ),
        (Protocol::Sieve, "Filters (ManageSieve)", "4190, STARTTLS"),
    ];
    for (p, label, port) in rows {
        if c.protocols.contains(p) {
            let _ = writeln!(
                body,
                "<dt>{label}</dt><dd><code>{}</code> port {port}</dd>",
                esc(host)
            );
        }
    }
    body.push_str("</dl>\n<p><a class=\"button\" href=\"/\">Done</a></p>\n</section>\n");
    page(
        c.site,
        "App password created",
        Some(c.address),
        Some(c.csrf),
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuthSource, MailboxState};

    fn mailbox() -> Mailbox {
        Mailbox {
            address: "alice@example.org".into(),
            domain: "example.org".into(),
            password_hash: None,
            auth_source: AuthSource::Oidc,
            oidc_issuer: None,
            oidc_subject: None,
            display_name: "Alice <script>".into(),
            quota: 1 << 30,
            protocols: Protocols::ALL,
            state: MailboxState::Active,
            template: None,
            template_hash: None,
            overrides: Default::default(),
            created_at: 0,
            updated_at: 0,
            last_login: None,
        }
    }

    #[test]
    fn account_page_escapes_and_shows_last_use() {
        let apps = vec![AppPassword {
            id: 7,
            mailbox: "alice@example.org".into(),
            name: "<phone>".into(),
            protocols: Protocols::parse_list("imap").unwrap_or_default(),
            networks: vec![],
            expires_at: None,
            created_at: 1_800_000_000,
            last_used: Some(LastUseInfo {
                at: 1_800_000_600,
                ip: Some("192.0.2.7".into()),
                service: Some("imap".into()),
            }),
        }];
        let m = mailbox();
        let html = account(&Account {
            site: "Mail",
            mailbox: &m,
            apps: &apps,
            csrf: "tok",
            now: 1_800_001_000,
            message: None,
            devices: true,
        });
        assert!(html.contains("Alice &lt;script&gt;"));
        assert!(html.contains("&lt;phone&gt;"));
        assert!(html.contains("from 192.0.2.7 (IMAP)"));
        assert!(html.matches("name=\"csrf\" value=\"tok\"").count() >= 3);
        assert!(html.contains("href=\"/devices\""));
    }

    #[test]
    fn created_page_shows_settings_for_chosen_protocols_only() {
        let html = created(&Created {
            site: "Mail",
            address: "alice@example.org",
            name: "phone",
            secret: "abcd-efgh-ijkl-mnop-qrst",
            protocols: Protocols::parse_list("imap").unwrap_or_default(),
            expires: None,
            mail_host: Some("mail.example.org"),
            csrf: "tok",
        });
        assert!(html.contains("abcd-efgh-ijkl-mnop-qrst"));
        assert!(html.contains("Incoming (IMAP)"));
        assert!(!html.contains("Outgoing (SMTP)"));
    }
}
