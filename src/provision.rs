//! The only code that creates or changes mailboxes. The CLI calls it today; the OIDC
//! sign-in calls the same functions, so domain limits and templates mean the same
//! everywhere.

mod sign_in;

pub use sign_in::{choose_template, sign_in, SignInClaims, SignInRefusal, SignInRules, SignedIn};

use thiserror::Error;

use crate::clock::Clock;
use crate::names::{Address, Protocols};
pub use crate::store::LimitBreach;
use crate::store::{
    AuthSource, Domain, DomainUsage, Mailbox, MailboxState, Overrides, Store, StoreError, Template,
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
    let now = clock.now();
    let (issuer, subject) = new.oidc_identity.clone().unzip();
    let mut mailbox = Mailbox {
        address: new.address.to_string(),
        domain: domain_name,
        password_hash: new.password_hash.clone(),
        auth_source: new.auth_source,
        oidc_issuer: issuer,
        oidc_subject: subject,
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
    if let Some(t) = &template {
        apply_template(&mut mailbox, t);
    }
    set_by_postmaster(&mut mailbox, new.quota, new.protocols, new.state);

    let quota = mailbox.quota;
    let require_active = new.require_active_domain;
    let check = move |d: &Domain, u: &DomainUsage| limit_breach(d, u, quota, true, require_active);
    store
        .create_mailbox(&mailbox, &check)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ProvisionError::Exists(mailbox.address.clone()),
            StoreError::NotFound(_) => ProvisionError::UnknownDomain(mailbox.domain.clone()),
            other => other.into(),
        })?;
    Ok(mailbox)
}

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
        let quota = mailbox.quota;
        let check = move |d: &Domain, u: &DomainUsage| limit_breach(d, u, quota, false, false);
        if store.update_mailbox_if(&mailbox, &current, &check).await? {
            return Ok(mailbox);
        }
    }
    Err(ProvisionError::Store(StoreError::Unavailable(format!(
        "mailbox {address} kept changing while it was being updated; try again"
    ))))
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

/// The domain's limits for a mailbox with `quota` (0 = unlimited). `usage` excludes the
/// mailbox itself when it is being changed rather than added.
pub fn check_limits(
    domain: &Domain,
    usage: &DomainUsage,
    quota: u64,
    adding: bool,
    require_active: bool,
) -> Result<(), String> {
    limit_breach(domain, usage, quota, adding, require_active).map_err(|b| b.to_string())
}

pub fn limit_breach(
    domain: &Domain,
    usage: &DomainUsage,
    quota: u64,
    adding: bool,
    require_active: bool,
) -> Result<(), LimitBreach> {
    let name = &domain.name;
    if require_active && !domain.active {
        return Err(LimitBreach::DomainDisabled(name.clone()));
    }
    if let Some(max) = domain.max_mailboxes.filter(|_| adding) {
        if usage.mailboxes >= max {
            return Err(LimitBreach::MailboxCount {
                domain: name.clone(),
                max,
            });
        }
    }
    if let Some(max) = domain.max_quota {
        if quota == 0 {
            return Err(LimitBreach::UnlimitedQuota {
                domain: name.clone(),
                max,
            });
        }
        if quota > max {
            return Err(LimitBreach::QuotaOverMax {
                domain: name.clone(),
                quota,
                max,
            });
        }
    }
    if let Some(total) = domain.total_quota {
        if quota == 0 || usage.unlimited_mailboxes > 0 {
            return Err(LimitBreach::TotalNeedsFinite {
                domain: name.clone(),
                total,
            });
        }
        if usage.quota_sum.saturating_add(quota) > total {
            return Err(LimitBreach::TotalQuota {
                domain: name.clone(),
                quota,
                used: usage.quota_sum,
                total,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Domain {
        Domain {
            name: "example.org".into(),
            active: true,
            max_mailboxes: Some(2),
            max_quota: Some(10 << 30),
            total_quota: Some(15 << 30),
            created_at: 0,
        }
    }

    #[test]
    fn limits_hold() {
        let d = domain();
        let empty = DomainUsage::default();
        assert!(check_limits(&d, &empty, 5 << 30, true, true).is_ok());
        let full = DomainUsage {
            mailboxes: 2,
            quota_sum: 4 << 30,
            unlimited_mailboxes: 0,
        };
        assert!(check_limits(&d, &full, 1 << 30, true, true)
            .unwrap_err()
            .contains("mailbox limit"));
        assert!(
            check_limits(&d, &full, 1 << 30, false, true).is_ok(),
            "changing is not adding"
        );
        assert!(check_limits(&d, &empty, 11 << 30, true, true)
            .unwrap_err()
            .contains("maximum of 10G"));
        assert!(check_limits(&d, &empty, 0, true, true)
            .unwrap_err()
            .contains("unlimited"));
        let used = DomainUsage {
            mailboxes: 1,
            quota_sum: 10 << 30,
            unlimited_mailboxes: 0,
        };
        assert!(check_limits(&d, &used, 6 << 30, true, true)
            .unwrap_err()
            .contains("total quota"));
        assert!(check_limits(&d, &used, 5 << 30, true, true).is_ok());
    }

    #[test]
    fn disabled_domain_refuses_sign_ins_only() {
        let mut d = domain();
        d.active = false;
        assert!(check_limits(&d, &DomainUsage::default(), 1, true, true)
            .unwrap_err()
            .contains("disabled"));
        assert!(check_limits(&d, &DomainUsage::default(), 1, true, false).is_ok());
    }

    #[test]
    fn unlimited_domain_takes_anything() {
        let d = Domain {
            max_mailboxes: None,
            max_quota: None,
            total_quota: None,
            ..domain()
        };
        let lots = DomainUsage {
            mailboxes: 1_000_000,
            quota_sum: u64::MAX / 2,
            unlimited_mailboxes: 9,
        };
        assert!(check_limits(&d, &lots, 0, true, true).is_ok());
    }
}
