//! The domain limits a mailbox write is checked against, inside the transaction that makes
//! it.
//!
//! The rules themselves are provisioning's (`provision::limit_breach`); the store runs the
//! caller's check with the domain row locked and the domain's usage read in the same
//! transaction, so limits hold even when many sign-ins for one domain arrive at once. A
//! refusal comes back unchanged as [`StoreError::Limit`](super::StoreError::Limit), so a
//! sign-in can tell a person which limit it was.

use thiserror::Error;

use super::records::{Domain, DomainUsage};
use crate::size::format_size;

/// The check a mailbox write runs with its domain locked: `Err` refuses the write.
pub type LimitCheck<'a> = &'a (dyn Fn(&Domain, &DomainUsage) -> Result<(), LimitBreach> + Sync);

/// Which domain rule a mailbox would break.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LimitBreach {
    #[error("domain {0} is disabled")]
    DomainDisabled(String),
    #[error("the mailbox limit for {domain} is reached ({max} mailboxes)")]
    MailboxCount { domain: String, max: u64 },
    #[error("{domain} allows at most {} per mailbox; an unlimited quota is not allowed", format_size(*.max))]
    UnlimitedQuota { domain: String, max: u64 },
    #[error("quota {} is over the maximum of {} per mailbox in {domain}", format_size(*.quota), format_size(*.max))]
    QuotaOverMax {
        domain: String,
        quota: u64,
        max: u64,
    },
    #[error("{domain} has a total quota of {}; every mailbox needs a finite quota", format_size(*.total))]
    TotalNeedsFinite { domain: String, total: u64 },
    #[error("quota {} would exceed the total quota of {domain}: {} of {} already assigned", format_size(*.quota), format_size(*.used), format_size(*.total))]
    TotalQuota {
        domain: String,
        quota: u64,
        used: u64,
        total: u64,
    },
}
