//! Sign-in provisioning: what an identity-provider sign-in does to the mailbox store.
//!
//! The relying party hands over claims it has already validated; this module decides whether
//! the person gets in, and creates or updates their mailbox. Every refusal carries a reason a
//! person can read and a detail for the postmaster's log.

use thiserror::Error;

use super::limits::{LimitBreach, LimitGuard, WriteError};
use super::{apply_template, insert, NewMailbox, WRITE_ATTEMPTS};
use crate::clock::Clock;
use crate::names::{Address, NameError};
use crate::sealed::{Owner, SealingKey};
use crate::secret::Secret;
use crate::store::{AuthSource, Mailbox, MailboxState, Mapping, Store, StoreError, Template};

/// Display names come from the provider; keep what we store bounded.
const MAX_DISPLAY_NAME: usize = 200;

/// What the identity provider said about the person, already validated by the relying party
/// (signature, issuer, audience, expiry, nonce) and read from the configured claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignInClaims {
    pub issuer: String,
    pub subject: String,
    /// The address claim as sent; parsed (and so lower-cased, IDNA-encoded) here.
    pub address: String,
    /// `None` when the provider does not send `email_verified` at all. Only `Some(true)`
    /// lets a sign-in in while [`SignInRules::require_verified_email`] is on.
    pub email_verified: Option<bool>,
    pub display_name: Option<String>,
    /// The template claim: one string or a list, in the provider's order.
    pub template_values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignInRules {
    /// Create missing mailboxes and re-apply templates; off means existing mailboxes only.
    pub provision: bool,
    /// Refuse a sign-in whose provider does not say `email_verified: true`, whichever claim
    /// the address comes from (`[oidc] require_verified_email`). Off only for providers
    /// that never send the claim; `false` is refused either way.
    pub require_verified_email: bool,
}

impl SignInRules {
    /// The defaults of an `[oidc]` section that sets neither key.
    pub const DEFAULT: SignInRules = SignInRules {
        provision: true,
        require_verified_email: true,
    };
}

/// How a sign-in that let the person in left their mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedIn {
    Created(Mailbox),
    Updated(Mailbox),
    Unchanged(Mailbox),
    /// The template asks for something the domain's limits do not allow now; the mailbox
    /// keeps its old values and the next sign-in tries again.
    UpdateDeferred {
        mailbox: Mailbox,
        reason: String,
    },
}

impl SignedIn {
    pub fn mailbox(&self) -> &Mailbox {
        match self {
            SignedIn::Created(m) | SignedIn::Updated(m) | SignedIn::Unchanged(m) => m,
            SignedIn::UpdateDeferred { mailbox, .. } => mailbox,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            SignedIn::Created(_) => "created",
            SignedIn::Updated(_) => "updated",
            SignedIn::Unchanged(_) => "unchanged",
            SignedIn::UpdateDeferred { .. } => "update_deferred",
        }
    }
}

/// Why a sign-in was refused. `Display` is the postmaster's detail for the log;
/// [`SignInRefusal::person_message`] is what the person is shown.
#[derive(Debug, Error)]
pub enum SignInRefusal {
    #[error("the provider says the address {0} is not verified (email_verified = false)")]
    EmailNotVerified(String),
    #[error("the provider did not say that the address {0} is verified (no email_verified claim); with a provider that never sends it, set [oidc] require_verified_email = false")]
    EmailVerifiedMissing(String),
    #[error("the address claim {0:?} is not a usable mail address: {1}")]
    BadAddress(String, NameError),
    #[error("domain {0} is not served here")]
    DomainNotServed(String),
    #[error("domain {0} is disabled")]
    DomainDisabled(String),
    #[error("no mapping matches the template claim {values:?} and there is no default template")]
    NoTemplate { values: Vec<String> },
    #[error("template {0} is mapped but does not exist")]
    MissingTemplate(String),
    #[error("{0}")]
    Limit(LimitBreach),
    #[error("mailbox {0} is disabled")]
    MailboxDisabled(String),
    #[error("mailbox {0} receives mail but may not log in")]
    MailboxNoLogin(String),
    #[error(
        "mailbox {0} has auth source local; a sign-in through the provider does not take it over"
    )]
    LocalMailbox(String),
    #[error("mailbox {address} is bound to {bound}, not to {subject} at {issuer}")]
    OtherAccount {
        address: String,
        bound: String,
        issuer: String,
        subject: String,
    },
    #[error("subject {subject} is already bound to mailbox {existing}, not {address}")]
    LinkedElsewhere {
        subject: String,
        existing: String,
        address: String,
    },
    #[error("mailbox {0} does not exist and provisioning is off")]
    NoMailbox(String),
    #[error("store: {0}")]
    Store(StoreError),
}

