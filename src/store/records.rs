//! The rows the store reads and writes, as plain values, and the text forms some of their
//! fields have on the command line, in the config file and in the database.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;

use crate::clock::UnixTime;
use crate::names::{by_name, Protocol, Protocols};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Domain {
    pub name: String,
    /// An inactive domain refuses every login of its mailboxes and receives no mail.
    pub active: bool,
    /// `None` means no limit.
    pub max_mailboxes: Option<u64>,
    /// Largest quota a single mailbox may have; `None` means no limit.
    pub max_quota: Option<u64>,
    /// Sum of all mailbox quotas; `None` means no limit.
    pub total_quota: Option<u64>,
    pub created_at: UnixTime,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DomainUsage {
    pub mailboxes: u64,
    /// Sum of the quotas of all mailboxes; unlimited (0) mailboxes add nothing.
    pub quota_sum: u64,
    /// Mailboxes whose quota is 0, i.e. unlimited.
    pub unlimited_mailboxes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AliasDomain {
    pub name: String,
    /// The domain whose mailboxes receive the mail addressed to this one.
    pub target: String,
    /// An inactive alias domain is not served: its addresses are unknown.
    pub active: bool,
    pub created_at: UnixTime,
}

/// Whether a mailbox may log in, receive mail, or neither (mailcow's 0/1/2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxState {
    Disabled,
    Active,
    /// Receives mail but may not log in.
    NoLogin,
}

impl MailboxState {
    pub fn code(self) -> i64 {
        match self {
            MailboxState::Disabled => 0,
            MailboxState::Active => 1,
            MailboxState::NoLogin => 2,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(MailboxState::Disabled),
            1 => Some(MailboxState::Active),
            2 => Some(MailboxState::NoLogin),
            _ => None,
        }
    }
}

impl FromStr for MailboxState {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "0" | "disabled" => Ok(MailboxState::Disabled),
            "1" | "active" => Ok(MailboxState::Active),
            "2" | "nologin" | "no-login" => Ok(MailboxState::NoLogin),
            other => Err(ValueError::MailboxState(other.to_string())),
        }
    }
}

impl fmt::Display for MailboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MailboxState::Disabled => "0 (disabled)",
            MailboxState::Active => "1 (active)",
            MailboxState::NoLogin => "2 (no login)",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthSource {
    /// The mailbox's own stored password (and app passwords).
    Local,
    /// The identity provider; mail clients use app passwords only.
    Oidc,
}

impl AuthSource {
    pub const ALL: [AuthSource; 2] = [AuthSource::Local, AuthSource::Oidc];

    pub fn name(self) -> &'static str {
        match self {
            AuthSource::Local => "local",
            AuthSource::Oidc => "oidc",
        }
    }
}

impl FromStr for AuthSource {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        by_name(&AuthSource::ALL, AuthSource::name, s)
            .ok_or_else(|| ValueError::AuthSource(s.trim().to_ascii_lowercase()))
    }
}

display_via!(AuthSource, name);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Template {
    pub name: String,
    /// Bytes; 0 means unlimited.
    pub quota: u64,
    pub protocols: Protocols,
    pub state: MailboxState,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
}

impl Template {
    /// A short fingerprint of what applying the template sets, so a sign-in can tell that
    /// the template changed since it was last applied to a mailbox.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = format!("v1|{}|{}|{}", self.quota, self.protocols, self.state.code());
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// The settings a template decides that the postmaster set on one mailbox by hand
/// (`mailbox add`/`mailbox set` with `--quota`, `--protocols`, `--active`). They are the
/// postmaster's word: re-applying a template never undoes them; `mailbox set --template`
/// or `--reset` hands them back to the template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub quota: bool,
    pub protocols: bool,
    pub state: bool,
}

impl Overrides {
    pub const NONE: Overrides = Overrides {
        quota: false,
        protocols: false,
        state: false,
    };

    pub fn is_empty(self) -> bool {
        self == Overrides::NONE
    }

