//! The device setup pages: the form, the one-time result, and what later visits see.
//! Plain HTML like the rest of the page; the QR code is inline SVG, so the strict CSP
//! stays as it is.

use std::fmt::Write;

use super::devices::{How, Kind, Ready};
use super::html::{copy_button, esc, page};
use super::pages::{notice, protocol_names, Notice};
use crate::names::{Protocol, Protocols};

pub struct DeviceForm<'a> {
    pub site: &'a str,
    pub address: &'a str,
    pub csrf: &'a str,
    /// What the mailbox allows and `[clients]` offers: the only protocols on the form.
    pub usable: Protocols,
    pub message: Option<Notice<'a>>,
    /// What a refused form had chosen, shown again.
    pub kind: Option<Kind>,
    pub name: &'a str,
    pub chosen: Option<Protocols>,
}

fn hint(p: Protocol) -> &'static str {
    match p {
        Protocol::Imap => "reading mail",
        Protocol::Pop3 => "downloading mail",
        Protocol::Sieve => "filter rules",
        Protocol::Smtp => "sending mail",
    }
}

pub fn form(f: &DeviceForm<'_>) -> String {
    let mut body = notice(&f.message);
    body.push_str(
        "<section aria-labelledby=\"device-h\">\n<h2 id=\"device-h\">Set up a device</h2>\n",
    );
    if f.usable == Protocols::NONE {
        body.push_str(
            "<p id=\"no-protocols\">Your mailbox may not use any of the servers offered to mail programs here, \
             so no device can be set up. Ask your mail administrator.</p>\n\
             <p><a class=\"button\" href=\"/\">Back</a></p>\n</section>\n",
        );
        return page(
            f.site,
            "Set up a device",
            Some(f.address),
            Some(f.csrf),
            &body,
        );
    }
    let _ = write!(
        body,
        "<p class=\"muted\">The device gets its own app password, for what you tick below. You see it once; revoke it on your mailbox page when the device is gone.</p>\n\
         <form method=\"post\" action=\"/devices\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
         <fieldset>\n<legend>Device</legend>\n",
        esc(f.csrf)
    );
    for k in Kind::ALL {
        let checked = if f.kind == Some(k) { " checked" } else { "" };
        let _ = writeln!(
            body,
            "<label><input type=\"radio\" name=\"kind\" id=\"kind-{0}\" value=\"{0}\" required{checked}> {1}</label>",
            k.name(),
            esc(k.label())
        );
    }
    body.push_str("</fieldset>\n<fieldset>\n<legend>Allowed for</legend>\n");
    for p in f.usable.iter() {
        let checked = match f.chosen {
            Some(chosen) => chosen.contains(p),
            None => matches!(p, Protocol::Imap | Protocol::Smtp),
        };
        let _ = writeln!(
            body,
            "<label><input type=\"checkbox\" name=\"{0}\" id=\"protocol-{0}\" value=\"on\"{1}> {2} <span class=\"muted\">({3})</span></label>",
            p.name(),
            if checked { " checked" } else { "" },
            p.name().to_uppercase(),
            hint(p)
        );
    }
    let _ = write!(
        body,
        "</fieldset>\n<label for=\"name\">Name (optional)</label>\n\
         <input type=\"text\" id=\"name\" name=\"name\" maxlength=\"100\" value=\"{}\" placeholder=\"e.g. Anna’s phone\">\n\
         <label for=\"expires\">Stops working on (optional)</label>\n\
         <input type=\"date\" id=\"expires\" name=\"expires\">\n\
         <p><button type=\"submit\">Set up</button></p>\n</form>\n</section>\n",
        esc(f.name)
    );
    page(
        f.site,
        "Set up a device",
        Some(f.address),
        Some(f.csrf),
        &body,
    )
}