impl SignInRefusal {
    /// A specific, non-secret reason for the person signing in.
    pub fn person_message(&self) -> String {
        match self {
            SignInRefusal::EmailNotVerified(a) => format!(
                "Your organisation has not verified the address {a}. Verify it there, then sign in again."
            ),
            SignInRefusal::EmailVerifiedMissing(a) => format!(
                "Your organisation's sign-in did not confirm that the address {a} is verified. Ask the postmaster to check the provider's settings."
            ),
            SignInRefusal::BadAddress(claim, NameError::BadLocalPart { problem, .. }) => format!(
                "The address {} cannot be used for a mailbox here: the part before @ {problem}. Ask your administrator for an address in plain ASCII.",
                shown_claim(claim)
            ),
            SignInRefusal::BadAddress(..) => {
                "Your account has no usable mail address. Ask your administrator to set one.".into()
            }
            SignInRefusal::DomainNotServed(d) => format!("{d} is not served here."),
            SignInRefusal::DomainDisabled(d) => format!("{d} is disabled here."),
            SignInRefusal::NoTemplate { .. } | SignInRefusal::MissingTemplate(_) => {
                "There is no mailbox template for your group. Ask the postmaster to add one.".into()
            }
            SignInRefusal::Limit(LimitBreach::MailboxCount { domain, .. }) => {
                format!("The mailbox limit for {domain} is reached.")
            }
            SignInRefusal::Limit(LimitBreach::DomainDisabled(d)) => format!("{d} is disabled here."),
            SignInRefusal::Limit(
                LimitBreach::UnlimitedQuota { domain, .. }
                | LimitBreach::QuotaOverMax { domain, .. }
                | LimitBreach::TotalNeedsFinite { domain, .. }
                | LimitBreach::TotalQuota { domain, .. },
            ) => format!("There is no storage left in {domain} for your mailbox."),
            SignInRefusal::MailboxDisabled(_) => "Your mailbox is disabled.".into(),
            SignInRefusal::MailboxNoLogin(_) => {
                "Your mailbox receives mail but may not sign in.".into()
            }
            SignInRefusal::LocalMailbox(_) => {
                "This mailbox signs in with a password. Use the password form instead.".into()
            }
            SignInRefusal::OtherAccount { .. } => {
                "This mailbox belongs to another account.".into()
            }
            SignInRefusal::LinkedElsewhere { existing, .. } => format!(
                "Your account is already linked to the mailbox {existing}. Ask the postmaster to move it."
            ),
            SignInRefusal::NoMailbox(a) => format!("There is no mailbox for {a} here."),
            SignInRefusal::Store(e) if e.is_unavailable() => {
                "The mailbox service is unavailable right now. Try again in a minute.".into()
            }
            SignInRefusal::Store(_) => {
                "Something went wrong on our side. The postmaster has the details.".into()
            }
        }
    }

