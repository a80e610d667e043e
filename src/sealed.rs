//! Refresh tokens sealed at rest: AES-256-GCM under a key derived from the key file.
//!
//! A refresh token lets whoever holds it ask the provider for fresh tokens, so the database
//! never sees one in the clear. The sealing key is derived with HKDF-SHA256 from the key
//! file's bytes under a label of its own, so it is never the app-password key itself; a
//! database dump without the key file is useless to an attacker.
//!
//! The text stored is `v1.<nonce>.<ciphertext and tag>` (base64, no padding): a version, so
//! a later format can be told apart, and a random 96-bit nonce per seal. The associated
//! data is the mailbox's address, issuer and subject, so a sealed token copied into another
//! row does not open there.
//!
//! A token that does not open (the key file was replaced, the row was tampered with, an
//! unknown version) is [`Unsealed::Unusable`], which the liveness check reports as "no
//! refresh token": it is never taken as the provider's refusal of the person.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use sha2::Sha256;
use thiserror::Error;

use crate::auth::app_password::AppPasswordKey;
use crate::secret::Secret;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const LABEL: &[u8] = b"mailauthd refresh token sealing v1";
/// Longer tokens are not kept: sealed and base64-encoded they would not fit the column
/// (8192 characters). Real refresh tokens are a few hundred bytes to a few kilobytes.
pub const MAX_TOKEN_LEN: usize = 6000;

/// The mailbox a sealed token belongs to; bound into the seal as associated data.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    pub address: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
}

impl Owner<'_> {
    fn associated_data(&self) -> Vec<u8> {
        let mut ad = Vec::new();
        for part in [VERSION, self.address, self.issuer, self.subject] {
            // Length-prefixed, so no choice of parts can collide with another.
            ad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            ad.extend_from_slice(part.as_bytes());
        }
        ad
    }
}

#[derive(Debug, Error)]
pub enum SealError {
    #[error("the operating system gave no random bytes for a nonce: {0}")]
    Random(getrandom::Error),
    #[error("cannot seal the refresh token: {0}")]
    Cipher(String),
    #[error("the refresh token is {0} bytes long, more than the {MAX_TOKEN_LEN} kept")]
    TooLong(usize),
}

/// What opening a stored token gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsealed {
    Token(Secret),
    /// Does not open: another key file, another row's token, tampered, unknown version.
    Unusable(&'static str),
}

/// The key refresh tokens are sealed with.
pub struct SealingKey(Secret);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(…)")
    }
}

impl SealingKey {
    /// Derived from the key file's bytes, under a label of its own.
    pub fn derive(key_file: &AppPasswordKey) -> SealingKey {
        Self::from_bytes(key_file.bytes())
    }

