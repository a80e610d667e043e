//! The `[clients]` config section, checked into [`ClientSettings`]: the servers mail
//! clients connect to, configured once and used by every setup format.
//!
//! Without a `[clients]` section the servers default to `web.mail_host` on the standard
//! ports of RFC 8314 and RFC 5804: IMAP 993 and POP3 995 over TLS, submission 465 over TLS,
//! ManageSieve 4190 with STARTTLS. With no host at all, device setup is off.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::names::{normalize_domain, Protocol, Protocols};
use crate::settings_check::{problem, trimmed, Problem};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsSection {
    host: Option<String>,
    imap: ServerSection,
    pop3: ServerSection,
    smtp: ServerSection,
    sieve: ServerSection,
    profile_identifier: Option<String>,
    profile_certificate: Option<PathBuf>,
    profile_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    enabled: Option<bool>,
    host: Option<String>,
    port: Option<u16>,
    security: Option<String>,
}

/// How a client secures its connection to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (993, 995, 465).
    Tls,
    /// Plain text first, then STARTTLS (143, 110, 587, 4190).
    StartTls,
}

impl Security {
    pub fn name(self) -> &'static str {
        match self {
            Security::Tls => "tls",
            Security::StartTls => "starttls",
        }
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::Tls => "SSL/TLS",
            Security::StartTls => "STARTTLS",
        })
    }
}

/// One server a client connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// An ASCII host name (IDNA applied).
    pub host: String,
    pub port: u16,
    pub security: Security,
}

/// The servers clients use, one per protocol (`None`: not offered to clients), and how
/// Apple profiles are named and signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    pub imap: Option<Server>,
    pub pop3: Option<Server>,
    /// Message submission, for the `smtp` protocol.
    pub smtp: Option<Server>,
    pub sieve: Option<Server>,
    /// The reverse-DNS prefix of Apple profiles' `PayloadIdentifier`s, e.g.
    /// `org.example.mail`; the default is the reversed host name.
    pub profile_identifier: String,
    /// Certificate (PEM, the signer's first, then its chain) and key that sign Apple
    /// profiles; unsigned profiles when absent.
    pub profile_signing: Option<(PathBuf, PathBuf)>,
}

impl ClientSettings {
    /// The server for `protocol`, if clients are told of one.
    pub fn server(&self, protocol: Protocol) -> Option<&Server> {
        match protocol {
            Protocol::Imap => self.imap.as_ref(),
            Protocol::Pop3 => self.pop3.as_ref(),
            Protocol::Smtp => self.smtp.as_ref(),
            Protocol::Sieve => self.sieve.as_ref(),
        }
    }

    /// The protocols of `wanted` that have a server here.
    pub fn offered(&self, wanted: Protocols) -> Protocols {
        wanted
            .iter()
            .filter(|p| self.server(*p).is_some())
            .fold(Protocols::NONE, Protocols::with)
    }
}

fn default_port(protocol: Protocol) -> (u16, Security) {
    match protocol {
        Protocol::Imap => (993, Security::Tls),
        Protocol::Pop3 => (995, Security::Tls),
        Protocol::Smtp => (465, Security::Tls),
        Protocol::Sieve => (4190, Security::StartTls),
    }
}

fn host_name(key: &str, text: &str, problems: &mut Vec<Problem>) -> Option<String> {
    match normalize_domain(text) {
        Ok(host) => Some(host),
        Err(_) => {
            problem(
                problems,
                key,
                format!("{text:?} is not a host name such as mail.example.org"),
            );
            None
        }
    }
}