    /// A short code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SignInRefusal::EmailNotVerified(_) => "email_not_verified",
            SignInRefusal::EmailVerifiedMissing(_) => "email_verified_missing",
            SignInRefusal::BadAddress(..) => "bad_address",
            SignInRefusal::DomainNotServed(_) => "domain_not_served",
            SignInRefusal::DomainDisabled(_)
            | SignInRefusal::Limit(LimitBreach::DomainDisabled(_)) => "domain_disabled",
            SignInRefusal::NoTemplate { .. } | SignInRefusal::MissingTemplate(_) => "no_template",
            SignInRefusal::Limit(LimitBreach::MailboxCount { .. }) => "mailbox_limit",
            SignInRefusal::Limit(_) => "quota_limit",
            SignInRefusal::MailboxDisabled(_) => "mailbox_disabled",
            SignInRefusal::MailboxNoLogin(_) => "mailbox_no_login",
            SignInRefusal::LocalMailbox(_) => "local_mailbox",
            SignInRefusal::OtherAccount { .. } => "other_account",
            SignInRefusal::LinkedElsewhere { .. } => "linked_elsewhere",
            SignInRefusal::NoMailbox(_) => "no_mailbox",
            SignInRefusal::Store(e) if e.is_unavailable() => "store_unavailable",
            SignInRefusal::Store(_) => "store_error",
        }
    }

    pub fn is_temporary(&self) -> bool {
        matches!(self, SignInRefusal::Store(e) if e.is_unavailable())
    }
}

impl From<StoreError> for SignInRefusal {
    fn from(e: StoreError) -> Self {
        SignInRefusal::Store(e)
    }
}

/// An address claim as a person may be shown it: escaped where it is not printable, short.
fn shown_claim(claim: &str) -> String {
    let escaped: String = claim.trim().chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

/// Mappings are tried in their order; the first whose value the person has wins, so a
/// postmaster decides precedence, not the provider's ordering of groups.
pub fn choose_template<'a>(
    values: &[String],
    mappings: &'a [Mapping],
    default: Option<&'a str>,
) -> Option<&'a str> {
    let mut ordered: Vec<&Mapping> = mappings.iter().collect();
    ordered.sort_by_key(|m| m.position);
    ordered
        .into_iter()
        .find(|m| values.iter().any(|v| v.trim() == m.claim_value))
        .map(|m| m.template.as_str())
        .or(default)
}

/// Lets a validated identity in, creating or updating its mailbox as the rules say.
pub async fn sign_in(
    store: &dyn Store,
    clock: &dyn Clock,
    rules: SignInRules,
    claims: &SignInClaims,
) -> Result<SignedIn, SignInRefusal> {
    let result = admit(store, clock, rules, claims).await;
    match &result {
        Ok(signed_in) => crate::metrics::provisioned(signed_in.label(), "-"),
        Err(refusal) => crate::metrics::provisioned("refused", refusal.code()),
    }
    result
}

async fn admit(
    store: &dyn Store,
    clock: &dyn Clock,
    rules: SignInRules,
    claims: &SignInClaims,
) -> Result<SignedIn, SignInRefusal> {
    let address = Address::parse(&claims.address)
        .map_err(|e| SignInRefusal::BadAddress(claims.address.clone(), e))?;
    match claims.email_verified {
        Some(true) => {}
        Some(false) => return Err(SignInRefusal::EmailNotVerified(address.to_string())),
        None if rules.require_verified_email => {
            return Err(SignInRefusal::EmailVerifiedMissing(address.to_string()))
        }
        None => {}
    }
    // Every write below is a compare-and-set on the row as read here; one that lost a race
    // (another sign-in bound or created the mailbox, the postmaster changed it) is decided
    // again on the fresh row, where the winner's binding refuses the loser.
    for _ in 0..WRITE_ATTEMPTS {
        if let Some(bound) = store
            .find_mailbox_by_oidc(&claims.issuer, &claims.subject)
            .await?
        {
            if bound.address != address.as_str() {
                return Err(SignInRefusal::LinkedElsewhere {
                    subject: claims.subject.clone(),
                    existing: bound.address,
                    address: address.to_string(),
                });
            }
        }
        let decided = match store.get_mailbox(address.as_str()).await? {
            Some(mailbox) => existing(store, clock, rules, claims, mailbox).await?,
            None if !rules.provision => return Err(SignInRefusal::NoMailbox(address.to_string())),
            // Another sign-in created the mailbox, or bound this identity elsewhere, first.
            None => match create(store, clock, claims, &address).await {
                Err(SignInRefusal::Store(StoreError::Conflict(_))) => None,
                other => Some(other?),
            },
        };
        if let Some(outcome) = decided {
            return Ok(outcome);
        }
    }
    Err(SignInRefusal::Store(StoreError::Unavailable(format!(
        "mailbox {address} kept changing during the sign-in of {} at {}",
        claims.subject, claims.issuer
    ))))
}

