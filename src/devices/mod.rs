//! Device setup: what a mail client needs to find and use this server, in the formats
//! clients read — Mozilla autoconfig, Microsoft Autodiscover (POX), an Apple configuration
//! profile, the QR code Thunderbird for Android scans — and the plain settings to type in.
//!
//! Everything here is pure: settings and an account in, bytes out. The web page
//! (`web::devices`) and the CLI (`mailauthd device profile`) create the app password and
//! call these; no socket, no store, no clock is read here, so every format is tested with
//! golden values and parsed back by the tests.
//!
//! The discovery answers (autoconfig, Autodiscover) never carry a secret and never depend
//! on whether a mailbox exists: they are built from the domain and the address as given.

pub mod android;
pub mod apple;
pub mod autoconfig;
pub mod autodiscover;
pub mod manual;
pub mod settings;

pub use settings::{ClientSettings, Security, Server};

use crate::names::Protocols;

/// The account a device is set up for.
#[derive(Clone, Debug)]
pub struct DeviceAccount<'a> {
    /// The mailbox's canonical address: also the user name clients log in with.
    pub address: &'a str,
    /// The person's name for outgoing mail; may be empty.
    pub display_name: &'a str,
    /// The fresh app password, or `None` for a template without a secret.
    pub password: Option<&'a str>,
    /// What the app password may do: only these servers are put in the profile.
    pub protocols: Protocols,
}

/// A device profile that cannot be made for the protocols asked.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SetupError {
    #[error("choose IMAP or POP3: a mail app needs a server to read mail from")]
    NoIncomingServer,
    #[error("no server for {0} is configured for mail clients (see [clients])")]
    NotOffered(crate::names::Protocol),
}