/// `section` is `[clients]` if the file has one; `mail_host` is `web.mail_host`. `None`
/// when no server has a host: device setup and discovery are off.
pub fn check(
    section: Option<ClientsSection>,
    mail_host: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Option<ClientSettings> {
    let present = section.is_some();
    let section = section.unwrap_or_default();
    let default_host = match trimmed(section.host) {
        Some(text) => host_name("clients.host", &text, problems),
        None => mail_host.and_then(|h| normalize_domain(h).ok()),
    };
    let mut servers = Vec::new();
    for (protocol, s) in [
        (Protocol::Imap, section.imap),
        (Protocol::Pop3, section.pop3),
        (Protocol::Smtp, section.smtp),
        (Protocol::Sieve, section.sieve),
    ] {
        let key = |field: &str| format!("clients.{}.{field}", protocol.name());
        let (port, security) = default_port(protocol);
        let security = match s.security.as_deref().map(str::trim) {
            None => security,
            Some("tls") => Security::Tls,
            Some("starttls") => Security::StartTls,
            Some(other) => {
                problem(
                    problems,
                    &key("security"),
                    format!("{other:?}: use \"tls\" (TLS from the start) or \"starttls\""),
                );
                security
            }
        };
        let port = s.port.unwrap_or(port);
        if port == 0 {
            problem(problems, &key("port"), "must be between 1 and 65535");
        }
        let host = match trimmed(s.host) {
            Some(text) => host_name(&key("host"), &text, problems),
            None => default_host.clone(),
        };
        let server = match (s.enabled.unwrap_or(true), host) {
            (true, Some(host)) => Some(Server {
                host,
                port,
                security,
            }),
            _ => None,
        };
        servers.push(server);
    }
    let [imap, pop3, smtp, sieve]: [Option<Server>; 4] = servers.try_into().ok()?;
    if imap.is_none() && pop3.is_none() && smtp.is_none() && sieve.is_none() {
        if present && !problems.iter().any(|p| p.key == "clients.host") {
            problem(
                problems,
                "clients.host",
                "no server has a host: set clients.host (or web.mail_host)",
            );
        }
        return None;
    }
    let profile_identifier = match trimmed(section.profile_identifier) {
        Some(id) => {
            let valid = id.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !valid {
                problem(
                    problems,
                    "clients.profile_identifier",
                    format!("{id:?} is not a reverse-DNS name such as org.example.mail"),
                );
            }
            id
        }
        None => {
            let host = [&imap, &pop3, &smtp, &sieve]
                .into_iter()
                .flatten()
                .next()
                .map(|s| s.host.as_str())
                .unwrap_or("mailauthd.invalid");
            host.rsplit('.').collect::<Vec<_>>().join(".")
        }
    };
    let profile_signing = match (section.profile_certificate, section.profile_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            problem(
                problems,
                "clients.profile_key",
                "clients.profile_certificate needs the key that goes with it",
            );
            None
        }
        (None, Some(_)) => {
            problem(
                problems,
                "clients.profile_certificate",
                "clients.profile_key needs the certificate that goes with it",
            );
            None
        }
    };
    Some(ClientSettings {
        imap,
        pop3,
        smtp,
        sieve,
        profile_identifier,
        profile_signing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, mail_host: Option<&str>) -> (Option<ClientSettings>, Vec<String>) {
        #[derive(Deserialize)]
        struct File {
            clients: Option<ClientsSection>,
        }
        let file: File = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let settings = check(file.clients, mail_host, &mut problems);
        (settings, problems.into_iter().map(|p| p.key).collect())
    }

    #[test]
    fn defaults_come_from_the_mail_host_on_standard_ports() {
        let (c, problems) = parse("", Some("Mail.Example.org"));
        assert!(problems.is_empty());
        let c = c.unwrap();
        let imap = c.imap.as_ref().unwrap();
        assert_eq!((imap.host.as_str(), imap.port), ("mail.example.org", 993));
        assert_eq!(imap.security, Security::Tls);
        assert_eq!(c.pop3.as_ref().unwrap().port, 995);
        assert_eq!(c.smtp.as_ref().unwrap().port, 465);
        let sieve = c.sieve.as_ref().unwrap();
        assert_eq!((sieve.port, sieve.security), (4190, Security::StartTls));
        assert_eq!(c.profile_identifier, "org.example.mail");
        assert_eq!(c.profile_signing, None);
    }

    #[test]
    fn without_any_host_device_setup_is_off() {
        assert_eq!(parse("", None), (None, vec![]));
        let (c, problems) = parse("[clients]\n", None);
        assert_eq!((c, problems), (None, vec!["clients.host".to_string()]));
    }

    #[test]
    fn each_server_can_be_moved_or_switched_off() {
        let (c, problems) = parse(
            "[clients]\nhost = \"mx.example.net\"\nprofile_identifier = \"net.example\"\n\
             [clients.smtp]\nport = 587\nsecurity = \"starttls\"\n\
             [clients.pop3]\nenabled = false\n[clients.imap]\nhost = \"imap.example.net\"\n",
            Some("ignored.example.org"),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let c = c.unwrap();
        assert_eq!(c.imap.as_ref().unwrap().host, "imap.example.net");
        assert_eq!(c.pop3, None);
        let smtp = c.smtp.as_ref().unwrap();
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.security),
            ("mx.example.net", 587, Security::StartTls)
        );
        assert_eq!(c.profile_identifier, "net.example");
        assert_eq!(
            c.offered(Protocols::ALL),
            Protocols::parse_list("imap,smtp,sieve").unwrap()
        );
    }

    #[test]
    fn bad_values_are_reported_by_key() {
        let (_, problems) = parse(
            "[clients]\nhost = \"not a host\"\n",
            Some("mail.example.org"),
        );
        assert_eq!(problems, ["clients.host"]);
        let (_, problems) = parse(
            "[clients]\nprofile_identifier = \"a..b\"\nprofile_key = \"/k.pem\"\n\
             [clients.imap]\nport = 0\nsecurity = \"ssl\"\n",
            Some("mail.example.org"),
        );
        assert_eq!(
            problems,
            [
                "clients.imap.security",
                "clients.imap.port",
                "clients.profile_identifier",
                "clients.profile_certificate"
            ]
        );
    }
}
