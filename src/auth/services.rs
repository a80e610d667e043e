//! Service names as Dovecot and Postfix send them, mapped to the protocols a mailbox allows.

use std::collections::BTreeMap;

use crate::names::Protocol;

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
    /// Defaults plus the config's extra names (which may override a default).
    pub fn with_overrides(extra: &BTreeMap<String, Protocol>) -> Self {
        let mut map = ServiceMap::default();
        for (name, protocol) in extra {
            map.0.insert(name.to_ascii_lowercase(), *protocol);
        }
        map
    }

    pub fn resolve(&self, service: &str) -> Option<Protocol> {
        self.0.get(&service.trim().to_ascii_lowercase()).copied()
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
}
