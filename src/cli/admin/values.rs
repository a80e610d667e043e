//! Values as a postmaster types them on the command line and as the commands show them back,
//! shared by the nouns that have them (mailboxes and templates both take a quota, protocols
//! and a state).

use crate::cli::{CliError, SettingFields};
use crate::clock::{format_time, UnixTime};
use crate::names::Protocols;
use crate::size::{format_size, parse_size};
use crate::store::{LastUseInfo, MailboxState};

/// A size such as `10G`.
pub(super) fn size(v: &str) -> Result<u64, CliError> {
    Ok(parse_size(v)?)
}

/// A mailbox quota, where 0 means unlimited.
pub(super) fn show_quota(q: u64) -> String {
    if q == 0 {
        "unlimited".into()
    } else {
        format_size(q)
    }
}

/// Quota, protocols and state as given (`--quota`, `--protocols`, `--active`); `None`
/// where an option was left out.
pub(super) struct Settings {
    pub(super) quota: Option<u64>,
    pub(super) protocols: Option<Protocols>,
    pub(super) state: Option<MailboxState>,
}

pub(super) fn settings(given: &SettingFields) -> Result<Settings, CliError> {
    let state = |s: &str| s.parse::<MailboxState>().map_err(CliError::usage);
    Ok(Settings {
        quota: given.quota.as_deref().map(size).transpose()?,
        protocols: given
            .protocols
            .as_deref()
            .map(Protocols::parse_list)
            .transpose()?,
        state: given.active.as_deref().map(state).transpose()?,
    })
}

/// A table row of two names and when it was made: aliases, alias domains, send-as grants.
pub(super) fn dated_row(first: &str, second: &str, at: UnixTime) -> Vec<String> {
    vec![first.to_string(), second.to_string(), format_time(at)]
}

/// When, from where and over which service a mailbox or an app password was last used.
pub(super) fn describe_use(l: &LastUseInfo) -> String {
    format!(
        "{} from {} ({})",
        format_time(l.at),
        l.ip.as_deref().unwrap_or("unknown address"),
        l.service.as_deref().unwrap_or("?")
    )
}
