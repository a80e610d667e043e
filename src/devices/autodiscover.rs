//! Microsoft Autodiscover, the plain-old-XML (POX) kind Outlook and many phones post to
//! `/autodiscover/autodiscover.xml`: the request's `EMailAddress` in, IMAP and SMTP
//! settings out.

use super::ClientSettings;

/// The request could not be read as an Autodiscover request.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("not an Autodiscover request: {0}")]
pub struct Malformed(pub String);

/// The `EMailAddress` of a request body, `None` when it names none.
pub fn requested_address(body: &[u8]) -> Result<Option<String>, Malformed> {
    let _ = body;
    todo!("autodiscover request")
}

/// The settings answer for `address` as given.
pub fn response(settings: &ClientSettings, address: &str) -> String {
    let _ = (settings, address);
    todo!("autodiscover response")
}

/// The answer to a request without a usable address: Autodiscover's error 600.
pub fn invalid_request() -> String {
    todo!("autodiscover error")
}
