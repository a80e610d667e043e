//! The decision core: one function, [`Authenticator::authenticate`], that every front door
//! calls, and the credentials it checks; and [`find_recipient`], the rule the userdb door
//! answers delivery lookups by.

pub mod app_password;
mod crypt;
mod decide;
pub mod last_use;
pub mod lookup;
mod outcome;
pub mod password;
pub mod pool;
pub mod services;
pub mod throttle;
pub mod token;
pub mod verify_cache;

pub use decide::{AuthRequest, Authenticator, AuthenticatorParts, SecretKind};
pub use lookup::{find_recipient, Recipient};
pub use outcome::{Credential, FailReason, Outcome, Success, TempCause};
pub use services::{Door, WEB_SERVICE};
pub use token::{TokenChallenge, TokenError, TokenIdentity, TokenRefusal, TokenVerifier};
