//! Postfix policy decisions: may this authenticated user send as this envelope sender, may
//! the mailbox still send at all, and is it within its sending limits.
//!
//! [`PolicyService::decide`] turns one decoded [`PolicyRequest`] into a [`Decision`] (or a
//! [`DecisionError`] when the store is in trouble) and writes one audit line for it. It
//! knows nothing of sockets: the connection driver in `server::policy_conn` and
//! `mailauthd policy test` both call it.
//!
//! Rules, in order, for a session with `sasl_username`:
//! 1. The mailbox must exist, be active (state 1), allow SMTP, and its domain be active —
//!    checked on every request, so a change after login takes effect at the next MAIL or RCPT.
//! 2. A non-null envelope sender must be the mailbox itself, a sub-address of it
//!    (`user+tag@domain`), the same local part in an active alias domain of its domain, an
//!    alias with the mailbox among its targets, or covered by a send-as grant (address,
//!    `@domain`, `*`). Sub-addressing and alias domains combine with aliases and grants.
//!    As in Postfix, the whole address is looked up first: an address that is itself a
//!    mailbox or an alias here is never a sub-address of another one (with delimiters
//!    `+-`, `alice-bob@` is not `alice`'s when the mailbox `alice-bob@` exists).
//! 3. The null sender is allowed or refused as configured.
//! 4. Sending limits, unless the client is in a trusted network.
//!
//! A session without `sasl_username` gets `DUNNO` (Postfix's other restrictions decide),
//! or, with `refuse_forged_local_senders`, `REJECT` when its sender claims a domain served
//! here and the client is not in a trusted network.
//!
//! A permitted request gets `DUNNO`, never `OK`: in `smtpd_recipient_restrictions` an `OK`
//! would also skip the relay checks that follow.

mod limits;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use thiserror::Error;

pub use limits::{
    Counted, Counters, Exceeded, SendCounters, Usage, MESSAGES_PER_USER, RECIPIENTS_PER_MESSAGE,
};

use crate::audit::{canonical_ip, printable};
use crate::clock::Clock;
use crate::names::{Address, Protocol};
use crate::proto::postfix_policy::{Action, Limits, PolicyError, PolicyRequest};
use crate::store::{
    format_window, MailboxState, PolicyStore, SendLimits, SendPermission, SenderAccount,
    ServedDomain, StoreError,
};

/// What to do with the null sender `<>` from an authenticated client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NullSender {
    Allow,
    Refuse,
}

/// The texts after `REJECT` / `DEFER_IF_PERMIT`, with `{placeholders}` filled in per
/// request. Each starts with an enhanced status code Postfix passes on to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTexts {
    /// `{sender}`, `{user}`.
    pub not_owned: String,
    /// `{user}`.
    pub null_sender: String,
    /// `{user}`, `{sender}`.
    pub no_access: String,
    /// `{sender}`.
    pub forged_sender: String,
    /// `{user}`, `{limit}`, `{what}` (messages or recipients), `{window}` (e.g. 1h).
    pub over_limit: String,
}

impl ReplyTexts {
    pub const NOT_OWNED_PLACEHOLDERS: &'static [&'static str] = &["sender", "user"];
    pub const NULL_SENDER_PLACEHOLDERS: &'static [&'static str] = &["user"];
    pub const NO_ACCESS_PLACEHOLDERS: &'static [&'static str] = &["user", "sender"];
    pub const FORGED_SENDER_PLACEHOLDERS: &'static [&'static str] = &["sender"];
    pub const OVER_LIMIT_PLACEHOLDERS: &'static [&'static str] =
        &["user", "limit", "what", "window"];
}

impl Default for ReplyTexts {
    fn default() -> Self {
        ReplyTexts {
            not_owned: "5.7.1 <{sender}>: not owned by {user}".into(),
            null_sender: "5.7.1 <>: the null sender is not allowed for {user}".into(),
            no_access: "5.7.1 <{user}>: this account may not send mail".into(),
            forged_sender: "5.7.1 <{sender}>: authentication required to send as this address"
                .into(),
            over_limit:
                "4.7.1 <{user}>: sending limit of {limit} {what} per {window} reached, try again later"
                    .into(),
        }
    }
}

