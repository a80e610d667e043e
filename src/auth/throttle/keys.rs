//! Who failures are counted against ([`ThrottleKey`]), how a refused secret is recognised
//! without keeping it ([`Fingerprinter`]), and what a postmaster lists and clears.

use std::fmt;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Serialize, Serializer};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::audit::canonical_ip;
use crate::auth::app_password::AppPasswordKey;
use crate::clock::UnixMillis;
use crate::names::Address;

/// Login names come from the network; a key never holds more than an address can be.
const MAX_ACCOUNT_KEY_BYTES: usize = 320;

/// Who failures are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThrottleKey {
    /// An IPv4 /32 or an IPv6 /64: one customer's prefix, whatever address it picks.
    Network(IpNet),
    /// A canonical address, or the bounded login text when it is not an address.
    Account(String),
}

impl ThrottleKey {
    pub fn network_of(ip: IpAddr) -> ThrottleKey {
        ThrottleKey::Network(match canonical_ip(ip) {
            IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new_assert(v4, 32)),
            IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new_assert(v6, 64).trunc()),
        })
    }

    pub fn account(name: &str) -> ThrottleKey {
        let name = name.trim();
        let mut end = name.len().min(MAX_ACCOUNT_KEY_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        ThrottleKey::Account(name[..end].to_string())
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            ThrottleKey::Network(_) => KeyKind::Network,
            ThrottleKey::Account(_) => KeyKind::Account,
        }
    }
}

impl fmt::Display for ThrottleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThrottleKey::Network(net) => write!(f, "{net}"),
            ThrottleKey::Account(name) => f.write_str(name),
        }
    }
}

impl Serialize for ThrottleKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Network,
    Account,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Network => "network",
            KeyKind::Account => "account",
        }
    }
}

/// One line of `mailauthd throttle list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockInfo {
    pub key: ThrottleKey,
    pub kind: KeyKind,
    /// Failures counted within the window (repeats of one secret count once).
    pub failures: u32,
    pub blocked_until: Option<UnixMillis>,
}

/// Keyed hashes of refused secrets, so a repeat can be recognised without keeping the
/// secret. In memory the key is random per process: the fingerprints mean nothing outside
/// it and cannot be tested against a password list. Daemons sharing state in Redis must
/// agree on the key, so there it comes from the site's key file ([`Fingerprinter::for_site`]).
#[derive(Clone)]
pub struct Fingerprinter {
    /// The HMAC keyed and fed the label once, cloned for every fingerprint.
    keyed: Option<Hmac<Sha256>>,
}

/// Separates the fingerprint key from every other use of the site key.
const SITE_FINGERPRINT_LABEL: &[u8] = b"mailauthd throttle fingerprint key v1";

impl Fingerprinter {
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut())?;
        Ok(Fingerprinter::keyed(&key))
    }

    fn keyed(key: &[u8; 32]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail; `fingerprint` answers 0
        // rather than panic if that ever changes.
        let keyed = Hmac::<Sha256>::new_from_slice(key).ok().map(|mut mac| {
            mac.update(b"mailauthd throttle v1\0");
            mac
        });
        Fingerprinter { keyed }
    }

    /// The same key on every daemon that shares the key file, so a stale client's one old
    /// password counts once for the whole site, not once per daemon it happens to reach.
    /// Derived under its own label: a fingerprint in Redis reveals nothing about app
    /// password hashes, and a Redis dump alone cannot test guesses against it.
    pub fn for_site(site_key: &AppPasswordKey) -> Self {
        Fingerprinter::keyed(&site_key.derive(SITE_FINGERPRINT_LABEL))
    }

    /// A fixed key, for tests that want repeatable fingerprints.
    pub fn with_key(key: [u8; 32]) -> Self {
        Fingerprinter::keyed(&Zeroizing::new(key))
    }

    /// The account is part of the input: one password sprayed across many accounts from
    /// one network is many guesses, not one stale client repeating itself.
    pub fn fingerprint(&self, account: &str, secret: &[u8]) -> u64 {
        let Some(mut mac) = self.keyed.clone() else {
            return 0;
        };
        mac.update(&(account.len() as u64).to_be_bytes());
        mac.update(account.as_bytes());
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter([redacted])")
    }
}

