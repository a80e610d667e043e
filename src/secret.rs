//! Secrets as a type: they cannot be printed by accident.

use std::fmt;

use zeroize::Zeroizing;

/// A password, app password or key read from a person or a file.
///
/// `Debug` and `Display` never show the content, and the bytes are wiped on drop, so a
/// secret that ends up in a log line, an error or a core dump reveals nothing.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes().to_vec())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s.into_bytes())
    }
}

/// Compared in constant time, so a comparison (config reload) says nothing through its
/// timing about how much of a secret matched.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == other.0.len() && bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_content() {
        let s = Secret::from("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), b"hunter2-very-secret");
    }

    #[test]
    fn secrets_compare_by_content_although_their_debug_is_the_same() {
        let a = Secret::from("old-client-secret");
        let b = Secret::from("new-client-secret");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(a, b);
        assert_eq!(a, Secret::from("old-client-secret"));
        assert_ne!(a, Secret::from("old-client-secret-longer"));
    }
}