    fn names(self) -> Vec<&'static str> {
        [
            (self.quota, "quota"),
            (self.protocols, "protocols"),
            (self.state, "state"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }

    /// Reads the stored column (`quota,protocols,state`, any subset); an unknown word
    /// written by a newer version is ignored.
    pub fn from_stored(s: &str) -> Self {
        s.split(',')
            .fold(Overrides::NONE, |o, word| match word.trim() {
                "quota" => Overrides { quota: true, ..o },
                "protocols" => Overrides {
                    protocols: true,
                    ..o
                },
                "state" => Overrides { state: true, ..o },
                _ => o,
            })
    }
}

/// The stored form: `quota,protocols,state` or a subset; empty for none.
impl fmt::Display for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl Serialize for Overrides {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mapping {
    /// Compared exactly (after trimming) with the values of the configured claim.
    pub claim_value: String,
    /// When several mappings match, the lowest position chooses the template.
    pub position: i64,
    pub template: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    pub address: String,
    pub domain: String,
    /// Never serialised: a hash is a secret too.
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub auth_source: AuthSource,
    /// The identity-provider account the mailbox is bound to: both set, or neither.
    pub oidc_issuer: Option<String>,
    pub oidc_subject: Option<String>,
    pub display_name: String,
    /// Bytes; 0 means unlimited.
    pub quota: u64,
    pub protocols: Protocols,
    pub state: MailboxState,
    /// The template last applied, and its [`Template::content_hash`] then: a sign-in
    /// applies the template again when either differs.
    pub template: Option<String>,
    pub template_hash: Option<String>,
    /// Which of quota, protocols and state the postmaster set on this mailbox; applying a
    /// template (at sign-in) leaves those as they are.
    pub overrides: Overrides,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    pub last_login: Option<LastUseInfo>,
}

impl Mailbox {
    pub fn has_password(&self) -> bool {
        self.password_hash.as_deref().is_some_and(|h| !h.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LastUseInfo {
    pub at: UnixTime,
    /// The client's address, as the front door gave it.
    pub ip: Option<String>,
    /// The service the client logged in to (`imap`, `smtp`, …).
    pub service: Option<String>,
}

/// What the decision core needs about a login name, read in one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginView {
    pub address: String,
    pub password_hash: Option<String>,
    pub auth_source: AuthSource,
    pub protocols: Protocols,
    pub state: MailboxState,
    pub domain_active: bool,
    pub quota: u64,
    /// Why the identity provider's answer suspended the mailbox's mail logins
    /// (`identity_revoked`), if it did; lifted by the next web sign-in.
    pub identity_suspended: Option<String>,
    /// The last web sign-in through the provider; `max_days_without_sign_in` counts from it.
    pub last_sign_in_at: Option<UnixTime>,
}

/// What the web page re-checks a session against on every request, read in one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    pub address: String,
    pub auth_source: AuthSource,
    pub oidc_issuer: Option<String>,
    pub oidc_subject: Option<String>,
    pub protocols: Protocols,
    pub state: MailboxState,
    pub domain_active: bool,
    /// Bumped by every password change, auth-source switch and identity unlink.
    pub credential_generation: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAppPassword {
    pub mailbox: String,
    pub name: String,
    pub lookup_hash: String,
    pub protocols: Protocols,
    pub networks: Vec<ipnet::IpNet>,
    pub expires_at: Option<UnixTime>,
    pub created_at: UnixTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppPassword {
    pub id: i64,
    pub mailbox: String,
    pub name: String,
    pub protocols: Protocols,
    pub networks: Vec<ipnet::IpNet>,
    pub expires_at: Option<UnixTime>,
    pub created_at: UnixTime,
    pub last_used: Option<LastUseInfo>,
}

impl AppPassword {
    pub fn allows(&self, protocol: Protocol) -> bool {
        self.protocols.contains(protocol)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alias {
    pub address: String,
    pub target: String,
    pub domain: String,
    pub created_at: UnixTime,
}

/// Lets `mailbox` use `pattern` as envelope sender: an address, `@domain`, or `*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SendAs {
    pub mailbox: String,
    pub pattern: String,
    pub created_at: UnixTime,
}

/// What the sender policy needs about an authenticated mailbox, read in one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderAccount {
    pub address: String,
    pub domain: String,
    pub state: MailboxState,
    pub protocols: Protocols,
    pub domain_active: bool,
    /// The limits of the mailbox's template; `None` means the configured default applies.
    pub send_limits: Option<SendLimits>,
}

/// How a domain name relates to the domains this server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServedDomain {
    Domain {
        active: bool,
    },
    /// Another name for `target`: `x@name` means `x@target`.
    Alias {
        target: String,
        active: bool,
    },
}

/// The stored rule that lets a mailbox use an envelope sender other than its own address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendPermission {
    /// The sender is an alias with the mailbox among its targets.
    Alias { address: String },
    /// A send-as grant: an address, `@domain` or `*`.
    SendAs { pattern: String },
}

/// Longest window a sending limit may have; counters live that long in memory.
pub const MAX_LIMIT_WINDOW_SECS: u64 = 31 * 86_400;
/// More windows than this would only make every request slower.
pub const MAX_LIMIT_WINDOWS: usize = 8;

/// At most `messages` messages and `recipients` recipients per `seconds`; `None` leaves
/// that count uncapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LimitWindow {
    pub seconds: u64,
    pub messages: Option<u64>,
    pub recipients: Option<u64>,
}

/// Sending limits, one entry per window length, shortest first; empty means no limits.
///
/// Text form (config, CLI, database): `WINDOW:MESSAGES:RECIPIENTS` items separated by
/// commas, e.g. `1m:10:50,1h:100:1000,1d:500:-`, where WINDOW is a number with `s`, `m`,
/// `h` or `d`, and `-` leaves a count uncapped; `none` for no limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendLimits(Vec<LimitWindow>);

impl SendLimits {
    /// Checks, sorts by window and refuses duplicate windows.
    pub fn new(mut windows: Vec<LimitWindow>) -> Result<Self, LimitsError> {
        if windows.len() > MAX_LIMIT_WINDOWS {
            return Err(LimitsError::TooManyWindows);
        }
        for w in &windows {
            if w.seconds == 0 || w.seconds > MAX_LIMIT_WINDOW_SECS {
                return Err(LimitsError::WindowLength(w.seconds));
            }
            if w.messages.is_none() && w.recipients.is_none() {
                return Err(LimitsError::CapsNothing(w.seconds));
            }
        }
        windows.sort_by_key(|w| w.seconds);
        if windows.windows(2).any(|p| p[0].seconds == p[1].seconds) {
            return Err(LimitsError::RepeatedWindow);
        }
        Ok(SendLimits(windows))
    }