/// The result, with its secret: rendered once.
pub fn done(site: &str, address: &str, csrf: &str, r: &Ready) -> String {
    let secret = String::from_utf8_lossy(r.secret.expose());
    let mut body = String::new();
    let _ = write!(
        body,
        "<section class=\"notice\" aria-labelledby=\"done-h\">\n<h2 id=\"done-h\">“{}” is ready</h2>\n\
         <p>Its app password, for {}. <strong>It is shown only this once</strong>; if you lose it, revoke it and set the device up again.</p>\n\
         <p class=\"secret\" id=\"app-password\" aria-label=\"App password\">{}</p>\n{}</section>\n",
        esc(&r.name),
        esc(&protocol_names(r.protocols)),
        esc(&secret),
        copy_button()
    );
    body.push_str("<section aria-labelledby=\"setup-h\">\n<h2 id=\"setup-h\">Set it up</h2>\n");
    match &r.how {
        How::Apple {
            download,
            signed_by,
        } => {
            let _ = write!(
                body,
                "<p><a class=\"button\" id=\"profile-download\" href=\"/devices/profile/{}\">Download the profile</a></p>\n\
                 <p class=\"muted\">Open this page on the {} itself. The link works once, within 10 minutes; then install the profile in Settings (General → VPN &amp; Device Management on an iPhone). The app password is already inside.</p>\n",
                esc(download),
                esc(Kind::Apple.label())
            );
            match signed_by {
                Some(cn) => {
                    let _ = writeln!(
                        body,
                        "<p id=\"profile-signature\">The profile is signed by {}.</p>",
                        esc(cn)
                    );
                }
                None => body.push_str(
                    "<p id=\"profile-signature\">This profile is not signed: your device will say unverified.</p>\n",
                ),
            }
        }
        How::Android { svg } => {
            // The SVG is made here from the payload, not from anything a visitor sent.
            let _ = write!(
                body,
                "<div id=\"qr-code\" style=\"background:#fff;padding:1rem;display:inline-block;line-height:0\">{svg}</div>\n\
                 <p>Scan with Thunderbird: Add account → Import from QR code.</p>\n"
            );
        }
        How::Other { text } => {
            let _ = writeln!(
                body,
                "<pre id=\"client-settings\" style=\"white-space:pre-wrap;overflow-wrap:anywhere\">{}</pre>",
                esc(text)
            );
        }
    }
    body.push_str("<p><a class=\"button\" href=\"/\">Done</a></p>\n</section>\n");
    page(site, "Device ready", Some(address), Some(csrf), &body)
}

fn gone(site: &str, address: &str, csrf: &str, title: &str, text: &str) -> String {
    let body = format!(
        "<section class=\"problem\" role=\"alert\">\n<h2>{}</h2>\n<p id=\"reason\">{}</p>\n\
         <p><a class=\"button\" href=\"/devices\">Set up a device</a> <a class=\"button\" href=\"/\">Your mailbox</a></p>\n</section>\n",
        esc(title),
        esc(text)
    );
    page(site, title, Some(address), Some(csrf), &body)
}

/// A result page visited again.
pub fn already_shown(site: &str, address: &str, csrf: &str) -> String {
    gone(
        site,
        address,
        csrf,
        "Already shown",
        "This setup was already shown; its password is not shown again. Make a new one if needed.",
    )
}

/// A profile link used again or too late.
pub fn profile_gone(site: &str, address: &str, csrf: &str) -> String {
    gone(
        site,
        address,
        csrf,
        "Link used or expired",
        "This download link works once, within 10 minutes, and is no longer valid. Make a new one if needed: set up the device again.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn form_with(usable: Protocols) -> String {
        form(&DeviceForm {
            site: "Mail",
            address: "a@example.org",
            csrf: "tok",
            usable,
            message: None,
            kind: None,
            name: "<b>",
            chosen: None,
        })
    }

    #[test]
    fn the_form_offers_only_usable_protocols_with_imap_and_smtp_ticked() {
        let html = form_with(Protocols::parse_list("imap,smtp,sieve").unwrap());
        assert!(html.contains("name=\"imap\" id=\"protocol-imap\" value=\"on\" checked"));
        assert!(html.contains("name=\"smtp\" id=\"protocol-smtp\" value=\"on\" checked"));
        assert!(html.contains("name=\"sieve\" id=\"protocol-sieve\" value=\"on\">"));
        assert!(!html.contains("name=\"pop3\""));
        assert!(html.contains("value=\"&lt;b&gt;\""));
        for k in Kind::ALL {
            assert!(html.contains(&format!("value=\"{}\"", k.name())));
        }
        let none = form_with(Protocols::NONE);
        assert!(none.contains("id=\"no-protocols\""));
        assert!(!none.contains("action=\"/devices\""));
    }

    #[test]
    fn the_result_escapes_the_name_and_settings() {
        let html = done(
            "Mail",
            "a@example.org",
            "tok",
            &Ready {
                name: "<script>".into(),
                secret: Secret::from("abcd-efgh"),
                protocols: Protocols::parse_list("imap").unwrap(),
                how: How::Other {
                    text: "Host: <x>".into(),
                },
            },
        );
        assert!(html.contains("“&lt;script&gt;” is ready"));
        assert!(html.contains("Host: &lt;x&gt;"));
        assert!(html.contains(">abcd-efgh<"));
        // The one script is the copy button's; the name's markup is text.
        assert_eq!(html.matches("<script>").count(), 1);
        assert!(html.contains(&crate::web::html::copy_button()));
    }
}
