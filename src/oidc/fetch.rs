//! The calls made to the provider outside `openidconnect` (discovery, the key set, the
//! token refresh, introspection): the cap on what is read, and why an answer could not be
//! had or used.
//!
//! A provider is trusted to say who someone is, not to be well behaved: an answer larger
//! than [`MAX_BODY`] is refused without reading the rest, so a broken or hostile provider
//! costs at most that much memory per call.

use thiserror::Error;

use super::error_chain;

/// The most of a provider's answer that is read.
pub const MAX_BODY: usize = 256 * 1024;

/// Why the provider's answer could not be had or used; for the caller a temporary failure,
/// never a refusal.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: answer longer than {MAX_BODY} bytes")]
    TooLong { url: String },
    #[error("{url}: {what}")]
    Unusable { url: String, what: String },
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The sign-in pages' copy of the provider, whose own error is rendered here.
    #[error("{0}")]
    SignInProvider(String),
}

impl FetchError {
    pub fn unreachable(url: impl ToString, e: &reqwest::Error) -> Self {
        FetchError::Unreachable {
            url: url.to_string(),
            reason: error_chain(e),
        }
    }

    pub fn unusable(url: impl ToString, what: impl ToString) -> Self {
        FetchError::Unusable {
            url: url.to_string(),
            what: what.to_string(),
        }
    }
}

/// A provider's answer body, refused past [`MAX_BODY`] without reading the rest.
pub async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    let url = response.url().to_string();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::unreachable(&url, &e))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(FetchError::TooLong { url });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
