//! Device setup: what a mail client needs to find and use this server, in the formats
//! clients read — Mozilla autoconfig, Microsoft Autodiscover (POX), an Apple configuration
//! profile, the QR code Thunderbird for Android scans — and the plain settings to type in.
//!
//! Everything here is pure: settings and an account in, bytes out. The web page
//! (`web::devices`) and the CLI (`mailauthd device profile`) create the app password and
//! call these; no socket, no store, no clock is read here, so every format is tested with
//! golden values and parsed back by the tests.
//!
//! The discovery answers (autoconfig, Autodiscover) never carry a secret and never depend
//! on whether a mailbox exists: they are built from the domain and the address as given.

pub mod android;
pub mod apple;
pub mod autoconfig;
pub mod autodiscover;
pub mod manual;
pub mod settings;

pub use settings::{ClientSettings, Security, Server};

use crate::names::{Protocol, Protocols};

/// The account a device is set up for.
#[derive(Clone, Debug)]
pub struct DeviceAccount<'a> {
    /// The mailbox's canonical address: also the user name clients log in with.
    pub address: &'a str,
    /// The person's name for outgoing mail; may be empty.
    pub display_name: &'a str,
    /// The fresh app password, or `None` for a template without a secret.
    pub password: Option<&'a str>,
    /// What the app password may do: only these servers are put in the profile.
    pub protocols: Protocols,
}

/// A device profile that cannot be made for the protocols asked.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SetupError {
    #[error("choose IMAP or POP3: a mail app needs a server to read mail from")]
    NoIncomingServer,
    #[error("no server for {0} is configured for mail clients (see [clients])")]
    NotOffered(crate::names::Protocol),
}

/// Settings and accounts the format tests share.
/// The servers a mail app is set up with, as Apple's and Thunderbird's formats both have
/// it: one incoming server (IMAP when the account may use it, else POP3) and submission,
/// which both formats require even when the account may not send.
pub(crate) struct MailApp<'s, 'a> {
    pub incoming: Protocol,
    pub incoming_server: &'s Server,
    pub outgoing_server: &'s Server,
    /// The password for the incoming server (the account always may use it).
    pub password: Option<&'a str>,
    /// The password for submission, only when the account may send.
    pub outgoing_password: Option<&'a str>,
}

impl<'s, 'a> MailApp<'s, 'a> {
    pub fn choose(
        settings: &'s ClientSettings,
        account: &DeviceAccount<'a>,
    ) -> Result<Self, SetupError> {
        let incoming = [Protocol::Imap, Protocol::Pop3]
            .into_iter()
            .find(|p| account.protocols.contains(*p))
            .ok_or(SetupError::NoIncomingServer)?;
        let server = |p: Protocol| settings.server(p).ok_or(SetupError::NotOffered(p));
        Ok(MailApp {
            incoming,
            incoming_server: server(incoming)?,
            outgoing_server: server(Protocol::Smtp)?,
            password: account.password,
            outgoing_password: account
                .password
                .filter(|_| account.protocols.contains(Protocol::Smtp)),
        })
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::{ClientSettings, DeviceAccount, Security, Server};
    use crate::names::Protocols;

    fn server(host: &str, port: u16, security: Security) -> Option<Server> {
        Some(Server {
            host: host.to_string(),
            port,
            security,
        })
    }

    /// IMAP and POP3 over TLS, submission with STARTTLS, ManageSieve.
    pub fn settings() -> ClientSettings {
        ClientSettings {
            imap: server("imap.example.org", 993, Security::Tls),
            pop3: server("pop.example.org", 995, Security::Tls),
            smtp: server("smtp.example.org", 587, Security::StartTls),
            sieve: server("imap.example.org", 4190, Security::StartTls),
            profile_identifier: "org.example.mail".to_string(),
            profile_signing: None,
        }
    }

    /// The values at `path` among `leaves` (see [`xml_leaves`]).
    pub fn values<'a>(leaves: &'a [(String, String)], path: &str) -> Vec<&'a str> {
        leaves
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn account<'a>(protocols: &str, password: Option<&'a str>) -> DeviceAccount<'a> {
        DeviceAccount {
            address: "jane@example.org",
            display_name: "Jane Doe",
            password,
            protocols: Protocols::parse_list(protocols).unwrap_or_default(),
        }
    }

    /// Reads generated XML back for the tests: every element without children and every
    /// attribute, in document order, as (`a/b/c` or `a/b/@attr`, unescaped text).
    pub fn xml_leaves(xml: &str) -> Vec<(String, String)> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut path: Vec<String> = Vec::new();
        let mut leaves = Vec::new();
        let mut text = String::new();
        let mut had_child = Vec::new();
        loop {
            match reader.read_event().unwrap() {
                Event::Start(e) => {
                    if let Some(last) = had_child.last_mut() {
                        *last = true;
                    }
                    path.push(String::from_utf8(e.name().as_ref().to_vec()).unwrap());
                    for a in e.attributes() {
                        let a = a.unwrap();
                        let key = String::from_utf8(a.key.as_ref().to_vec()).unwrap();
                        let value = a.unescape_value().unwrap().into_owned();
                        leaves.push((format!("{}/@{key}", path.join("/")), value));
                    }
                    had_child.push(false);
                    text.clear();
                }
                Event::Empty(e) => {
                    if let Some(last) = had_child.last_mut() {
                        *last = true;
                    }
                    let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                    let here = format!("{}/{name}", path.join("/"));
                    for a in e.attributes() {
                        let a = a.unwrap();
                        let key = String::from_utf8(a.key.as_ref().to_vec()).unwrap();
                        let value = a.unescape_value().unwrap().into_owned();
                        leaves.push((format!("{here}/@{key}"), value));
                    }
                    leaves.push((here, String::new()));
                }
                Event::Text(t) => text.push_str(&t.unescape().unwrap()),
                Event::End(_) => {
                    if had_child.pop() == Some(false) {
                        leaves.push((path.join("/"), text.clone()));
                    }
                    path.pop();
                    text.clear();
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert!(path.is_empty(), "unclosed elements in {xml}");
        leaves
    }
}