/// After a sign-in let the person in: records its time, lifts a liveness suspension (the
/// provider just vouched for the person), and keeps the refresh token it issued, sealed to
/// this mailbox. A token that cannot be sealed is logged and left out: the sign-in stands,
/// and the mailbox keeps the token it had.
pub async fn record_sign_in(
    store: &dyn Store,
    clock: &dyn Clock,
    key: &SealingKey,
    mailbox: &Mailbox,
    claims: &SignInClaims,
    refresh_token: Option<&Secret>,
) -> Result<(), StoreError> {
    let sealed = refresh_token.and_then(|token| {
        let owner = Owner {
            address: &mailbox.address,
            issuer: &claims.issuer,
            subject: &claims.subject,
        };
        match key.seal(token, owner) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(user = mailbox.address.as_str(), error = %e, "cannot seal the refresh token; the mailbox keeps its old one");
                None
            }
        }
    });
    store
        .record_sign_in(&mailbox.address, clock.now(), sealed.as_deref())
        .await
}

async fn chosen_template(
    store: &dyn Store,
    claims: &SignInClaims,
) -> Result<Template, SignInRefusal> {
    let mappings = store.list_mappings().await?;
    let default = store.default_template().await?;
    let name = choose_template(&claims.template_values, &mappings, default.as_deref())
        .ok_or_else(|| SignInRefusal::NoTemplate {
            values: claims.template_values.clone(),
        })?
        .to_string();
    store
        .get_template(&name)
        .await?
        .ok_or(SignInRefusal::MissingTemplate(name))
}

fn display_name(claims: &SignInClaims) -> Option<String> {
    claims
        .display_name
        .as_deref()
        .map(|n| {
            n.chars()
                .filter(|c| !c.is_control())
                .take(MAX_DISPLAY_NAME)
                .collect::<String>()
        })
        .map(|n| n.trim().to_string())
}

/// A first sign-in's mailbox: in an active domain, with the template its claims map to,
/// bound to this identity, and without a password (an `oidc` mailbox logs in to mail with
/// app passwords only).
async fn create(
    store: &dyn Store,
    clock: &dyn Clock,
    claims: &SignInClaims,
    address: &Address,
) -> Result<SignedIn, SignInRefusal> {
    let domain_name = address.domain().to_string();
    let domain = store
        .get_domain(&domain_name)
        .await?
        .ok_or_else(|| SignInRefusal::DomainNotServed(domain_name.clone()))?;
    if !domain.active {
        return Err(SignInRefusal::DomainDisabled(domain_name));
    }
    let template = chosen_template(store, claims).await?;
    let new = NewMailbox {
        address: address.clone(),
        password_hash: None,
        auth_source: AuthSource::Oidc,
        display_name: display_name(claims).unwrap_or_default(),
        quota: None,
        protocols: None,
        state: None,
        template: Some(template.name.clone()),
        oidc_identity: Some((claims.issuer.clone(), claims.subject.clone())),
        require_active_domain: true,
    };
    match insert(store, clock, &new, &domain, Some(&template)).await {
        Ok(mailbox) => Ok(SignedIn::Created(mailbox)),
        Err(WriteError::Limit(breach)) => Err(SignInRefusal::Limit(breach)),
        Err(WriteError::Store(StoreError::NotFound(_))) => {
            Err(SignInRefusal::DomainNotServed(domain_name))
        }
        Err(WriteError::Store(e)) => Err(e.into()),
    }
}