/// What is wrong with a reply text in the config.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReplyTextError {
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must start with an enhanced status code {class}.X.Y, e.g. {class}.7.1")]
    NoStatusCode { class: char },
    #[error("has a '{{' without '}}'")]
    UnclosedPlaceholder,
    #[error("unknown placeholder {{{name}}}; this text knows {known}")]
    UnknownPlaceholder { name: String, known: String },
}

/// Checks a reply text: a `5.x.x` (`class` 5) or `4.x.x` enhanced status code first, only
/// the given placeholders, no control characters. For the config check.
pub fn check_reply_text(
    text: &str,
    class: char,
    placeholders: &[&str],
) -> Result<(), ReplyTextError> {
    if text.chars().any(char::is_control) {
        return Err(ReplyTextError::ControlCharacter);
    }
    let code = text.split_whitespace().next().unwrap_or("");
    let mut parts = code.split('.');
    let valid_code = parts.next() == Some(class.encode_utf8(&mut [0; 4]))
        && parts.clone().count() == 2
        && parts.all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if !valid_code {
        return Err(ReplyTextError::NoStatusCode { class });
    }
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(ReplyTextError::UnclosedPlaceholder);
        };
        let name = &after[..close];
        if !placeholders.contains(&name) {
            let known: Vec<String> = placeholders.iter().map(|p| format!("{{{p}}}")).collect();
            return Err(ReplyTextError::UnknownPlaceholder {
                name: name.to_string(),
                known: known.join(", "),
            });
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn render(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (close, *v))
        });
        match value {
            Some((close, v)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `[policy]` section, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySettings {
    /// Characters that start a sub-address tag (Postfix's `recipient_delimiter`); empty
    /// turns sub-addressing off.
    pub subaddress_delimiters: String,
    pub null_sender: NullSender,
    pub refuse_forged_local_senders: bool,
    /// Exempt from sending limits and from the forged-sender check.
    pub trusted_networks: Vec<IpNet>,
    /// For mailboxes whose template has no limits of its own.
    pub default_limits: SendLimits,
    pub texts: ReplyTexts,
    /// How long a connection may wait for the next request before the daemon closes it.
    pub idle_timeout: Duration,
    /// Size caps for the wire codec.
    pub codec: Limits,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            subaddress_delimiters: "+".into(),
            null_sender: NullSender::Allow,
            refuse_forged_local_senders: false,
            trusted_networks: Vec::new(),
            default_limits: SendLimits::none(),
            texts: ReplyTexts::default(),
            // Postfix drops idle policy connections after smtpd_policy_service_max_idle
            // (300 s); waiting a little longer lets Postfix be the one to hang up.
            idle_timeout: Duration::from_secs(330),
            codec: Limits::default(),
        }
    }
}

/// Which rule decided, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No `sasl_username`: not ours to judge.
    Unauthenticated,
    /// Unauthenticated, from a trusted network: the forged-sender check does not apply.
    TrustedNetwork,
    /// Authenticated, before `MAIL FROM` (no sender yet).
    NoSender,
    OwnAddress,
    Subaddress,
    AliasDomain,
    Alias,
    SendAs,
    NullSenderAllowed,
    NotOwned,
    NullSenderRefused,
    /// `sasl_username` names no mailbox (deleted since login, or not a mailbox here).
    MailboxUnknown,
    MailboxDisabled,
    MailboxNoLogin,
    DomainDisabled,
    SmtpNotAllowed,
    ForgedLocalSender,
    MessageLimit,
    RecipientLimit,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::TrustedNetwork => "trusted_network",
            Reason::NoSender => "no_sender",
            Reason::OwnAddress => "own_address",
            Reason::Subaddress => "subaddress",
            Reason::AliasDomain => "alias_domain",
            Reason::Alias => "alias",
            Reason::SendAs => "send_as",
            Reason::NullSenderAllowed => "null_sender_allowed",
            Reason::NotOwned => "not_owned",
            Reason::NullSenderRefused => "null_sender_refused",
            Reason::MailboxUnknown => "mailbox_unknown",
            Reason::MailboxDisabled => "mailbox_disabled",
            Reason::MailboxNoLogin => "mailbox_no_login",
            Reason::DomainDisabled => "domain_disabled",
            Reason::SmtpNotAllowed => "smtp_not_allowed",
            Reason::ForgedLocalSender => "forged_local_sender",
            Reason::MessageLimit => "message_limit",
            Reason::RecipientLimit => "recipient_limit",
        }
    }
}

