//! Sealed refresh tokens, under the path the relying party's callers name them by. The code
//! is [`crate::sealed`]: it sits outside `oidc` so that `provision`, which seals the token
//! a sign-in brings, needs nothing of the relying party.

pub use crate::sealed::{Owner, SealError, SealingKey, Unsealed};
