//! The vocabulary every layer shares: canonical addresses and mail protocols.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

const MAX_ADDRESS_LEN: usize = 320;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("{0:?} is not a mail address (expected local@domain)")]
    NotAnAddress(String),
    #[error("{0:?} contains control characters or spaces")]
    BadCharacters(String),
    #[error("{0:?} is too long")]
    TooLong(String),
    #[error("{address:?}: the part before @ {problem}")]
    BadLocalPart {
        address: String,
        problem: &'static str,
    },
    #[error("domain {0:?} is not a valid domain name")]
    BadDomain(String),
    #[error("unknown protocol {0:?}: use imap, pop3, sieve or smtp")]
    UnknownProtocol(String),
}

/// A domain name in lower-case ASCII (IDNA applied), as stored.
pub fn normalize_domain(input: &str) -> Result<String, NameError> {
    let trimmed = input.trim().trim_end_matches('.');
    if trimmed.is_empty()
        || trimmed.len() > 253
        || trimmed.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(NameError::BadDomain(input.to_string()));
    }
    let ascii =
        idna::domain_to_ascii(trimmed).map_err(|_| NameError::BadDomain(input.to_string()))?;
    let valid_labels = ascii.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if !valid_labels || !ascii.contains('.') {
        return Err(NameError::BadDomain(input.to_string()));
    }
    Ok(ascii)
}

/// What is wrong with a local part, or `None` when it may name a mailbox here.
///
/// Only ASCII is accepted, so lower-casing cannot fold two distinct characters together
/// (U+212A KELVIN SIGN lower-cases to `k` under Unicode rules). `/` and the names `.` and
/// `..` are refused because Dovecot and Postfix build directory paths from the local part.
fn local_part_problem(local: &str) -> Option<&'static str> {
    if !local.is_ascii() {
        Some("may only use ASCII characters (no accented letters or look-alike symbols)")
    } else if local.bytes().any(|b| b.is_ascii_control()) {
        Some("may not contain control characters")
    } else if local.contains('/') {
        Some("may not contain /")
    } else if local == "." || local == ".." {
        Some("may not be . or ..")
    } else {
        None
    }
}

/// A mail address in its canonical form: trimmed, local part ASCII lower-case, domain in
/// IDNA ASCII.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Address(String);

impl Address {
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let t = input.trim();
        if t.len() > MAX_ADDRESS_LEN {
            return Err(NameError::TooLong(truncate(t)));
        }
        if t.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(NameError::BadCharacters(t.to_string()));
        }
        let (local, domain) = t
            .rsplit_once('@')
            .ok_or_else(|| NameError::NotAnAddress(t.to_string()))?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(NameError::NotAnAddress(t.to_string()));
        }
        if let Some(problem) = local_part_problem(local) {
            return Err(NameError::BadLocalPart {
                address: t.to_string(),
                problem,
            });
        }
        let domain = normalize_domain(domain)?;
        Ok(Address(format!(
            "{}@{}",
            local.to_ascii_lowercase(),
            domain
        )))
    }

    /// Whether `text` is already an address in canonical form, as the store insists on for
    /// every address it writes.
    pub fn is_canonical(text: &str) -> bool {
        Address::parse(text).is_ok_and(|a| a.0 == text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map(|(l, _)| l).unwrap_or(&self.0)
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect::<String>() + "…"
}

/// The mail protocols a mailbox or an app password may be allowed to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Pop3,
    Sieve,
    Smtp,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::Sieve,
        Protocol::Smtp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Sieve => "sieve",
            Protocol::Smtp => "smtp",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl FromStr for Protocol {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        by_name(&Protocol::ALL, Protocol::name, s)
            .ok_or_else(|| NameError::UnknownProtocol(s.trim().to_string()))
    }
}

/// The one of `all` whose `name` is `text`, ignoring case and surrounding blanks: how the
/// config, the command line and stored columns read a fixed set of names.
pub fn by_name<T: Copy>(all: &[T], name: fn(T) -> &'static str, text: &str) -> Option<T> {
    let text = text.trim();
    all.iter()
        .copied()
        .find(|v| name(*v).eq_ignore_ascii_case(text))
}

display_via!(Protocol, name);

/// A set of protocols, stored as `imap,pop3,sieve,smtp` so a person can read the column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Protocols(u8);

impl Protocols {
    pub const ALL: Protocols = Protocols(0b1111);
    pub const NONE: Protocols = Protocols(0);

