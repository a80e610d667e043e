//! The decision core: one function, [`Authenticator::authenticate`], that every front door
//! calls, and the credentials it checks.

pub mod app_password;
mod decide;
pub mod last_use;
mod outcome;
pub mod password;
pub mod pool;
pub mod services;
pub mod throttle;
pub mod verify_cache;

pub use decide::{AuthRequest, Authenticator, AuthenticatorParts};
pub use outcome::{Credential, FailReason, Outcome, Success, TempCause};
pub use services::{Door, WEB_SERVICE};
