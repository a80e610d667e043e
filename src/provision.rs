//! The only code that creates or changes mailboxes, so that a domain's limits, a template
//! and the postmaster's overrides mean the same whoever writes.
//!
//! - A new mailbox is built and inserted in one place, `insert`. The CLI reaches it through
//!   [`create_mailbox`]; the first sign-in through an identity provider through
//!   [`sign_in`]. Each finds the domain and the template its own way (a sign-in picks the
//!   template by claim and refuses a disabled domain), then hands the same constructor a
//!   [`NewMailbox`].
//! - The postmaster's changes are [`update_mailbox`], [`set_password_hash`],
//!   [`set_auth_source`] and [`remove_mailbox`]; a sign-in binds and brings up to date its
//!   own mailbox in `sign_in`.
//! - Domain limits are decided in `limits` and run by the store inside the transaction
//!   that writes the row. A write that depends on the row as read is a compare-and-set,
//!   decided again on the fresh row when another writer got there first.
//!
//! - App passwords are issued in `app_passwords`, for the web page and the CLI alike.
//!
//! Keeping a credential in shape is not a change of the mailbox and stays with the decision
//! core (`crate::auth`): the rehash of an imported hash after a login, and the last use.

mod app_passwords;
mod limits;
mod sign_in;

pub use app_passwords::{
    issue_app_password, valid_name, AppPasswordRefusal, AppPasswordRequest, DuplicateName,
    IssueError, IssuedAppPassword, MAX_APP_PASSWORDS,
};
pub use limits::{limit_breach, LimitBreach};
pub use sign_in::{
    choose_template, record_sign_in, sign_in, SignInClaims, SignInRefusal, SignInRules, SignedIn,
};

use thiserror::Error;

use limits::{LimitGuard, WriteError};

use crate::clock::Clock;
use crate::names::{Address, Protocols};
use crate::store::{
    AuthSource, Domain, Mailbox, MailboxState, Overrides, Store, StoreError, Template,
};

/// How often a write that lost a race with another writer of the same mailbox is decided
/// again on the fresh row before giving up with a temporary failure.
const WRITE_ATTEMPTS: usize = 5;

#[derive(Debug, Error)]
pub enum ProvisionError {
    #[error("domain {0} does not exist (add it with: mailauthd domain add {0})")]
    UnknownDomain(String),
    #[error("template {0} does not exist (see: mailauthd template list)")]
    UnknownTemplate(String),
    #[error("mailbox {0} does not exist")]
    UnknownMailbox(String),
    #[error("mailbox {0} already exists")]
    Exists(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ProvisionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(refusal) => ProvisionError::Refused(refusal.to_string()),
            StoreError::Limit(breach) => ProvisionError::Refused(breach.to_string()),
            other => ProvisionError::Store(other),
        }
    }
}

impl From<WriteError> for ProvisionError {
    fn from(e: WriteError) -> Self {
        match e {
            // The same text the store would have refused with.
            WriteError::Limit(breach) => ProvisionError::Refused(breach.to_string()),
            WriteError::Store(e) => e.into(),
        }
    }
}

/// What a new mailbox should be; unset fields come from the template, then the domain.
/// Fields given here are the postmaster's word: they become the mailbox's overrides.
#[derive(Clone, Debug)]
pub struct NewMailbox {
    pub address: Address,
    pub password_hash: Option<String>,
    pub auth_source: AuthSource,
    pub display_name: String,
    pub quota: Option<u64>,
    pub protocols: Option<Protocols>,
    pub state: Option<MailboxState>,
    pub template: Option<String>,
    /// Only the OIDC sign-in sets these, binding the mailbox to one identity.
    pub oidc_identity: Option<(String, String)>,
    /// Sign-ins may only create mailboxes in active domains; a postmaster may prepare one.
    pub require_active_domain: bool,
}

