//! Asking the provider whether it still knows a person: the refresh-token grant, and what
//! its answer means.
//!
//! The grant is sent by hand rather than through the `openidconnect` client, because what
//! matters here is how the provider answered, not only what: an `invalid_grant` is believed
//! only in a 400 or 401 answer, the way RFC 6749 §5.2 sends it, never in a 5xx page from a
//! proxy in between. Each answer falls in one class ([`RefreshAnswer`]), and only
//! [`RefreshAnswer::InvalidGrant`] may ever suspend anyone.

use serde::Deserialize;

use super::fetch::read_body;
use super::{error_chain, post_form_as_client, RelyingParty};
use crate::secret::Secret;

/// What the token endpoint said to a refresh.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshAnswer {
    /// The person is still known. `rotated`: the provider issued a new refresh token,
    /// which replaces the old one at once (the old may stop working).
    Ok { rotated: Option<Secret> },
    /// `invalid_grant`: the account is disabled or deleted, or consent was revoked.
    InvalidGrant { description: Option<String> },
    /// The provider refused *our client* (`invalid_client`, `unauthorized_client`, or a
    /// grant it does not allow us): a configuration problem, nothing about the person.
    InvalidClient { error: String },
    /// A 5xx, or an answer that is no token response or error we know.
    ProviderError(String),
    /// No answer: connection refused, timed out, TLS failed; or its metadata or keys
    /// could not be fetched.
    Unreachable(String),
}

impl RefreshAnswer {
    pub fn code(&self) -> &'static str {
        match self {
            RefreshAnswer::Ok { .. } => "ok",
            RefreshAnswer::InvalidGrant { .. } => "invalid_grant",
            RefreshAnswer::InvalidClient { .. } => "invalid_client",
            RefreshAnswer::ProviderError(_) => "provider_error",
            RefreshAnswer::Unreachable(_) => "unreachable",
        }
    }

    /// For the log: what the provider said, without any token.
    pub fn detail(&self) -> String {
        match self {
            RefreshAnswer::Ok { rotated } => {
                if rotated.is_some() {
                    "refresh token rotated".into()
                } else {
                    String::new()
                }
            }
            RefreshAnswer::InvalidGrant { description } => description.clone().unwrap_or_default(),
            RefreshAnswer::InvalidClient { error } => error.clone(),
            RefreshAnswer::ProviderError(d) | RefreshAnswer::Unreachable(d) => d.clone(),
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    error_description: Option<String>,
}

impl RelyingParty {
    /// One refresh-token grant at the provider's token endpoint, classified.
    pub async fn refresh(&self, refresh_token: &Secret) -> RefreshAnswer {
        let p = match self.provider(false).await {
            Ok(p) => p,
            Err(e) => return RefreshAnswer::Unreachable(e.to_string()),
        };
        let Some(token_url) = p.client.token_uri() else {
            return RefreshAnswer::InvalidClient {
                error: "the provider names no token endpoint".into(),
            };
        };
        let settings = self.settings();
        let token = String::from_utf8_lossy(refresh_token.expose()).into_owned();
        let response = post_form_as_client(
            self.http.post(token_url.url().clone()),
            p.auth,
            settings,
            &[("grant_type", "refresh_token"), ("refresh_token", &token)],
        )
        .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return RefreshAnswer::Unreachable(error_chain(&e)),
        };
        let status = response.status();
        let body = match read_body(response).await {
            Ok(b) => b,
            Err(e) => return RefreshAnswer::Unreachable(e.to_string()),
        };
        classify(status.as_u16(), &body)
    }
}

/// The answer's class from its status and body alone.
pub fn classify(status: u16, body: &[u8]) -> RefreshAnswer {
    match status {
        200 => match serde_json::from_slice::<TokenAnswer>(body) {
            Ok(TokenAnswer {
                access_token: Some(_),
                refresh_token,
            }) => RefreshAnswer::Ok {
                rotated: refresh_token.filter(|t| !t.is_empty()).map(Secret::from),
            },
            _ => RefreshAnswer::ProviderError("HTTP 200 without an access token".into()),
        },
        400 | 401 => match serde_json::from_slice::<ErrorAnswer>(body) {
            Ok(e) if e.error == "invalid_grant" => RefreshAnswer::InvalidGrant {
                description: e.error_description.map(|d| d.chars().take(200).collect()),
            },
            Ok(e) => {
                let described = match e.error_description {
                    Some(d) => format!("{} ({})", e.error, d.chars().take(200).collect::<String>()),
                    None => e.error,
                };
                RefreshAnswer::InvalidClient {
                    error: described.chars().take(300).collect(),
                }
            }
            Err(_) => RefreshAnswer::ProviderError(format!("HTTP {status} without an OAuth error")),
        },
        _ => RefreshAnswer::ProviderError(format!("HTTP {status}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn only_a_400_or_401_invalid_grant_is_a_refusal_of_the_person() {
        let grant = br#"{"error":"invalid_grant","error_description":"user disabled"}"#;
        assert_eq!(classify(400, grant).code(), "invalid_grant");
        assert_eq!(classify(401, grant).code(), "invalid_grant");
        for status in [500, 502, 503, 403, 404, 302] {
            assert_eq!(classify(status, grant).code(), "provider_error", "{status}");
        }
    }

    #[test]
    fn client_errors_are_configuration_problems() {
        for error in [
            "invalid_client",
            "unauthorized_client",
            "unsupported_grant_type",
        ] {
            let body = format!(r#"{{"error":"{error}"}}"#);
            assert_eq!(classify(401, body.as_bytes()).code(), "invalid_client");
        }
        assert_eq!(classify(400, b"<html>").code(), "provider_error");
    }

    #[test]
    fn a_rotated_token_is_kept_and_a_200_without_access_token_is_no_ok() {
        let rotated = classify(200, br#"{"access_token":"a","refresh_token":"r2"}"#);
        assert_eq!(
            rotated,
            RefreshAnswer::Ok {
                rotated: Some(Secret::from("r2"))
            }
        );
        assert_eq!(
            classify(200, br#"{"access_token":"a"}"#),
            RefreshAnswer::Ok { rotated: None }
        );
        assert_eq!(classify(200, b"{}").code(), "provider_error");
        assert_eq!(classify(200, b"not json").code(), "provider_error");
    }
}