/// What `clear` removes: every key, the networks inside or around one, or one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    Networks(IpNet),
    Account(String),
}

impl Filter {
    /// `filter` as `mailauthd throttle clear` takes it: a network (`192.0.2.0/24`), an
    /// address (its /32 or /64), or an account; `None` for everything. `None` back for
    /// text that can name nothing tracked.
    pub fn parse(filter: Option<&str>) -> Option<Filter> {
        let Some(text) = filter.map(str::trim) else {
            return Some(Filter::All);
        };
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(Filter::Networks(net.trunc()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return match ThrottleKey::network_of(ip) {
                ThrottleKey::Network(net) => Some(Filter::Networks(net)),
                ThrottleKey::Account(_) => None,
            };
        }
        let name = Address::parse(text)
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|_| text.to_string());
        match ThrottleKey::account(&name) {
            ThrottleKey::Account(name) => Some(Filter::Account(name)),
            ThrottleKey::Network(_) => None,
        }
    }

    pub fn matches(&self, key: &ThrottleKey) -> bool {
        match (self, key) {
            (Filter::All, _) => true,
            (Filter::Networks(filter), ThrottleKey::Network(net)) => {
                filter.contains(net) || net.contains(filter)
            }
            (Filter::Account(filter), ThrottleKey::Account(name)) => filter == name,
            (Filter::Networks(_), ThrottleKey::Account(_))
            | (Filter::Account(_), ThrottleKey::Network(_)) => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_keyed_and_bind_the_account() {
        let a = Fingerprinter::with_key([1; 32]);
        let b = Fingerprinter::with_key([2; 32]);
        assert_eq!(
            a.fingerprint("x@example.org", b"pw"),
            a.fingerprint("x@example.org", b"pw")
        );
        assert_ne!(
            a.fingerprint("x@example.org", b"pw"),
            b.fingerprint("x@example.org", b"pw")
        );
        assert_ne!(
            a.fingerprint("x@example.org", b"pw"),
            a.fingerprint("y@example.org", b"pw")
        );
        // The length prefix keeps the account/secret boundary unambiguous.
        assert_ne!(a.fingerprint("ab", b"c"), a.fingerprint("a", b"bc"));
        // Daemons of different versions share fingerprints through Redis: the value is
        // the first 8 bytes of HMAC-SHA256(key, label, account length, account, secret).
        assert_eq!(
            Fingerprinter::with_key([9; 32]).fingerprint("alice@example.org", b"secret"),
            7_934_029_798_867_447_062
        );
        let random = Fingerprinter::random().unwrap();
        assert_ne!(random.fingerprint("x", b"pw"), a.fingerprint("x", b"pw"));
        assert_eq!(format!("{random:?}"), "Fingerprinter([redacted])");
    }

    #[test]
    fn daemons_sharing_a_key_file_fingerprint_alike() {
        let site = AppPasswordKey::new(vec![5; 32]);
        let a = Fingerprinter::for_site(&site);
        let b = Fingerprinter::for_site(&AppPasswordKey::new(vec![5; 32]));
        let other = Fingerprinter::for_site(&AppPasswordKey::new(vec![6; 32]));
        let fp = |f: &Fingerprinter| f.fingerprint("x@example.org", b"old password");
        assert_eq!(fp(&a), fp(&b));
        assert_ne!(fp(&a), fp(&other));
        // Derived, not the key file's bytes themselves.
        assert_ne!(fp(&a), fp(&Fingerprinter::with_key([5; 32])));
    }

    #[test]
    fn account_keys_are_bounded() {
        let long = "é".repeat(1000);
        match ThrottleKey::account(&long) {
            ThrottleKey::Account(a) => {
                assert!(a.len() <= MAX_ACCOUNT_KEY_BYTES && a.starts_with('é'))
            }
            ThrottleKey::Network(_) => panic!("not a network"),
        }
    }
}