/// Changes to an existing mailbox; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct MailboxChanges {
    pub display_name: Option<String>,
    pub quota: Option<u64>,
    pub protocols: Option<Protocols>,
    pub state: Option<MailboxState>,
    /// Applies this template (quota, protocols, state) and drops the mailbox's overrides,
    /// before the explicit changes above (which become overrides again).
    pub template: Option<String>,
    /// Re-applies the mailbox's own template and drops its overrides (as `template` with the
    /// template it follows); refused for a mailbox that follows none.
    pub reset: bool,
    /// Forgets the identity-provider account the mailbox is bound to; the next sign-in with
    /// its address binds it again (a re-created account, a changed address).
    pub unlink_identity: bool,
}

/// A mailbox the postmaster adds (`mailbox add`, `mailbox import`): its domain must exist,
/// and so must the template it names, if any.
pub async fn create_mailbox(
    store: &dyn Store,
    clock: &dyn Clock,
    new: NewMailbox,
) -> Result<Mailbox, ProvisionError> {
    let domain_name = new.address.domain().to_string();
    let domain = store
        .get_domain(&domain_name)
        .await?
        .ok_or_else(|| ProvisionError::UnknownDomain(domain_name.clone()))?;
    let template = match &new.template {
        Some(name) => Some(load_template(store, name).await?),
        None => None,
    };
    insert(store, clock, &new, &domain, template.as_ref())
        .await
        .map_err(|e| match e {
            WriteError::Store(StoreError::Conflict(_)) => {
                ProvisionError::Exists(new.address.to_string())
            }
            WriteError::Store(StoreError::NotFound(_)) => {
                ProvisionError::UnknownDomain(domain_name)
            }
            other => other.into(),
        })
}

/// The one constructor of a mailbox. It starts from the domain (its largest quota, every
/// protocol, active), applies `template`, then sets what the caller gave explicitly
/// (remembered as overrides), and has the store insert the row with the domain's limits
/// checked in the same transaction. `new.template` is not read: callers load the template
/// their own way.
async fn insert(
    store: &dyn Store,
    clock: &dyn Clock,
    new: &NewMailbox,
    domain: &Domain,
    template: Option<&Template>,
) -> Result<Mailbox, WriteError> {
    let now = clock.now();
    let (oidc_issuer, oidc_subject) = new.oidc_identity.clone().unzip();
    let mut mailbox = Mailbox {
        address: new.address.to_string(),
        domain: new.address.domain().to_string(),
        password_hash: new.password_hash.clone(),
        auth_source: new.auth_source,
        oidc_issuer,
        oidc_subject,
        display_name: new.display_name.clone(),
        quota: domain.max_quota.unwrap_or(0),
        protocols: Protocols::ALL,
        state: MailboxState::Active,
        template: None,
        template_hash: None,
        overrides: Overrides::NONE,
        created_at: now,
        updated_at: now,
        last_login: None,
    };
    if let Some(t) = template {
        apply_template(&mut mailbox, t);
    }
    set_by_postmaster(&mut mailbox, new.quota, new.protocols, new.state);
    let guard = LimitGuard::new(mailbox.quota, true, new.require_active_domain);
    match store
        .create_mailbox(&mailbox, &|d, u| guard.check(d, u))
        .await
    {
        Ok(()) => Ok(mailbox),
        Err(e) => Err(guard.refusal(e)),
    }
}

