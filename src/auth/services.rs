//! Service names as Dovecot and Postfix send them, mapped to the protocols a mailbox allows;
//! and the one name that is no mail protocol: [`WEB_SERVICE`], the web page's password form.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::names::Protocol;

/// The service name of the web page's password form. Reserved: the config cannot map it to a
/// mail protocol.
pub const WEB_SERVICE: &str = "web";

/// The door a login comes through: a mail protocol, or the web page.
///
/// The page is no mail protocol: a mailbox's allowed protocols do not gate it (they gate
/// the app passwords made there), and app passwords never open it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Door {
    Mail(Protocol),
    Web,
}

impl Door {
    pub fn name(self) -> &'static str {
        match self {
            Door::Mail(p) => p.name(),
            Door::Web => WEB_SERVICE,
        }
    }

    /// The mail protocol, for a mail door.
    pub fn protocol(self) -> Option<Protocol> {
        match self {
            Door::Mail(p) => Some(p),
            Door::Web => None,
        }
    }
}

display_via!(Door, name);

impl Serialize for Door {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceMap(BTreeMap<String, Protocol>);

impl Default for ServiceMap {
    fn default() -> Self {
        let pairs = [
            ("imap", Protocol::Imap),
            ("imaps", Protocol::Imap),
            ("pop3", Protocol::Pop3),
            ("pop3s", Protocol::Pop3),
            ("sieve", Protocol::Sieve),
            ("managesieve", Protocol::Sieve),
            ("smtp", Protocol::Smtp),
            ("smtps", Protocol::Smtp),
            ("submission", Protocol::Smtp),
            ("submissions", Protocol::Smtp),
        ];
        ServiceMap(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

impl ServiceMap {
    /// Defaults plus the config's extra names (which may override a default). The config
    /// check refuses [`WEB_SERVICE`]; it is skipped here too, so the page's door can never
    /// become a mail protocol.
    pub fn with_overrides(extra: &BTreeMap<String, Protocol>) -> Self {
        let mut map = ServiceMap::default();
        for (name, protocol) in extra {
            let name = name.trim().to_ascii_lowercase();
            if name != WEB_SERVICE {
                map.0.insert(name, *protocol);
            }
        }
        map
    }

    /// The mail protocol a service name stands for.
    pub fn resolve(&self, service: &str) -> Option<Protocol> {
        self.0.get(&service.trim().to_ascii_lowercase()).copied()
    }

    /// The door a service name stands for: [`WEB_SERVICE`] or a mail protocol.
    pub fn door(&self, service: &str) -> Option<Door> {
        if service.trim().eq_ignore_ascii_case(WEB_SERVICE) {
            return Some(Door::Web);
        }
        self.resolve(service).map(Door::Mail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_and_overrides_apply() {
        let m = ServiceMap::default();
        assert_eq!(m.resolve("Submission"), Some(Protocol::Smtp));
        assert_eq!(m.resolve("managesieve"), Some(Protocol::Sieve));
        assert_eq!(m.resolve("lmtp"), None);
        let extra = BTreeMap::from([("lmtp".to_string(), Protocol::Imap)]);
        assert_eq!(
            ServiceMap::with_overrides(&extra).resolve("lmtp"),
            Some(Protocol::Imap)
        );
    }

    #[test]
    fn web_is_the_page_and_cannot_be_remapped() {
        let extra = BTreeMap::from([("WEB".to_string(), Protocol::Imap)]);
        let m = ServiceMap::with_overrides(&extra);
        assert_eq!(m.resolve("web"), None);
        assert_eq!(m.door("Web"), Some(Door::Web));
        assert_eq!(m.door("imaps"), Some(Door::Mail(Protocol::Imap)));
        assert_eq!(m.door("ftp"), None);
        assert_eq!(Door::Web.protocol(), None);
    }
}