/// Lets a sign-in in to the mailbox it names and brings the mailbox up to date. `Ok(None)`:
/// the mailbox changed since it was read and nothing was written; decide again.
async fn existing(
    store: &dyn Store,
    clock: &dyn Clock,
    rules: SignInRules,
    claims: &SignInClaims,
    mailbox: Mailbox,
) -> Result<Option<SignedIn>, SignInRefusal> {
    if mailbox.auth_source == AuthSource::Local {
        return Err(SignInRefusal::LocalMailbox(mailbox.address));
    }
    let needs_binding = match (&mailbox.oidc_issuer, &mailbox.oidc_subject) {
        (Some(issuer), Some(subject)) => {
            if *issuer != claims.issuer || *subject != claims.subject {
                return Err(SignInRefusal::OtherAccount {
                    bound: format!("{subject} at {issuer}"),
                    address: mailbox.address,
                    issuer: claims.issuer.clone(),
                    subject: claims.subject.clone(),
                });
            }
            false
        }
        // Made by the postmaster with auth source oidc: the first sign-in binds it.
        _ => true,
    };

    let mut wanted = mailbox.clone();
    if needs_binding {
        wanted.oidc_issuer = Some(claims.issuer.clone());
        wanted.oidc_subject = Some(claims.subject.clone());
    }
    if rules.provision {
        let template = chosen_template(store, claims).await?;
        let new_name = display_name(claims);
        let stale = mailbox.template.as_deref() != Some(template.name.as_str())
            || mailbox.template_hash.as_deref() != Some(template.content_hash().as_str())
            || new_name
                .as_deref()
                .is_some_and(|n| n != mailbox.display_name);
        if stale {
            // What the postmaster set on the mailbox (its overrides) stays as it is.
            apply_template(&mut wanted, &template);
            if let Some(n) = new_name {
                wanted.display_name = n;
            }
        }
    }

    let outcome = if wanted == mailbox {
        SignedIn::Unchanged(mailbox)
    } else {
        wanted.updated_at = clock.now();
        match write_update(store, mailbox, wanted, needs_binding).await? {
            Some(outcome) => outcome,
            None => return Ok(None),
        }
    };
    let_in(store, outcome).await.map(Some)
}