    pub fn none() -> Self {
        SendLimits(Vec::new())
    }

    pub fn windows(&self) -> &[LimitWindow] {
        &self.0
    }

    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for SendLimits {
    type Err = LimitsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") {
            return Ok(SendLimits::none());
        }
        let windows = s
            .split(',')
            .map(|item| {
                let parts: Vec<&str> = item.trim().split(':').map(str::trim).collect();
                let [window, messages, recipients] = parts[..] else {
                    return Err(LimitsError::NotAnItem(item.to_string()));
                };
                Ok(LimitWindow {
                    seconds: parse_window(window)?,
                    messages: parse_cap(messages)?,
                    recipients: parse_cap(recipients)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        SendLimits::new(windows)
    }
}

impl fmt::Display for SendLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let cap = |c: Option<u64>| c.map_or_else(|| "-".to_string(), |n| n.to_string());
        let items: Vec<String> = self
            .0
            .iter()
            .map(|w| {
                format!(
                    "{}:{}:{}",
                    format_window(w.seconds),
                    cap(w.messages),
                    cap(w.recipients)
                )
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

impl Serialize for SendLimits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// `90s`, `15m`, `1h`, `1d`; a bare number is seconds.
pub fn parse_window(s: &str) -> Result<u64, LimitsError> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(LimitsError::Window(s.to_string())),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|&n| n > 0)
        .ok_or_else(|| LimitsError::Window(s.to_string()))
}

/// The shortest exact way to write a window: `1d`, `90m`, `45s`.
pub fn format_window(seconds: u64) -> String {
    match seconds {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn parse_cap(s: &str) -> Result<Option<u64>, LimitsError> {
    if s == "-" {
        return Ok(None);
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| LimitsError::Count(s.to_string()))
}

/// A successful login to remember, per mailbox and per app password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastUse {
    pub mailbox: String,
    pub app_password_id: Option<i64>,
    pub at: UnixTime,
    pub ip: Option<String>,
    pub service: String,
}

pub fn format_networks(networks: &[ipnet::IpNet]) -> String {
    networks
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn parse_networks(s: &str) -> Result<Vec<ipnet::IpNet>, ValueError> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| ValueError::Network(n.to_string()))
        })
        .collect()
}

/// A field given as text (a command-line option, a config key, a stored column) that is
/// none of the values it may take. The message says which values would do.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error(
        "invalid active state {0:?}: use 1 (active), 0 (disabled) or 2 (receives mail, no login)"
    )]
    MailboxState(String),
    #[error("invalid authentication source {0:?}: use local or oidc")]
    AuthSource(String),
    #[error("invalid network {0:?}: use an address or CIDR such as 192.0.2.0/24")]
    Network(String),
}