/// The postmaster's changes to a mailbox (`mailbox set`, `mailbox unlink`).
pub async fn update_mailbox(
    store: &dyn Store,
    clock: &dyn Clock,
    address: &Address,
    changes: MailboxChanges,
) -> Result<Mailbox, ProvisionError> {
    // Decided on the row as read and written only if nobody wrote it meanwhile (a sign-in
    // binding it, say), so a postmaster's change never undoes another write, nor the reverse.
    for _ in 0..WRITE_ATTEMPTS {
        let current = store
            .get_mailbox(address.as_str())
            .await?
            .ok_or_else(|| ProvisionError::UnknownMailbox(address.to_string()))?;
        let mut mailbox = current.clone();
        let template = match (&changes.template, changes.reset) {
            (Some(name), _) => Some(name.clone()),
            (None, true) => Some(current.template.clone().ok_or_else(|| {
                ProvisionError::Refused(format!(
                    "mailbox {address} follows no template; name one with --template NAME"
                ))
            })?),
            (None, false) => None,
        };
        if let Some(name) = &template {
            mailbox.overrides = Overrides::NONE;
            apply_template(&mut mailbox, &load_template(store, name).await?);
        }
        if let Some(name) = &changes.display_name {
            mailbox.display_name = name.clone();
        }
        set_by_postmaster(
            &mut mailbox,
            changes.quota,
            changes.protocols,
            changes.state,
        );
        if changes.unlink_identity {
            mailbox.oidc_issuer = None;
            mailbox.oidc_subject = None;
        }
        mailbox.updated_at = clock.now();
        let guard = LimitGuard::new(mailbox.quota, false, false);
        let written = store
            .update_mailbox_if(&mailbox, &current, &|d, u| guard.check(d, u))
            .await
            .map_err(|e| guard.refusal(e))?;
        if written {
            return Ok(mailbox);
        }
    }
    Err(ProvisionError::Store(StoreError::Unavailable(format!(
        "mailbox {address} kept changing while it was being updated; try again"
    ))))
}

/// A new stored password, as a hash the caller made. The credential generation moves on,
/// so the mailbox's page sessions end and no cached check of the old password counts.
pub async fn set_password_hash(
    store: &dyn Store,
    clock: &dyn Clock,
    address: &Address,
    hash: &str,
) -> Result<(), ProvisionError> {
    store
        .set_password_hash(address.as_str(), Some(hash), clock.now())
        .await?;
    Ok(())
}

/// Switches a mailbox between its own password (`local`) and the identity provider
/// (`oidc`). The stored password is kept either way; a change of source ends the
/// mailbox's page sessions.
pub async fn set_auth_source(
    store: &dyn Store,
    clock: &dyn Clock,
    address: &Address,
    source: AuthSource,
) -> Result<(), ProvisionError> {
    store
        .set_auth_source(address.as_str(), source, clock.now())
        .await?;
    Ok(())
}

/// Removes a mailbox; its app passwords and send-as grants go with it.
pub async fn remove_mailbox(store: &dyn Store, address: &Address) -> Result<(), ProvisionError> {
    store.delete_mailbox(address.as_str()).await?;
    Ok(())
}

/// Explicit settings from the postmaster: set, and remembered as overrides that applying a
/// template leaves alone.
fn set_by_postmaster(
    mailbox: &mut Mailbox,
    quota: Option<u64>,
    protocols: Option<Protocols>,
    state: Option<MailboxState>,
) {
    if let Some(q) = quota {
        mailbox.quota = q;
        mailbox.overrides.quota = true;
    }
    if let Some(p) = protocols {
        mailbox.protocols = p;
        mailbox.overrides.protocols = true;
    }
    if let Some(s) = state {
        mailbox.state = s;
        mailbox.overrides.state = true;
    }
}

/// Sets what a template decides (quota, protocols, state) except what the mailbox's
/// overrides keep, and which template (and which version of it) the mailbox now follows.
pub fn apply_template(mailbox: &mut Mailbox, template: &Template) {
    if !mailbox.overrides.quota {
        mailbox.quota = template.quota;
    }
    if !mailbox.overrides.protocols {
        mailbox.protocols = template.protocols;
    }
    if !mailbox.overrides.state {
        mailbox.state = template.state;
    }
    mailbox.template = Some(template.name.clone());
    mailbox.template_hash = Some(template.content_hash());
}

async fn load_template(store: &dyn Store, name: &str) -> Result<Template, ProvisionError> {
    store
        .get_template(name)
        .await?
        .ok_or_else(|| ProvisionError::UnknownTemplate(name.to_string()))
}
