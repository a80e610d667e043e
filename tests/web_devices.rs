//! Device setup and mail client discovery over real HTTP on an ephemeral port: autoconfig
//! and Autodiscover answers read back field by field (and the same whether the mailbox
//! exists), hostile Autodiscover bodies, and the device page — one app password per setup,
//! shown once, its result and profile download bound to the mailbox and used once.
//! (With a real browser, Dovecot and a QR decoder: tests/e2e/oidc/run.sh.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use mailauthd::clock::{Clock, ManualClock, SystemClock};
use mailauthd::names::Protocols;
use mailauthd::runtime::Core;
use mailauthd::store::{AppPasswords, AuthSource};
use quick_xml::events::Event;
use reqwest::header::COOKIE;
use reqwest::StatusCode;

const PASSWORD: &str = "device-password-1";
/// Device setup on: every server at mail.example.org on its standard port, but no
/// ManageSieve for clients.
const CLIENTS: &str = "[clients]\nhost = \"mail.example.org\"\n[clients.sieve]\nenabled = false\n";

#[path = "common/web_site.rs"]
mod web_site;

use web_site::{start_site_with_clock, Page, Site, TestMailbox};

/// What the device tests do on the page, beyond what every page test does.
trait DeviceSite {
    /// Signs in with the password form; the session cookie.
    async fn sign_in(&self, address: &str) -> String;
    /// Posts the device form from a fresh GET of it.
    async fn set_up(&self, cookie: &str, fields: &[(&str, &str)]) -> Page;
}

impl DeviceSite for Site {
    async fn sign_in(&self, address: &str) -> String {
        let r = self.sign_in_form(address, PASSWORD, None).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        r.cookie.unwrap()
    }

    async fn set_up(&self, cookie: &str, fields: &[(&str, &str)]) -> Page {
        let form = self.get("/devices", Some(cookie)).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let csrf = form.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post("/devices", Some(cookie), &all).await
    }
}

/// A web page with `top` added to the config (e.g. `[clients]`), and mailboxes alice
/// (imap, smtp), mallory (imap, pop3, smtp) and sieveonly (sieve) at example.org.
async fn start_with(top: &str) -> (Site, Core, tempfile::TempDir) {
    start_on_clock(top, Arc::new(SystemClock)).await
}

async fn start_on_clock(top: &str, clock: Arc<dyn Clock>) -> (Site, Core, tempfile::TempDir) {
    let mailbox = |address, protocols| TestMailbox {
        address,
        protocols,
        source: AuthSource::Local,
        display_name: "Alice <A&B>",
        password: PASSWORD,
    };
    start_site_with_clock(
        top,
        "",
        &[
            mailbox("alice@example.org", "imap,smtp"),
            mailbox("mallory@example.org", "imap,pop3,smtp"),
            mailbox("sieveonly@example.org", "sieve"),
        ],
        clock,
    )
    .await
}

/// Each element named `name`: its attributes (`@attr`) and its children's text.
fn elements(xml: &str, name: &str) -> Vec<HashMap<String, String>> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut found = Vec::new();
    let mut current: Option<HashMap<String, String>> = None;
    let mut child = String::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => {
                let local = String::from_utf8(e.local_name().as_ref().to_vec()).unwrap();
                if local == name {
                    let mut fields = HashMap::new();
                    for a in e.attributes() {
                        let a = a.unwrap();
                        fields.insert(
                            format!("@{}", String::from_utf8_lossy(a.key.as_ref())),
                            a.unescape_value().unwrap().into_owned(),
                        );
                    }
                    current = Some(fields);
                } else {
                    child = local;
                }
            }
            Event::Text(t) => {
                if let Some(fields) = current.as_mut() {
                    fields.insert(child.clone(), t.unescape().unwrap().into_owned());
                }
            }
            Event::End(e) if e.local_name().as_ref() == name.as_bytes() => {
                found.extend(current.take());
            }
            Event::Eof => break,
            _ => {}
        }
    }
    found
}