/// Why a text is not a [`SendLimits`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LimitsError {
    #[error("at most {MAX_LIMIT_WINDOWS} windows")]
    TooManyWindows,
    #[error("window {} must be between 1s and 31d", format_window(*.0))]
    WindowLength(u64),
    #[error("window {} caps neither messages nor recipients", format_window(*.0))]
    CapsNothing(u64),
    #[error("each window length may appear only once")]
    RepeatedWindow,
    #[error("{0:?} is not WINDOW:MESSAGES:RECIPIENTS, e.g. 1h:100:1000")]
    NotAnItem(String),
    #[error("window {0:?}: use a number with s, m, h or d, e.g. 1h")]
    Window(String),
    #[error("{0:?} is not a count (a number, or - for no cap)")]
    Count(String),
}

// The command line's `CliError::usage(impl Into<String>)` takes a value's error this way.
impl From<ValueError> for String {
    fn from(e: ValueError) -> String {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_follows_content_only() {
        let mut t = Template {
            name: "staff".into(),
            quota: 1 << 30,
            protocols: Protocols::ALL,
            state: MailboxState::Active,
            created_at: 1,
            updated_at: 2,
        };
        let h = t.content_hash();
        t.updated_at = 99;
        assert_eq!(t.content_hash(), h);
        t.quota = 2 << 30;
        assert_ne!(t.content_hash(), h);
    }

    #[test]
    fn overrides_round_trip_and_read_leniently() {
        let all = Overrides {
            quota: true,
            protocols: true,
            state: true,
        };
        assert_eq!(all.to_string(), "quota,protocols,state");
        assert_eq!(Overrides::from_stored(&all.to_string()), all);
        assert_eq!(Overrides::NONE.to_string(), "");
        assert_eq!(Overrides::from_stored(""), Overrides::NONE);
        let state = Overrides::from_stored("state, colour");
        assert_eq!(
            state,
            Overrides {
                state: true,
                ..Overrides::NONE
            }
        );
        assert_eq!(serde_json::to_string(&state).unwrap(), r#"["state"]"#);
    }

    #[test]
    fn networks_parse_and_print() {
        let n = parse_networks("192.0.2.7, 2001:db8::/32,10.1.2.3/8").unwrap();
        assert_eq!(format_networks(&n), "192.0.2.7/32,2001:db8::/32,10.0.0.0/8");
        assert!(parse_networks("300.1.1.1").is_err());
        assert_eq!(parse_networks("").unwrap(), vec![]);
    }

    #[test]
    fn send_limits_parse_and_print() {
        let l: SendLimits = " 1d:500:- , 1m:10:50,90m:-:1000".parse().unwrap();
        assert_eq!(l.to_string(), "1m:10:50,90m:-:1000,1d:500:-");
        assert_eq!(l.to_string().parse::<SendLimits>().unwrap(), l);
        assert_eq!(l.windows()[0].seconds, 60);
        assert_eq!("none".parse::<SendLimits>().unwrap(), SendLimits::none());
        assert_eq!(SendLimits::none().to_string(), "none");
        assert_eq!(
            "3600:1:2".parse::<SendLimits>().unwrap().to_string(),
            "1h:1:2"
        );
        for bad in [
            "",
            "1h",
            "1h:1",
            "1h:1:2:3",
            "1h:-:-",
            "0s:1:1",
            "32d:1:1",
            "1w:1:1",
            "1h:x:1",
            "1h:-1:1",
            "1h:1:1,60m:2:2",
            "1s:1:1,2s:1:1,3s:1:1,4s:1:1,5s:1:1,6s:1:1,7s:1:1,8s:1:1,9s:1:1",
        ] {
            assert!(bad.parse::<SendLimits>().is_err(), "{bad:?}");
        }
    }
}

/// A mailbox bound to an identity-provider account, as the liveness check reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedMailbox {
    pub address: String,
    pub issuer: String,
    pub subject: String,
    /// The sealed refresh token (see `oidc::sealed`), if the provider issued one.
    pub sealed_refresh_token: Option<String>,
    pub suspension: Option<Suspension>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suspension {
    pub at: UnixTime,
    pub reason: String,
}

/// What `mailbox show` says about a mailbox's standing with the identity provider.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IdentityStanding {
    pub has_refresh_token: bool,
    pub suspension: Option<Suspension>,
    pub checked_at: Option<UnixTime>,
    pub answer: Option<String>,
    pub last_sign_in_at: Option<UnixTime>,
}