    fn from_bytes(ikm: &[u8]) -> SealingKey {
        let hk = Hkdf::<Sha256>::new(None, ikm);
        let mut okm = vec![0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 8160, so this cannot fail.
        if hk.expand(LABEL, &mut okm).is_err() {
            okm.clear();
        }
        SealingKey(Secret::new(okm))
    }

    pub fn seal(&self, token: &Secret, owner: Owner<'_>) -> Result<String, SealError> {
        if token.expose().len() > MAX_TOKEN_LEN {
            return Err(SealError::TooLong(token.expose().len()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(SealError::Random)?;
        let mut tag = [0u8; TAG_LEN];
        let sealed = encrypt_aead(
            Cipher::aes_256_gcm(),
            self.0.expose(),
            Some(&nonce),
            &owner.associated_data(),
            token.expose(),
            &mut tag,
        )
        .map_err(|e| SealError::Cipher(e.to_string()))?;
        let mut body = sealed;
        body.extend_from_slice(&tag);
        Ok(format!(
            "{VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(body)
        ))
    }

    pub fn open(&self, stored: &str, owner: Owner<'_>) -> Unsealed {
        let mut parts = stored.split('.');
        let (Some(version), Some(nonce), Some(body), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Unsealed::Unusable("not a sealed token");
        };
        if version != VERSION {
            return Unsealed::Unusable("unknown seal version");
        }
        let (Ok(nonce), Ok(body)) = (URL_SAFE_NO_PAD.decode(nonce), URL_SAFE_NO_PAD.decode(body))
        else {
            return Unsealed::Unusable("not base64");
        };
        if nonce.len() != NONCE_LEN || body.len() < TAG_LEN {
            return Unsealed::Unusable("truncated");
        }
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        match decrypt_aead(
            Cipher::aes_256_gcm(),
            self.0.expose(),
            Some(&nonce),
            &owner.associated_data(),
            ciphertext,
            tag,
        ) {
            Ok(plain) => Unsealed::Token(Secret::new(plain)),
            Err(_) => Unsealed::Unusable("does not open with this key file for this mailbox"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const ALICE: Owner<'static> = Owner {
        address: "alice@example.org",
        issuer: "https://sso.example.org",
        subject: "s-alice",
    };

    fn key(byte: u8) -> SealingKey {
        SealingKey::from_bytes(&[byte; 32])
    }

    fn token() -> Secret {
        Secret::from("refresh-token-of-alice")
    }

    #[test]
    fn a_sealed_token_opens_for_its_mailbox_and_hides_the_token() {
        let sealed = key(1).seal(&token(), ALICE).unwrap();
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("refresh-token"));
        assert_eq!(key(1).open(&sealed, ALICE), Unsealed::Token(token()));
        let again = key(1).seal(&token(), ALICE).unwrap();
        assert_ne!(sealed, again, "a fresh nonce every time");
    }

    #[test]
    fn a_tampered_token_does_not_open() {
        let sealed = key(1).seal(&token(), ALICE).unwrap();
        let (head, body) = sealed.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        bytes[0] ^= 1;
        let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert!(matches!(
            key(1).open(&tampered, ALICE),
            Unsealed::Unusable(_)
        ));
        assert!(matches!(
            key(1).open(&sealed[..sealed.len() - 4], ALICE),
            Unsealed::Unusable(_)
        ));
    }

    #[test]
    fn another_mailbox_or_identity_cannot_open_it() {
        let sealed = key(1).seal(&token(), ALICE).unwrap();
        for other in [
            Owner {
                address: "bob@example.org",
                ..ALICE
            },
            Owner {
                subject: "s-bob",
                ..ALICE
            },
            Owner {
                issuer: "https://other.example.org",
                ..ALICE
            },
        ] {
            assert!(matches!(key(1).open(&sealed, other), Unsealed::Unusable(_)));
        }
    }

    #[test]
    fn another_key_file_cannot_open_it() {
        let sealed = key(1).seal(&token(), ALICE).unwrap();
        assert!(matches!(key(2).open(&sealed, ALICE), Unsealed::Unusable(_)));
    }

    #[test]
    fn an_unknown_version_or_shape_is_unusable() {
        let sealed = key(1).seal(&token(), ALICE).unwrap();
        let v2 = sealed.replacen("v1.", "v2.", 1);
        assert_eq!(
            key(1).open(&v2, ALICE),
            Unsealed::Unusable("unknown seal version")
        );
        for junk in ["", "v1", "v1.a", "v1.a.b.c", "plain-refresh-token"] {
            assert!(matches!(key(1).open(junk, ALICE), Unsealed::Unusable(_)));
        }
    }

    #[test]
    fn the_longest_kept_token_fits_the_column() {
        let long = Secret::new(vec![b'x'; MAX_TOKEN_LEN]);
        let sealed = key(1).seal(&long, ALICE).unwrap();
        assert!(sealed.len() <= 8192, "{}", sealed.len());
        let longer = Secret::new(vec![b'x'; MAX_TOKEN_LEN + 1]);
        assert!(matches!(
            key(1).seal(&longer, ALICE),
            Err(SealError::TooLong(_))
        ));
    }

    #[test]
    fn the_sealing_key_is_not_the_key_file() {
        let k = SealingKey::derive(&AppPasswordKey::new(vec![7; 32]));
        assert_ne!(k.0.expose(), &[7u8; 32][..]);
        assert_eq!(k.0.expose().len(), 32);
        assert_eq!(format!("{k:?}"), "SealingKey(…)");
    }
}
