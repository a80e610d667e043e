//! Issuing an app password: the one place the web page's form, its device setup and the
//! CLI (`app-password create`, `device profile`) make one, so the same rules hold
//! whoever asks.
//!
//! The rules: a name of 1 to 100 printable characters, unique per mailbox (compared
//! without case: "iPhone" and "iphone" are the same device to a person); at least one
//! protocol, and when the caller says which the mailbox allows, only those; an expiry in
//! the future; at most [`MAX_APP_PASSWORDS`] per mailbox. The secret is made here and
//! leaves only in [`IssuedAppPassword`]; the store keeps its keyed lookup hash.

use ipnet::IpNet;
use thiserror::Error;

use crate::auth::app_password::{self, AppPasswordKey};
use crate::clock::UnixTime;
use crate::names::{Protocol, Protocols};
use crate::secret::Secret;
use crate::store::{AppPasswords, NewAppPassword, StoreError};

/// Enough for every device a person owns; bounds what one account can make us store.
pub const MAX_APP_PASSWORDS: usize = 100;

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// What to do when the name is already taken by another app password of the mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DuplicateName {
    /// Refuse ([`AppPasswordRefusal::NameTaken`]): the person typed the name.
    Refuse,
    /// Add " (2)", " (3)"…: the name was made up for them, e.g. after the device kind.
    Number,
}

pub struct AppPasswordRequest<'a> {
    /// The mailbox's canonical address; the caller has found the mailbox.
    pub mailbox: &'a str,
    pub name: &'a str,
    pub protocols: Protocols,
    /// The protocols the mailbox allows, when the caller refuses the others; `None` lets
    /// the postmaster make one ahead of a change to the mailbox.
    pub allowed: Option<Protocols>,
    pub networks: Vec<IpNet>,
    pub expires_at: Option<UnixTime>,
    pub duplicate_name: DuplicateName,
    pub now: UnixTime,
}

/// A new app password: the secret is shown once and then dropped.
pub struct IssuedAppPassword {
    pub id: i64,
    /// The name as stored (trimmed, numbered if it had to be).
    pub name: String,
    pub secret: Secret,
}

impl IssuedAppPassword {
    /// The secret as the person types it.
    pub fn shown(&self) -> String {
        String::from_utf8_lossy(self.secret.expose()).into_owned()
    }
}

/// Why no app password was made; each says what to do instead.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AppPasswordRefusal {
    #[error("give the app password a name of 1 to {MAX_NAME_CHARS} printable characters, e.g. \u{201c}phone\u{201d}")]
    BadName,
    #[error("an app password named \u{201c}{0}\u{201d} already exists for this mailbox: pick another name or revoke that one")]
    NameTaken(String),
    #[error("choose at least one of IMAP, POP3, SIEVE or SMTP")]
    NoProtocols,
    #[error("the mailbox does not allow {}, so an app password for it could not work", .0.name().to_uppercase())]
    NotAllowed(Protocol),
    #[error("the expiry date must be in the future")]
    PastExpiry,
    #[error("the mailbox has {MAX_APP_PASSWORDS} app passwords: revoke some that are no longer used first")]
    TooMany,
}

