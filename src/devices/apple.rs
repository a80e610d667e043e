//! Apple configuration profiles (`.mobileconfig`) with a `com.apple.mail.managed` payload
//! for iPhone, iPad and Mac, signed as CMS when a certificate is configured.

use std::path::Path;

use super::{ClientSettings, DeviceAccount, SetupError};

/// The profile as an XML property list, unsigned.
pub fn profile(
    settings: &ClientSettings,
    account: &DeviceAccount<'_>,
    site: &str,
) -> Result<Vec<u8>, SetupError> {
    let _ = (settings, account, site);
    todo!("apple profile")
}

/// The certificate and key that sign profiles, loaded once.
pub struct ProfileSigner {}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SignerError(pub String);

impl ProfileSigner {
    pub fn load(certificate: &Path, key: &Path) -> Result<Self, SignerError> {
        let _ = (certificate, key);
        todo!("load signer")
    }

    /// `profile` inside a CMS SignedData structure (DER), as iOS installs it.
    pub fn sign(&self, profile: &[u8]) -> Result<Vec<u8>, SignerError> {
        let _ = profile;
        todo!("sign")
    }
}