/// Writes a sign-in's changes to a mailbox as read (`mailbox`). `Ok(None)`: the mailbox
/// changed since it was read and nothing was written. When the domain's limits refuse the
/// template, the mailbox keeps its values; a new binding is still recorded.
async fn write_update(
    store: &dyn Store,
    mailbox: Mailbox,
    wanted: Mailbox,
    needs_binding: bool,
) -> Result<Option<SignedIn>, SignInRefusal> {
    let guard = LimitGuard::new(wanted.quota, false, false);
    let written = store
        .update_mailbox_if(&wanted, &mailbox, &|d, u| guard.check(d, u))
        .await
        .map_err(|e| guard.refusal(e));
    let reason = match written {
        Ok(true) => return Ok(Some(SignedIn::Updated(wanted))),
        Ok(false) | Err(WriteError::Store(StoreError::Conflict(_))) => return Ok(None),
        Err(WriteError::Limit(breach)) => breach.to_string(),
        Err(WriteError::Store(StoreError::Refused(refusal))) => refusal.to_string(),
        Err(WriteError::Store(e)) => return Err(e.into()),
    };
    tracing::warn!(
        user = %mailbox.address,
        template = wanted.template.as_deref().unwrap_or("-"),
        reason = %reason,
        "template not re-applied: it breaks a domain limit; the mailbox keeps its values and the next sign-in retries"
    );
    if !needs_binding {
        return Ok(Some(SignedIn::UpdateDeferred { mailbox, reason }));
    }
    // The binding is not a limit matter; record it so the identity sticks.
    let mut bound = mailbox.clone();
    bound.oidc_issuer = wanted.oidc_issuer;
    bound.oidc_subject = wanted.oidc_subject;
    bound.updated_at = wanted.updated_at;
    match store
        .update_mailbox_if(&bound, &mailbox, &|_, _| Ok(()))
        .await
    {
        Ok(true) => Ok(Some(SignedIn::UpdateDeferred {
            mailbox: bound,
            reason,
        })),
        Ok(false) | Err(StoreError::Conflict(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The sign-in gets in only to an active mailbox of an active domain, as it is now.
async fn let_in(store: &dyn Store, outcome: SignedIn) -> Result<SignedIn, SignInRefusal> {
    let current = outcome.mailbox();
    match current.state {
        MailboxState::Disabled => {
            return Err(SignInRefusal::MailboxDisabled(current.address.clone()))
        }
        MailboxState::NoLogin => {
            return Err(SignInRefusal::MailboxNoLogin(current.address.clone()))
        }
        MailboxState::Active => {}
    }
    match store.get_domain(&current.domain).await? {
        Some(d) if d.active => Ok(outcome),
        _ => Err(SignInRefusal::DomainDisabled(current.domain.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(value: &str, position: i64, template: &str) -> Mapping {
        Mapping {
            claim_value: value.into(),
            position,
            template: template.into(),
        }
    }

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_mapping_in_order_wins_not_the_claim_order() {
        let maps = vec![
            mapping("staff", 2, "staff-t"),
            mapping("admins", 1, "admin-t"),
            mapping("students", 3, "student-t"),
        ];
        assert_eq!(
            choose_template(&values(&["students", "staff"]), &maps, None),
            Some("staff-t")
        );
        assert_eq!(
            choose_template(&values(&["staff", "admins"]), &maps, None),
            Some("admin-t")
        );
        assert_eq!(
            choose_template(&values(&["students"]), &maps, Some("d")),
            Some("student-t")
        );
    }

    #[test]
    fn default_applies_only_when_nothing_matches() {
        let maps = vec![mapping("staff", 1, "staff-t")];
        assert_eq!(
            choose_template(&values(&["guests"]), &maps, Some("default-t")),
            Some("default-t")
        );
        assert_eq!(
            choose_template(&[], &maps, Some("default-t")),
            Some("default-t")
        );
        assert_eq!(choose_template(&values(&["guests"]), &maps, None), None);
        assert_eq!(choose_template(&[], &[], None), None);
    }

    #[test]
    fn claim_values_match_exactly_after_trimming() {
        let maps = vec![mapping("Staff", 1, "staff-t")];
        assert_eq!(choose_template(&values(&["staff"]), &maps, None), None);
        assert_eq!(
            choose_template(&values(&[" Staff "]), &maps, None),
            Some("staff-t")
        );
    }

    #[test]
    fn person_messages_name_the_reason_and_hide_internals() {
        let r = SignInRefusal::Limit(LimitBreach::MailboxCount {
            domain: "example.org".into(),
            max: 10,
        });
        assert_eq!(
            r.person_message(),
            "The mailbox limit for example.org is reached."
        );
        assert_eq!(r.code(), "mailbox_limit");
        let r = SignInRefusal::OtherAccount {
            address: "a@example.org".into(),
            bound: "s1 at https://idp".into(),
            issuer: "https://idp".into(),
            subject: "s2".into(),
        };
        assert!(!r.person_message().contains("s1"));
        assert!(r.to_string().contains("s1"));
        assert_eq!(
            SignInRefusal::DomainNotServed("example.net".into()).person_message(),
            "example.net is not served here."
        );
        assert!(SignInRefusal::LocalMailbox("a@b.org".into())
            .person_message()
            .starts_with("This mailbox signs in with a password"));
    }
}