display_via!(Reason, code);

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing against it: `DUNNO`, so Postfix's other restrictions decide.
    Dunno(Reason),
    /// `REJECT` with this text.
    Reject(Reason, String),
    /// `DEFER_IF_PERMIT` with this text: a 4xx, so the client retries later, unless a
    /// later restriction rejects outright.
    DeferIfPermit(Reason, String),
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Dunno(r) | Decision::Reject(r, _) | Decision::DeferIfPermit(r, _) => *r,
        }
    }

    pub fn action(&self) -> Action {
        match self {
            Decision::Dunno(_) => Action::Dunno,
            Decision::Reject(_, text) => Action::Reject(text.clone()),
            Decision::DeferIfPermit(_, text) => Action::DeferIfPermit(text.clone()),
        }
    }

    /// `dunno`, `reject` or `defer_if_permit`.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Dunno(_) => "dunno",
            Decision::Reject(..) => "reject",
            Decision::DeferIfPermit(..) => "defer_if_permit",
        }
    }
}

/// No answer can be given. The caller must not invent one: the connection driver logs and
/// disconnects, and Postfix retries and then applies its `default_action`.
#[derive(Debug, Error)]
pub enum DecisionError {
    #[error("cannot decide: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Request(#[from] PolicyError),
}

impl DecisionError {
    pub fn code(&self) -> &'static str {
        match self {
            DecisionError::Store(e) if e.is_unavailable() => "store_unavailable",
            DecisionError::Store(_) => "store_error",
            DecisionError::Request(_) => "bad_request",
        }
    }

    pub fn is_temporary(&self) -> bool {
        matches!(self, DecisionError::Store(e) if e.is_unavailable())
    }
}

/// The policy decisions plus the sending counters; one per daemon, shared by every
/// connection.
pub struct PolicyService {
    store: Arc<dyn PolicyStore>,
    clock: Arc<dyn Clock>,
    settings: PolicySettings,
    counters: Arc<dyn SendCounters>,
}

impl PolicyService {
    /// With sending counters in this process.
    pub fn new(
        store: Arc<dyn PolicyStore>,
        clock: Arc<dyn Clock>,
        settings: PolicySettings,
    ) -> Self {
        Self::with_counters(store, clock, settings, Arc::new(Counters::default()))
    }

    /// With `counters` kept elsewhere, such as in the Redis several daemons share.
    pub fn with_counters(
        store: Arc<dyn PolicyStore>,
        clock: Arc<dyn Clock>,
        settings: PolicySettings,
        counters: Arc<dyn SendCounters>,
    ) -> Self {
        PolicyService {
            store,
            clock,
            settings,
            counters,
        }
    }

    pub fn settings(&self) -> &PolicySettings {
        &self.settings
    }

    /// Users with sending-limit counters in this daemon's memory (they go once their
    /// windows close).
    pub fn counted_users(&self) -> usize {
        self.counters.tracked_users()
    }

    /// Decides one request and writes one audit line for it.
    pub async fn decide(&self, request: &PolicyRequest) -> Result<Decision, DecisionError> {
        // How long the decision took, for the metrics only: it decides nothing, so it is
        // measured on the monotonic clock rather than taken from the `Clock`.
        let started = std::time::Instant::now();
        let result = self.evaluate(request).await;
        audit(request, &result);
        let (action, reason) = match &result {
            Ok(decision) => (decision.label(), decision.reason().code()),
            Err(e) => ("error", e.code()),
        };
        crate::metrics::policy_decided(action, reason, started.elapsed());
        result
    }

