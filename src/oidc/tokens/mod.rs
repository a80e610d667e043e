//! Validating the identity provider's access tokens for SASL OAUTHBEARER and XOAUTH2: the
//! provider side of [`crate::auth::TokenVerifier`].

pub mod settings;

pub use settings::{IntrospectionClient, IntrospectionMode, OAuthSettings};