    pub fn contains(self, p: Protocol) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn with(self, p: Protocol) -> Self {
        Protocols(self.0 | p.bit())
    }

    pub fn iter(self) -> impl Iterator<Item = Protocol> {
        Protocol::ALL.into_iter().filter(move |p| self.contains(*p))
    }

    /// Parses a comma list; `all` and `none` are accepted for convenience.
    pub fn parse_list(s: &str) -> Result<Self, NameError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => return Ok(Protocols::ALL),
            "none" | "" => return Ok(Protocols::NONE),
            _ => {}
        }
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .try_fold(Protocols::NONE, |set, p| Ok(set.with(p.parse()?)))
    }

    /// Reads the stored column leniently: an unknown word written by a newer version is
    /// ignored rather than locking the mailbox out entirely.
    pub fn from_stored(s: &str) -> Self {
        s.split(',')
            .filter_map(|p| p.parse::<Protocol>().ok())
            .fold(Protocols::NONE, Protocols::with)
    }
}

impl fmt::Display for Protocols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Protocol::name).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for Protocols {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_canonical() {
        let a = Address::parse("  Alice.Smith@Example.ORG ").unwrap();
        assert_eq!(a.as_str(), "alice.smith@example.org");
        assert_eq!(a.local_part(), "alice.smith");
        assert_eq!(a.domain(), "example.org");
        assert_eq!(
            Address::parse("bob@bücher.example").unwrap().domain(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "alice",
            "@example.org",
            "alice@",
            "al ice@example.org",
            "a\0b@example.org",
            "a@b",
            "a@exa_mple.org",
            "a@-x.org",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Address::parse(&"x".repeat(400)),
            Err(NameError::TooLong(_))
        ));
    }

    #[test]
    fn local_parts_are_ascii_and_never_folded() {
        // U+212A KELVIN SIGN lower-cases to "k" under Unicode rules: it must not become
        // kelvin@, and nor may any other non-ASCII local part.
        for bad in [
            "\u{212A}elvin@example.org",
            "\u{212a}ELVIN@EXAMPLE.ORG",
            "müller@example.org",
            "ǅ@example.org",
            "a\u{200B}b@example.org",
            "İnci@example.org",
        ] {
            let e = Address::parse(bad).unwrap_err();
            assert!(
                matches!(e, NameError::BadLocalPart { .. }),
                "{bad:?}: {e:?}"
            );
            assert!(e.to_string().contains("ASCII"), "{e}");
        }
        for (bad, word) in [
            ("a/b@example.org", "/"),
            ("../x@example.org", "/"),
            ("..@example.org", ".."),
            (".@example.org", ".."),
            ("a\u{7f}b@example.org", "control"),
        ] {
            let e = Address::parse(bad).unwrap_err();
            assert!(e.to_string().contains(word), "{bad:?}: {e}");
        }
        assert!(Address::parse("a\0b@example.org").is_err());
        // ASCII lower-casing only, and the domain still goes through IDNA.
        assert_eq!(
            Address::parse("KELVIN@B\u{DC}CHER.example")
                .unwrap()
                .as_str(),
            "kelvin@xn--bcher-kva.example"
        );
        assert_eq!(
            Address::parse("o'Brien+Tag!#$%&*=?^_`{|}~-x@example.org")
                .unwrap()
                .as_str(),
            "o'brien+tag!#$%&*=?^_`{|}~-x@example.org"
        );
        assert!(Address::is_canonical("kelvin@example.org"));
        assert!(!Address::is_canonical("Kelvin@example.org"));
        assert!(!Address::is_canonical("\u{212A}elvin@example.org"));
        assert!(!Address::is_canonical(" kelvin@example.org"));
    }

    #[test]
    fn protocol_lists() {
        let p = Protocols::parse_list("IMAP, smtp").unwrap();
        assert!(
            p.contains(Protocol::Imap) && p.contains(Protocol::Smtp) && !p.contains(Protocol::Pop3)
        );
        assert_eq!(p.to_string(), "imap,smtp");
        assert_eq!(Protocols::from_stored(&p.to_string()), p);
        assert_eq!(Protocols::parse_list("all").unwrap(), Protocols::ALL);
        assert_eq!(
            Protocols::parse_list("imap,ftp"),
            Err(NameError::UnknownProtocol("ftp".into()))
        );
    }
}