fn field<'a>(element: &'a HashMap<String, String>, name: &str) -> &'a str {
    element
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {name} in {element:?}"))
}

fn autodiscover_request(address: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\">\n<Request>\n<EMailAddress>{address}</EMailAddress>\n<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>\n</Request>\n</Autodiscover>\n"
    )
    .into_bytes()
}

/// Whether an Autodiscover answer is its error document (code 600, invalid request).
fn is_invalid_request(p: &Page) -> bool {
    p.status == StatusCode::OK && elements(&p.body, "Error").len() == 1 && p.body.contains("600")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoconfig_answers_from_the_domain_alone() {
    let (site, _core, _dir) = start_with(CLIENTS).await;
    let path = "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=";
    let real = site.get(&format!("{path}alice%40example.org"), None).await;
    assert_eq!(real.status, StatusCode::OK, "{}", real.body);
    assert_eq!(
        real.header("content-type"),
        "application/xml; charset=utf-8"
    );
    let incoming = elements(&real.body, "incomingServer");
    assert_eq!(incoming.len(), 2, "IMAP and POP3: {}", real.body);
    let imap = &incoming[0];
    assert_eq!(field(imap, "@type"), "imap");
    assert_eq!(field(imap, "hostname"), "mail.example.org");
    assert_eq!(field(imap, "port"), "993");
    assert_eq!(field(imap, "socketType"), "SSL");
    assert_eq!(field(imap, "username"), "%EMAILADDRESS%");
    assert_eq!(field(&incoming[1], "@type"), "pop3");
    assert_eq!(field(&incoming[1], "port"), "995");
    let outgoing = elements(&real.body, "outgoingServer");
    assert_eq!(outgoing.len(), 1);
    assert_eq!(field(&outgoing[0], "@type"), "smtp");
    assert_eq!(field(&outgoing[0], "hostname"), "mail.example.org");
    assert_eq!(field(&outgoing[0], "port"), "465");
    assert_eq!(field(&outgoing[0], "socketType"), "SSL");
    assert_eq!(field(&outgoing[0], "username"), "%EMAILADDRESS%");
    let provider = elements(&real.body, "emailProvider");
    assert_eq!(field(&provider[0], "domain"), "example.org");
    assert_eq!(field(&provider[0], "displayName"), "Test Mail");

    // A mailbox that does not exist gets the very same bytes.
    let ghost = site
        .get(&format!("{path}nobody-here%40example.org"), None)
        .await;
    assert_eq!(ghost.status, StatusCode::OK);
    assert_eq!(ghost.body, real.body);
    // The second path, and the domain from the autoconfig.<domain> host.
    let isp = site
        .get(
            "/mail/config-v1.1.xml?emailaddress=Alice%40Example.org",
            None,
        )
        .await;
    assert_eq!(isp.body, real.body);
    let by_host = site
        .get_with_host("/mail/config-v1.1.xml", "autoconfig.example.org")
        .await;
    assert_eq!(by_host.status, StatusCode::OK);
    assert_eq!(by_host.body, real.body);

    // Domains not served here, no domain at all, a malformed address: 404.
    for path in [
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a%40elsewhere.example",
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=not-an-address",
        "/.well-known/autoconfig/mail/config-v1.1.xml",
    ] {
        let r = site.get(path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    let other = site
        .get_with_host("/mail/config-v1.1.xml", "autoconfig.elsewhere.example")
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_answers_any_case_and_tells_nothing_about_mailboxes() {
    let (site, _core, _dir) = start_with(CLIENTS).await;
    let real = site
        .post_body(
            "/autodiscover/autodiscover.xml",
            autodiscover_request("alice@example.org"),
        )
        .await;
    assert_eq!(real.status, StatusCode::OK, "{}", real.body);
    assert_eq!(
        real.header("content-type"),
        "application/xml; charset=utf-8"
    );
    let protocols = elements(&real.body, "Protocol");
    let by_type = |t: &str| {
        protocols
            .iter()
            .find(|p| p.get("Type").map(String::as_str) == Some(t))
            .unwrap_or_else(|| panic!("no {t} in {}", real.body))
    };
    let imap = by_type("IMAP");
    assert_eq!(field(imap, "Server"), "mail.example.org");
    assert_eq!(field(imap, "Port"), "993");
    assert_eq!(field(imap, "SSL"), "on");
    assert_eq!(field(imap, "LoginName"), "alice@example.org");
    let smtp = by_type("SMTP");
    assert_eq!(field(smtp, "Server"), "mail.example.org");
    assert_eq!(field(smtp, "Port"), "465");
    assert_eq!(field(smtp, "LoginName"), "alice@example.org");

    // A mailbox that does not exist: the same answer but for the address it asked about.
    let ghost = site
        .post_body(
            "/autodiscover/autodiscover.xml",
            autodiscover_request("Ghost@Example.org"),
        )
        .await;
    assert_eq!(ghost.status, StatusCode::OK);
    assert_eq!(
        ghost.body,
        real.body.replace("alice@example.org", "ghost@example.org")
    );

    // The path in Outlook's case, or any other; GET with the address in the query.
    for path in [
        "/Autodiscover/Autodiscover.xml",
        "/AUTODISCOVER/autodiscover.XML",
    ] {
        let r = site
            .post_body(path, autodiscover_request("alice@example.org"))
            .await;
        assert_eq!((r.status, &r.body), (StatusCode::OK, &real.body), "{path}");
    }
    let get = site
        .get(
            "/autodiscover/autodiscover.xml?emailaddress=alice%40example.org",
            None,
        )
        .await;
    assert_eq!(get.body, real.body);

    // A domain served elsewhere: 404, so the client moves on.
    let elsewhere = site
        .post_body(
            "/autodiscover/autodiscover.xml",
            autodiscover_request("a@elsewhere.example"),
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);

    // No address, a malformed one, a body that is not XML, entities: the error document.
    let no_address = site.get("/autodiscover/autodiscover.xml", None).await;
    assert!(is_invalid_request(&no_address), "{}", no_address.body);
    let empty = site
        .post_body(
            "/Autodiscover/Autodiscover.xml",
            b"<Autodiscover><Request></Request></Autodiscover>".to_vec(),
        )
        .await;
    assert!(is_invalid_request(&empty), "{}", empty.body);
    for body in [
        autodiscover_request("not an address"),
        autodiscover_request("@example.org"),
        b"<<<not xml".to_vec(),
        b"".to_vec(),
        b"<?xml version=\"1.0\"?>\n<!DOCTYPE a [<!ENTITY x \"alice@example.org\">]>\n<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>".to_vec(),
    ] {
        let r = site.post_body("/autodiscover/autodiscover.xml", body.clone()).await;
        assert!(
            is_invalid_request(&r),
            "{}: {} {}",
            String::from_utf8_lossy(&body),
            r.status,
            r.body
        );
    }
    // Beyond the body limit: 413, before any parsing.
    let mut big = autodiscover_request("alice@example.org");
    big.extend(std::iter::repeat_n(b' ', 20 * 1024));
    let r = site.post_body("/autodiscover/autodiscover.xml", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_clients_discovery_and_device_setup_are_off() {
    let (site, _core, _dir) = start_with("").await;
    let cookie = site.sign_in("alice@example.org").await;
    let home = site.get("/", Some(&cookie)).await;
    assert!(home.body.contains("mailbox-address"));
    assert!(!home.body.contains("href=\"/devices\""));
    for path in [
        "/devices",
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.org",
        "/mail/config-v1.1.xml?emailaddress=alice%40example.org",
        "/autodiscover/autodiscover.xml?emailaddress=alice%40example.org",
    ] {
        let r = site.get(path, Some(&cookie)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    let r = site
        .post_body(
            "/Autodiscover/Autodiscover.xml",
            autodiscover_request("alice@example.org"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn app_password_names(core: &Core, mailbox: &str) -> Vec<String> {
    core.store
        .list_app_passwords(mailbox)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect()
}

/// The result URL a device form's 303 points to.
fn done_path(r: &Page) -> String {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let to = r.location.clone().unwrap();
    assert!(to.starts_with("/devices/done/"), "{to}");
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_sent_many_times_at_once_gives_each_app_password_its_own_name() {
    let (site, core, _dir) = start_with(CLIENTS).await;
    let alice = site.sign_in("alice@example.org").await;
    let form = site.get("/devices", Some(&alice)).await;
    let csrf = form.csrf();
    let site = Arc::new(site);
    let mut sent = Vec::new();
    for _ in 0..8 {
        let (site, alice, csrf) = (site.clone(), alice.clone(), csrf.clone());
        sent.push(tokio::spawn(async move {
            let fields = [
                ("csrf", csrf.as_str()),
                ("kind", "other"),
                ("name", "Laptop"),
                ("imap", "on"),
            ];
            site.post("/devices", Some(&alice), &fields).await.status
        }));
    }
    for s in sent {
        assert_eq!(s.await.unwrap(), StatusCode::SEE_OTHER);
    }
    let mut names = app_password_names(&core, "alice@example.org").await;
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&"Laptop".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_program_gets_its_settings_and_its_password_once() {
    let (site, core, _dir) = start_with(CLIENTS).await;
    let cookie = site.sign_in("alice@example.org").await;
    let home = site.get("/", Some(&cookie)).await;
    assert!(home.body.contains("href=\"/devices\""));

    // Only what alice may use and clients are told of; IMAP and SMTP ticked.
    let form = site.get("/devices", Some(&cookie)).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form
        .body
        .contains("name=\"imap\" id=\"protocol-imap\" value=\"on\" checked"));
    assert!(form
        .body
        .contains("name=\"smtp\" id=\"protocol-smtp\" value=\"on\" checked"));
    assert!(!form.body.contains("name=\"pop3\""));
    assert!(!form.body.contains("name=\"sieve\""));
    for label in [
        "iPhone, iPad or Mac",
        "Android (Thunderbird)",
        "Another mail program",
    ] {
        assert!(form.body.contains(label), "{label}");
    }

    let r = site
        .set_up(
            &cookie,
            &[("kind", "other"), ("imap", "on"), ("smtp", "on")],
        )
        .await;
    let done = done_path(&r);
    assert_eq!(
        app_password_names(&core, "alice@example.org").await,
        ["Mail program"]
    );
    let first = site.get(&done, Some(&cookie)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.header("cache-control"), "no-store");
    let secret = first.by_id("app-password").unwrap();
    assert!(secret.len() >= 16, "{secret}");
    let settings = first.by_id("client-settings").unwrap();
    assert!(settings.contains("mail.example.org"), "{settings}");
    assert!(
        settings.contains(&secret),
        "the settings carry the password: {settings}"
    );

    // Reloading shows no secret and makes nothing.
    for _ in 0..2 {
        let again = site.get(&done, Some(&cookie)).await;
        assert_eq!(again.status, StatusCode::GONE);
        assert!(!again.body.contains(&secret));
        assert!(again
            .body
            .contains("This setup was already shown; its password is not shown again. Make a new one if needed."));
    }
    assert_eq!(
        app_password_names(&core, "alice@example.org").await.len(),
        1
    );

    // The next one of the same kind is numbered; a typed name is kept (numbered if taken).
    let r = site
        .set_up(&cookie, &[("kind", "other"), ("imap", "on")])
        .await;
    done_path(&r);
    let r = site
        .set_up(
            &cookie,
            &[("kind", "other"), ("imap", "on"), ("name", "<Laptop>")],
        )
        .await;
    done_path(&r);
    let r = site
        .set_up(
            &cookie,
            &[("kind", "other"), ("imap", "on"), ("name", "<Laptop>")],
        )
        .await;
    let typed = site.get(&done_path(&r), Some(&cookie)).await;
    assert!(
        typed.body.contains("“&lt;Laptop&gt; (2)” is ready"),
        "{}",
        typed.body
    );
    let mut names = app_password_names(&core, "alice@example.org").await;
    names.sort();
    assert_eq!(
        names,
        [
            "<Laptop>",
            "<Laptop> (2)",
            "Mail program",
            "Mail program (2)"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apple_profile_downloads_once_for_its_mailbox_only() {
    let (site, core, _dir) = start_with(CLIENTS).await;
    let alice = site.sign_in("alice@example.org").await;
    let mallory = site.sign_in("mallory@example.org").await;
    let r = site
        .set_up(&alice, &[("kind", "apple"), ("imap", "on"), ("smtp", "on")])
        .await;
    let done = done_path(&r);

    // Another mailbox finds nothing there, and does not use it up.
    let stolen = site.get(&done, Some(&mallory)).await;
    assert_eq!(stolen.status, StatusCode::NOT_FOUND);
    let anonymous = site.get(&done, None).await;
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN);

    let first = site.get(&done, Some(&alice)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let secret = first.by_id("app-password").unwrap();
    assert!(first
        .body
        .contains("This profile is not signed: your device will say unverified."));
    let at = first.body.find("href=\"/devices/profile/").unwrap() + 6;
    let link = first.body[at..at + first.body[at..].find('"').unwrap()].to_string();
    assert_eq!(
        app_password_names(&core, "alice@example.org").await,
        ["iPhone / iPad / Mac"]
    );

    let stolen = site.get(&link, Some(&mallory)).await;
    assert_eq!(stolen.status, StatusCode::GONE);
    let profile = site.get(&link, Some(&alice)).await;
    assert_eq!(profile.status, StatusCode::OK);
    assert_eq!(
        profile.header("content-type"),
        "application/x-apple-aspen-config"
    );
    let disposition = profile.header("content-disposition");
    assert!(
        disposition.starts_with("attachment; filename=\"")
            && disposition.ends_with(".mobileconfig\""),
        "{disposition}"
    );
    assert_eq!(profile.header("cache-control"), "no-store");
    let plist = &profile.body;
    assert!(plist.contains("<key>IncomingPassword</key>"), "{plist}");
    assert!(plist.contains(&format!("<string>{secret}</string>")));
    assert!(plist.contains("<string>mail.example.org</string>"));
    assert!(plist.contains("<string>alice@example.org</string>"));

    // Used once: gone, with a page that says what to do.
    let again = site.get(&link, Some(&alice)).await;
    assert_eq!(again.status, StatusCode::GONE);
    assert!(again.body.contains("Make a new one"));
    assert!(!again.body.contains(&secret));
    let reload = site.get(&done, Some(&alice)).await;
    assert_eq!(reload.status, StatusCode::GONE);
    assert!(!reload.body.contains(&secret));
    assert_eq!(
        app_password_names(&core, "alice@example.org").await.len(),
        1
    );
    let r = site
        .set_up(&alice, &[("kind", "apple"), ("imap", "on")])
        .await;
    done_path(&r);
    assert!(app_password_names(&core, "alice@example.org")
        .await
        .contains(&"iPhone / iPad / Mac (2)".to_string()));
}

/// The result page's download link, with the result page's secret.
fn profile_link(done: &Page) -> (String, String) {
    let secret = done.by_id("app-password").unwrap();
    let at = done.body.find("href=\"/devices/profile/").unwrap() + 6;
    let link = done.body[at..at + done.body[at..].find('"').unwrap()].to_string();
    (link, secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_link_expires_ten_minutes_after_its_page_is_shown() {
    let clock = Arc::new(ManualClock::at(SystemClock.now()));
    let (site, _core, _dir) = start_on_clock(CLIENTS, clock.clone()).await;
    let alice = site.sign_in("alice@example.org").await;
    let apple = [("kind", "apple"), ("imap", "on"), ("smtp", "on")];

    // Shown at once, fetched after eleven minutes: expired, and the page says what to do.
    let shown = site
        .get(&done_path(&site.set_up(&alice, &apple).await), Some(&alice))
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    let (link, secret) = profile_link(&shown);
    clock.advance(11 * 60);
    let late = site.get(&link, Some(&alice)).await;
    assert_eq!(late.status, StatusCode::GONE, "{}", late.body);
    assert!(late.body.contains("Make a new one"), "{}", late.body);
    assert!(!late.body.contains(&secret));
    assert!(!late.body.contains("IncomingPassword"));

    // A result page opened twenty minutes after the setup still has a link with its full
    // ten minutes.
    let done = done_path(&site.set_up(&alice, &apple).await);
    clock.advance(20 * 60);
    let shown = site.get(&done, Some(&alice)).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    let (link, secret) = profile_link(&shown);
    clock.advance(9 * 60);
    let profile = site.get(&link, Some(&alice)).await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.body);
    assert!(profile.body.contains(&format!("<string>{secret}</string>")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_gets_a_qr_code() {
    let (site, core, _dir) = start_with(CLIENTS).await;
    let cookie = site.sign_in("mallory@example.org").await;
    let r = site
        .set_up(
            &cookie,
            &[("kind", "android"), ("pop3", "on"), ("smtp", "on")],
        )
        .await;
    let done = done_path(&r);
    let first = site.get(&done, Some(&cookie)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let secret = first.by_id("app-password").unwrap();
    assert!(first.body.contains("<svg"));
    assert!(first
        .body
        .contains("Scan with Thunderbird: Add account → Import from QR code"));
    let apps = core
        .store
        .list_app_passwords("mallory@example.org")
        .await
        .unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].name, "Android");
    assert_eq!(
        apps[0].protocols,
        Protocols::parse_list("pop3,smtp").unwrap()
    );
    let again = site.get(&done, Some(&cookie)).await;
    assert!(!again.body.contains(&secret) && !again.body.contains("<svg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choices_the_mailbox_or_the_servers_do_not_allow_are_refused() {
    let (site, core, _dir) = start_with(CLIENTS).await;
    let alice = site.sign_in("alice@example.org").await;
    for (fields, why) in [
        (
            vec![("kind", "other"), ("pop3", "on")],
            "POP3 is not offered",
        ),
        (
            vec![("kind", "other"), ("sieve", "on")],
            "SIEVE is not offered",
        ),
        (vec![("kind", "other")], "at least one protocol"),
        (vec![("kind", "fax"), ("imap", "on")], "kind of device"),
        (vec![("kind", "apple"), ("smtp", "on")], "IMAP or POP3"),
        (
            vec![("kind", "other"), ("imap", "on"), ("expires", "soon")],
            "not a date",
        ),
    ] {
        let r = site.set_up(&alice, &fields).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{fields:?}");
        assert!(r.body.contains(why), "{fields:?}: {}", r.body);
    }
    assert!(app_password_names(&core, "alice@example.org")
        .await
        .is_empty());

    // Without the CSRF token, or signed out: nothing.
    let r = site
        .post(
            "/devices",
            Some(&alice),
            &[("kind", "other"), ("imap", "on")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = site.post("/devices", None, &[("kind", "other")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        site.get("/devices", None).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(app_password_names(&core, "alice@example.org")
        .await
        .is_empty());

    // A mailbox that may use none of the servers offered: told so, no form.
    let sieve = site.sign_in("sieveonly@example.org").await;
    let form = site.get("/devices", Some(&sieve)).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("id=\"no-protocols\""));
    assert!(!form.body.contains("action=\"/devices\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_certificate_that_cannot_be_loaded_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_directory = {:?}\nruntime_directory = {:?}\n\
         [clients]\nhost = \"mail.example.org\"\n\
         profile_certificate = \"/nonexistent/cert.pem\"\nprofile_key = \"/nonexistent/key.pem\"\n\
         [web]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("state"),
        dir.path().join("run"),
    );
    let config = mailauthd::config::parse(&text).unwrap();
    let core = Core::start(&config).await.unwrap();
    let err = mailauthd::web::state(
        config.web.clone().unwrap(),
        None,
        &config.metrics,
        config.clients.clone(),
        core.store.clone(),
        core.auth.clone(),
        Arc::new(SystemClock),
    )
    .err()
    .expect("a start-up error");
    let text = err.to_string();
    assert!(text.contains("clients.profile_certificate"), "{text}");
    assert!(text.contains("/nonexistent/cert.pem"), "{text}");
}

/// A self-signed certificate and its key, as PEM files in `dir`.
fn signing_files(dir: &std::path::Path, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut cert = x509::X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let (cert_path, key_path) = (dir.join("profile.crt"), dir.join("profile.key"));
    std::fs::write(&cert_path, cert.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_profile_names_its_signer_and_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let (cert, key) = signing_files(keys.path(), "Example <Profiles>");
    let (site, _core, _dir) = start_with(&format!(
        "[clients]\nhost = \"mail.example.org\"\nprofile_certificate = {cert:?}\nprofile_key = {key:?}\n"
    ))
    .await;
    let alice = site.sign_in("alice@example.org").await;
    let r = site
        .set_up(&alice, &[("kind", "apple"), ("imap", "on")])
        .await;
    let first = site.get(&done_path(&r), Some(&alice)).await;
    assert!(
        first
            .body
            .contains("The profile is signed by Example &lt;Profiles&gt;."),
        "{}",
        first.body
    );
    let secret = first.by_id("app-password").unwrap();
    let at = first.body.find("href=\"/devices/profile/").unwrap() + 6;
    let link = first.body[at..at + first.body[at..].find('"').unwrap()].to_string();
    let download = site
        .http
        .get(format!("{}{link}", site.base))
        .header(COOKIE, &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let der = download.bytes().await.unwrap();
    // CMS SignedData with the profile inside; its signature checks against the certificate.
    let signed = openssl::pkcs7::Pkcs7::from_der(&der).unwrap();
    let cert =
        openssl::x509::X509::from_pem(&std::fs::read(keys.path().join("profile.crt")).unwrap())
            .unwrap();
    let mut certs = openssl::stack::Stack::new().unwrap();
    certs.push(cert).unwrap();
    let store = openssl::x509::store::X509StoreBuilder::new()
        .unwrap()
        .build();
    let mut inner = Vec::new();
    signed
        .verify(
            &certs,
            &store,
            None,
            Some(&mut inner),
            openssl::pkcs7::Pkcs7Flags::NOVERIFY,
        )
        .unwrap();
    let plist = String::from_utf8(inner).unwrap();
    assert!(
        plist.contains(&format!("<string>{secret}</string>")),
        "{plist}"
    );
}

/// A store that fails mid-way (here its domains table is gone under the daemon): discovery
/// answers 503, which clients retry, never a 404 that sends them elsewhere or a document.
#[tokio::test]
async fn discovery_with_the_store_failing_answers_try_again() {
    let (site, _core, dir) = start_with(CLIENTS).await;
    let ok = site
        .get(
            "/mail/config-v1.1.xml?emailaddress=alice%40example.org",
            None,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let db = rusqlite::Connection::open(dir.path().join("state").join("mailauthd.db")).unwrap();
    db.execute_batch("ALTER TABLE domains RENAME TO domains_gone;")
        .unwrap();
    let autoconfig = site
        .get(
            "/mail/config-v1.1.xml?emailaddress=alice%40example.org",
            None,
        )
        .await;
    assert_eq!(
        autoconfig.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        autoconfig.body
    );
    assert!(!autoconfig.body.contains("incomingServer"));
    let request = b"<Autodiscover><Request><EMailAddress>alice@example.org</EMailAddress></Request></Autodiscover>";
    let autodiscover = site
        .post_body("/autodiscover/autodiscover.xml", request.to_vec())
        .await;
    assert_eq!(
        autodiscover.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        autodiscover.body
    );
    assert!(!autodiscover.body.contains("<Protocol>"));
}