    async fn evaluate(&self, req: &PolicyRequest) -> Result<Decision, DecisionError> {
        req.validate()?;
        let trusted = req.client_address.is_some_and(|ip| self.is_trusted(ip));
        match req.sasl_username.as_deref() {
            Some(login) => self.authenticated(req, login, trusted).await,
            None => self.unauthenticated(req, trusted).await,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.settings
            .trusted_networks
            .iter()
            .any(|n| n.contains(&ip))
    }

    async fn authenticated(
        &self,
        req: &PolicyRequest,
        login: &str,
        trusted: bool,
    ) -> Result<Decision, DecisionError> {
        let sender_shown = shown_sender(req.sender.as_deref());
        let no_access = |reason: Reason| {
            let text = render(
                &self.settings.texts.no_access,
                &[
                    ("user", &printable(login, SHOWN_CHARS)),
                    ("sender", &sender_shown),
                ],
            );
            Ok(Decision::Reject(reason, text))
        };
        let Ok(user) = Address::parse(login) else {
            return no_access(Reason::MailboxUnknown);
        };
        let Some(account) = self.store.sender_account(user.as_str()).await? else {
            return no_access(Reason::MailboxUnknown);
        };
        if let Some(reason) = access_refusal(&account) {
            return no_access(reason);
        }
        let permitted = match req.sender.as_deref() {
            None => Reason::NoSender,
            Some("") => match self.settings.null_sender {
                NullSender::Allow => Reason::NullSenderAllowed,
                NullSender::Refuse => {
                    let text = render(&self.settings.texts.null_sender, &[("user", user.as_str())]);
                    return Ok(Decision::Reject(Reason::NullSenderRefused, text));
                }
            },
            Some(sender) => match self.ownership(&account, &user, sender).await? {
                Some(reason) => reason,
                None => {
                    let text = render(
                        &self.settings.texts.not_owned,
                        &[("sender", &sender_shown), ("user", user.as_str())],
                    );
                    return Ok(Decision::Reject(Reason::NotOwned, text));
                }
            },
        };
        if !trusted {
            if let Some(decision) = self.check_limits(req, &account).await {
                return Ok(decision);
            }
        }
        Ok(Decision::Dunno(permitted))
    }

    /// Why `user` may use `sender`, or `None` if nothing allows it.
    async fn ownership(
        &self,
        account: &SenderAccount,
        user: &Address,
        sender: &str,
    ) -> Result<Option<Reason>, StoreError> {
        let Ok(sender) = Address::parse(sender) else {
            // Not an address we can compare; only an "anything" grant covers it.
            return Ok(self
                .store
                .send_permission(&account.address, &[])
                .await?
                .map(|_| Reason::SendAs));
        };
        if &sender == user {
            return Ok(Some(Reason::OwnAddress));
        }
        // The same local part in an active alias domain of a domain served here.
        let alias_target = if sender.domain() != account.domain {
            // Only a foreign domain can be an alias domain; the user's own needs no lookup.
            match self.store.served_domain(sender.domain()).await? {
                Some(ServedDomain::Alias {
                    target,
                    active: true,
                }) => Some(target),
                _ => None,
            }
        } else {
            None
        };
        let translated = alias_target
            .as_deref()
            .and_then(|target| with_domain(&sender, target));
        if translated.as_ref() == Some(user) {
            return Ok(Some(Reason::AliasDomain));
        }
        let mut candidates = vec![sender.clone()];
        candidates.extend(translated.clone());
        // Like Postfix, the whole address first: a sub-address is only a sub-address when
        // no mailbox or alias has the whole address, so with delimiters `+-` the mailbox
        // `alice-bob@` is never `alice`'s.
        if let Some(base) = strip_subaddress(&sender, &self.settings.subaddress_delimiters) {
            if !self
                .whole_address_exists(&sender, translated.as_ref())
                .await?
            {
                if &base == user {
                    return Ok(Some(Reason::Subaddress));
                }
                let translated_base = alias_target
                    .as_deref()
                    .and_then(|target| with_domain(&base, target));
                if translated_base.as_ref() == Some(user) {
                    return Ok(Some(Reason::AliasDomain));
                }
                candidates.push(base);
                candidates.extend(translated_base);
            }
        }
        let addresses: Vec<String> = candidates.into_iter().map(|a| a.to_string()).collect();
        Ok(
            match self
                .store
                .send_permission(&account.address, &addresses)
                .await?
            {
                Some(SendPermission::Alias { .. }) => Some(Reason::Alias),
                Some(SendPermission::SendAs { .. }) => Some(Reason::SendAs),
                None => None,
            },
        )
    }

    /// Whether the sender, or its translation out of an alias domain, is a mailbox or an
    /// alias here.
    async fn whole_address_exists(
        &self,
        sender: &Address,
        translated: Option<&Address>,
    ) -> Result<bool, StoreError> {
        if self.store.address_exists(sender.as_str()).await? {
            return Ok(true);
        }
        match translated {
            Some(t) => self.store.address_exists(t.as_str()).await,
            None => Ok(false),
        }
    }

    async fn check_limits(&self, req: &PolicyRequest, account: &SenderAccount) -> Option<Decision> {
        let limits = account
            .send_limits
            .as_ref()
            .unwrap_or(&self.settings.default_limits);
        if limits.is_none() {
            return None;
        }
        let instance = req.instance.as_deref();
        let usage = match req.protocol_state.as_deref()? {
            "MAIL" => Usage::Peek,
            "RCPT" => Usage::Recipient {
                instance,
                recipient: req.recipient.as_deref(),
            },
            "DATA" | "END-OF-MESSAGE" => Usage::Message {
                instance,
                recipients: req.recipient_count.unwrap_or(0),
            },
            _ => return None,
        };
        let exceeded = self
            .counters
            .check_and_count(&account.address, limits, usage, self.clock.now())
            .await
            .err()?;
        let reason = match exceeded.counted {
            Counted::Messages => Reason::MessageLimit,
            Counted::Recipients => Reason::RecipientLimit,
        };
        let text = render(
            &self.settings.texts.over_limit,
            &[
                ("user", &account.address),
                ("limit", &exceeded.limit.to_string()),
                ("what", exceeded.counted.noun()),
                ("window", &format_window(exceeded.window.seconds)),
            ],
        );
        Some(Decision::DeferIfPermit(reason, text))
    }

    async fn unauthenticated(
        &self,
        req: &PolicyRequest,
        trusted: bool,
    ) -> Result<Decision, DecisionError> {
        if !self.settings.refuse_forged_local_senders {
            return Ok(Decision::Dunno(Reason::Unauthenticated));
        }
        let Some(sender) = req.sender.as_deref().and_then(|s| Address::parse(s).ok()) else {
            return Ok(Decision::Dunno(Reason::Unauthenticated));
        };
        if self.store.served_domain(sender.domain()).await?.is_none() {
            return Ok(Decision::Dunno(Reason::Unauthenticated));
        }
        if trusted {
            return Ok(Decision::Dunno(Reason::TrustedNetwork));
        }
        let text = render(
            &self.settings.texts.forged_sender,
            &[("sender", &shown_sender(req.sender.as_deref()))],
        );
        Ok(Decision::Reject(Reason::ForgedLocalSender, text))
    }
}

/// The login-time rules, again: they may have changed since the client authenticated.
fn access_refusal(account: &SenderAccount) -> Option<Reason> {
    match account.state {
        MailboxState::Disabled => Some(Reason::MailboxDisabled),
        MailboxState::NoLogin => Some(Reason::MailboxNoLogin),
        MailboxState::Active if !account.domain_active => Some(Reason::DomainDisabled),
        MailboxState::Active if !account.protocols.contains(Protocol::Smtp) => {
            Some(Reason::SmtpNotAllowed)
        }
        MailboxState::Active => None,
    }
}

/// `user+tag@domain` → `user@domain`, cut at the first delimiter as Postfix does.
fn strip_subaddress(address: &Address, delimiters: &str) -> Option<Address> {
    let local = address.local_part();
    let cut = local.find(|c| delimiters.contains(c))?;
    if cut == 0 {
        return None;
    }
    Address::parse(&format!("{}@{}", &local[..cut], address.domain())).ok()
}

fn with_domain(address: &Address, domain: &str) -> Option<Address> {
    Address::parse(&format!("{}@{domain}", address.local_part())).ok()
}

/// Values from the wire are shown in logs and replies up to this many characters.
const SHOWN_CHARS: usize = 256;

/// The sender as the client gave it, for reply texts: bounded, one line.
fn shown_sender(sender: Option<&str>) -> String {
    match sender {
        None | Some("") => String::new(),
        Some(s) => printable(s, SHOWN_CHARS),
    }
}

/// One line per decision with fixed field names (`service`, `user`, `sender`, `rip`,
/// `state`, `action`, `reason`), like the authentication audit line.
fn audit(req: &PolicyRequest, result: &Result<Decision, DecisionError>) {
    let user = req
        .sasl_username
        .as_deref()
        .map_or_else(|| "-".into(), |s| printable(s, SHOWN_CHARS));
    let sender = match req.sender.as_deref() {
        None => "-".to_string(),
        Some("") => "<>".to_string(),
        Some(s) => printable(s, SHOWN_CHARS),
    };
    let rip = req
        .client_address
        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
    let state = req
        .protocol_state
        .as_deref()
        .map_or_else(|| "-".into(), |s| printable(s, SHOWN_CHARS));
    match result {
        Ok(d @ Decision::Dunno(_)) => {
            tracing::info!(target: "mailauthd::audit", service = "policy", user, sender, rip, state, action = d.label(), reason = d.reason().code(), "policy")
        }
        Ok(d) => {
            tracing::warn!(target: "mailauthd::audit", service = "policy", user, sender, rip, state, action = d.label(), reason = d.reason().code(), "policy")
        }
        Err(e) => {
            tracing::error!(target: "mailauthd::audit", service = "policy", user, sender, rip, state, action = "disconnect", reason = e.code(), error = %e, "policy")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_texts_render_known_placeholders() {
        let t = ReplyTexts::default();
        assert_eq!(
            render(
                &t.not_owned,
                &[("sender", "bob@x.org"), ("user", "alice@x.org")]
            ),
            "5.7.1 <bob@x.org>: not owned by alice@x.org"
        );
        assert_eq!(render("a {b} {c", &[("b", "B")]), "a B {c");
        assert_eq!(render("{x}{x}", &[("x", "1")]), "11");
    }

    #[test]
    fn default_texts_pass_their_own_check() {
        let t = ReplyTexts::default();
        for (text, class, names) in [
            (&t.not_owned, '5', ReplyTexts::NOT_OWNED_PLACEHOLDERS),
            (&t.null_sender, '5', ReplyTexts::NULL_SENDER_PLACEHOLDERS),
            (&t.no_access, '5', ReplyTexts::NO_ACCESS_PLACEHOLDERS),
            (
                &t.forged_sender,
                '5',
                ReplyTexts::FORGED_SENDER_PLACEHOLDERS,
            ),
            (&t.over_limit, '4', ReplyTexts::OVER_LIMIT_PLACEHOLDERS),
        ] {
            assert_eq!(check_reply_text(text, class, names), Ok(()), "{text}");
        }
    }

    #[test]
    fn reply_text_check_explains() {
        let names = ReplyTexts::NOT_OWNED_PLACEHOLDERS;
        assert!(check_reply_text("4.7.1 no", '5', names).is_err());
        assert!(check_reply_text("not owned", '5', names).is_err());
        assert!(check_reply_text("5.7 no", '5', names).is_err());
        assert!(check_reply_text("5.7.1234 no", '5', names).is_err());
        assert!(check_reply_text("5.7.1 {who}", '5', names)
            .unwrap_err()
            .to_string()
            .contains("{who}"));
        assert!(check_reply_text("5.7.1 {sender", '5', names).is_err());
        assert!(check_reply_text("5.7.1 a\nb", '5', names).is_err());
        assert_eq!(check_reply_text("5.7.1", '5', names), Ok(()));
    }

    #[test]
    fn subaddresses_are_cut_at_the_first_delimiter() {
        let a = |s: &str| Address::parse(s).unwrap();
        assert_eq!(
            strip_subaddress(&a("alice+news@x.org"), "+"),
            Some(a("alice@x.org"))
        );
        assert_eq!(
            strip_subaddress(&a("alice-x+y@x.org"), "+-"),
            Some(a("alice@x.org"))
        );
        assert_eq!(strip_subaddress(&a("+tag@x.org"), "+"), None);
        assert_eq!(strip_subaddress(&a("alice+tag@x.org"), ""), None);
        assert_eq!(strip_subaddress(&a("alice@x.org"), "+"), None);
    }

    #[test]
    fn mapped_ipv4_clients_match_ipv4_networks() {
        let ip: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(canonical_ip(ip), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }

    #[test]
    fn wire_values_are_printable_and_bounded() {
        assert_eq!(printable("a b\r\nc", SHOWN_CHARS), "a?b??c");
        let long = printable(&"x".repeat(1000), SHOWN_CHARS);
        assert!(long.chars().count() <= 257);
    }
}