#[derive(Debug, Error)]
pub enum IssueError {
    #[error(transparent)]
    Refused(#[from] AppPasswordRefusal),
    #[error("no randomness for an app password: {0}")]
    NoRandomness(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A trimmed name that passes the rules, or the refusal.
pub fn valid_name(name: &str) -> Result<String, AppPasswordRefusal> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(AppPasswordRefusal::BadName);
    }
    Ok(name.to_string())
}

/// `name`, or the first of "name (2)", "name (3)"… that no name in `taken` equals
/// without case; `None` when `name` is taken and numbering is refused.
fn free_name(name: &str, taken: &[String], duplicate: DuplicateName) -> Option<String> {
    let is_taken = |candidate: &str| {
        taken
            .iter()
            .any(|t| t.to_lowercase() == candidate.to_lowercase())
    };
    if !is_taken(name) {
        return Some(name.to_string());
    }
    if duplicate == DuplicateName::Refuse {
        return None;
    }
    // At most MAX_APP_PASSWORDS names exist, so one of the first that many numbers is free.
    (2..=MAX_APP_PASSWORDS + 1).find_map(|n| {
        let suffix = format!(" ({n})");
        let keep = MAX_NAME_CHARS.saturating_sub(suffix.chars().count());
        let candidate: String = name.chars().take(keep).collect::<String>() + &suffix;
        (!is_taken(&candidate)).then_some(candidate)
    })
}

/// Held from reading a mailbox's app passwords to storing the new one, so that two
/// issued at once in this process (a double-clicked form) cannot both take the same free
/// name or the last place. One lock for all mailboxes: people issue a few a day. Two
/// processes (the CLI and a daemon, two daemons) are not held apart by it; for one person
/// that takes two daemons answering the same double click.
static ISSUING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Checks `request` against the rules and the mailbox's other app passwords, then makes
/// the secret and stores its lookup hash under `key`.
pub async fn issue_app_password(
    store: &dyn AppPasswords,
    key: &AppPasswordKey,
    request: AppPasswordRequest<'_>,
) -> Result<IssuedAppPassword, IssueError> {
    let name = valid_name(request.name)?;
    if request.protocols == Protocols::NONE {
        return Err(AppPasswordRefusal::NoProtocols.into());
    }
    if let Some(allowed) = request.allowed {
        if let Some(p) = request.protocols.iter().find(|p| !allowed.contains(*p)) {
            return Err(AppPasswordRefusal::NotAllowed(p).into());
        }
    }
    if request.expires_at.is_some_and(|t| t <= request.now) {
        return Err(AppPasswordRefusal::PastExpiry.into());
    }
    let _one_at_a_time = ISSUING.lock().await;
    let existing = store.list_app_passwords(request.mailbox).await?;
    if existing.len() >= MAX_APP_PASSWORDS {
        return Err(AppPasswordRefusal::TooMany.into());
    }
    let taken: Vec<String> = existing.into_iter().map(|a| a.name).collect();
    let name = free_name(&name, &taken, request.duplicate_name)
        .ok_or_else(|| AppPasswordRefusal::NameTaken(name.clone()))?;
    let secret = app_password::generate().map_err(IssueError::NoRandomness)?;
    let id = store
        .create_app_password(&NewAppPassword {
            mailbox: request.mailbox.to_string(),
            name: name.clone(),
            lookup_hash: key.lookup_hash(secret.expose()),
            protocols: request.protocols,
            networks: request.networks,
            expires_at: request.expires_at,
            created_at: request.now,
        })
        .await?;
    Ok(IssuedAppPassword { id, name, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_trimmed_bounded_and_printable() {
        assert_eq!(valid_name("  phone ").unwrap(), "phone");
        assert_eq!(valid_name(" "), Err(AppPasswordRefusal::BadName));
        assert_eq!(valid_name("a\u{7}b"), Err(AppPasswordRefusal::BadName));
        assert_eq!(valid_name(&"é".repeat(100)).unwrap().chars().count(), 100);
        assert_eq!(
            valid_name(&"é".repeat(101)),
            Err(AppPasswordRefusal::BadName)
        );
    }

    #[test]
    fn a_taken_name_is_refused_or_numbered_without_regard_to_case() {
        let taken = names(&["iPhone", "iphone (2)", "laptop"]);
        assert_eq!(
            free_name("tablet", &taken, DuplicateName::Refuse).as_deref(),
            Some("tablet")
        );
        assert_eq!(free_name("IPHONE", &taken, DuplicateName::Refuse), None);
        assert_eq!(
            free_name("iPhone", &taken, DuplicateName::Number).as_deref(),
            Some("iPhone (3)")
        );
        let long = "x".repeat(MAX_NAME_CHARS);
        let numbered = free_name(&long, &names(&[&long]), DuplicateName::Number).unwrap();
        assert_eq!(numbered.chars().count(), MAX_NAME_CHARS);
        assert!(numbered.ends_with(" (2)"));
    }
}
