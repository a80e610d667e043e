//! A domain's limits on its mailboxes: how many it may have, how large one may be, how
//! large all of them together, and whether a sign-in may create one there now.
//!
//! The rule is decided here; the store runs it inside the transaction that writes the
//! mailbox, after locking the domain's row, so two writers can never both squeeze under a
//! limit. [`LimitGuard`] is that check as the store takes it; the store hands a breach back as
//! `StoreError::Limit`, so the writer gets the typed [`LimitBreach`].

use crate::store::{Domain, DomainUsage, StoreError};

pub use crate::store::LimitBreach;

/// The domain's limits for a mailbox with `quota` (0 = unlimited). `usage` excludes the
/// mailbox itself when it is being changed rather than added (`adding` false), and only a
/// sign-in needs the domain to be active (`require_active`): a postmaster may prepare
/// mailboxes in a domain that is still disabled.
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

/// Why a mailbox write wrote nothing.
#[derive(Debug)]
pub(super) enum WriteError {
    /// The domain's limits refused it.
    Limit(LimitBreach),
    Store(StoreError),
}

/// [`limit_breach`] for one write, in the shape the store runs it, remembering the breach.
pub(super) struct LimitGuard {
    quota: u64,
    adding: bool,
    require_active: bool,
}

impl LimitGuard {
    pub(super) fn new(quota: u64, adding: bool, require_active: bool) -> Self {
        LimitGuard {
            quota,
            adding,
            require_active,
        }
    }

    pub(super) fn check(&self, domain: &Domain, usage: &DomainUsage) -> Result<(), LimitBreach> {
        limit_breach(domain, usage, self.quota, self.adding, self.require_active)
    }

    pub(super) fn refusal(&self, error: StoreError) -> WriteError {
        match error {
            StoreError::Limit(breach) => WriteError::Limit(breach),
            other => WriteError::Store(other),
        }
    }
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

    fn breach_text(
        d: &Domain,
        usage: &DomainUsage,
        quota: u64,
        adding: bool,
        require_active: bool,
    ) -> String {
        match limit_breach(d, usage, quota, adding, require_active) {
            Err(breach) => breach.to_string(),
            Ok(()) => String::new(),
        }
    }

    #[test]
    fn limits_hold() {
        let d = domain();
        let empty = DomainUsage::default();
        assert!(limit_breach(&d, &empty, 5 << 30, true, true).is_ok());
        let full = DomainUsage {
            mailboxes: 2,
            quota_sum: 4 << 30,
            unlimited_mailboxes: 0,
        };
        assert!(breach_text(&d, &full, 1 << 30, true, true).contains("mailbox limit"));
        assert!(
            limit_breach(&d, &full, 1 << 30, false, true).is_ok(),
            "changing is not adding"
        );
        assert!(breach_text(&d, &empty, 11 << 30, true, true).contains("maximum of 10G"));
        assert!(breach_text(&d, &empty, 0, true, true).contains("unlimited"));
        let used = DomainUsage {
            mailboxes: 1,
            quota_sum: 10 << 30,
            unlimited_mailboxes: 0,
        };
        assert!(breach_text(&d, &used, 6 << 30, true, true).contains("total quota"));
        assert!(limit_breach(&d, &used, 5 << 30, true, true).is_ok());
    }

    #[test]
    fn disabled_domain_refuses_sign_ins_only() {
        let mut d = domain();
        d.active = false;
        assert!(breach_text(&d, &DomainUsage::default(), 1, true, true).contains("disabled"));
        assert!(limit_breach(&d, &DomainUsage::default(), 1, true, false).is_ok());
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
        assert!(limit_breach(&d, &lots, 0, true, true).is_ok());
    }

    #[test]
    fn the_guard_hands_back_the_breach_it_refused_with() {
        let d = domain();
        let full = DomainUsage {
            mailboxes: 2,
            quota_sum: 0,
            unlimited_mailboxes: 0,
        };
        let guard = LimitGuard::new(1 << 30, true, true);
        let breach = guard.check(&d, &full).unwrap_err();
        assert!(breach.to_string().contains("mailbox limit"), "{breach}");
        match guard.refusal(StoreError::Limit(breach)) {
            WriteError::Limit(LimitBreach::MailboxCount { max: 2, .. }) => {}
            other => panic!("expected the mailbox-count breach, got {other:?}"),
        }
        match guard.refusal(StoreError::TimedOut(std::time::Duration::from_secs(1))) {
            WriteError::Store(StoreError::TimedOut(_)) => {}
            other => panic!("expected the store's error, got {other:?}"),
        }
    }
}
