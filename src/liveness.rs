//! The liveness pass: asks the identity provider, for each linked mailbox, whether it still
//! knows the person (a refresh-token grant), and suspends the mail logins of those it no
//! longer knows, within the brake of `oidc::liveness`.
//!
//! One pass at a time across every daemon and the command line: a lease row in the store
//! ([`IdentityStore::take_check_lease`]), renewed while the pass runs and given back at
//! its end; a pass that dies leaves it to expire.
//!
//! Order of work, and why: every answer is gathered first, storing a rotated refresh token
//! the moment it arrives (the provider may already have retired the old one, so this is
//! done under `--dry-run` too). Only then is the verdict taken, and only an `Apply` verdict
//! suspends anyone. The first answer that is no answer about a person (unreachable, 5xx,
//! our client refused) stops the pass: the verdict can no longer be `Apply`, and asking
//! the rest would only wait on a provider that is down. Requests already in flight are
//! let finish (each is bounded in time), never cut off: the provider may have rotated
//! that token already, and the new one must not be lost. A store that fails mid-pass also
//! stops it before anything is suspended; a failure while suspending leaves the remaining
//! suspensions undone (reported as `withheld`), never a wrong one done.
//!
//! [`periodic`] runs passes in the daemon: after a random delay within one interval, then
//! every interval ±10 %, so daemons started together do not ask the provider together.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::oidc::liveness::{verdict, Answer, Change, Verdict};
use crate::oidc::refresh::RefreshAnswer;
use crate::oidc::{LivenessSettings, RelyingParty};
use crate::sealed::{Owner, SealingKey, Unsealed};
use crate::store::{LinkedMailbox, Store, StoreError};

/// How long a pass holds the lease without renewing it.
const LEASE_SECONDS: i64 = 300;
/// Renewed this often while a pass runs.
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// The reason a suspension carries, and the auth refusal's code.
pub const REVOKED: &str = "identity_revoked";

#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    /// Only this mailbox (canonical address).
    pub only: Option<String>,
    /// Decide, but change nothing (a rotated refresh token is still kept).
    pub dry_run: bool,
}

/// One mailbox's line of a pass.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Checked {
    pub address: String,
    pub answer: Answer,
    pub change: Change,
    /// What the provider said, for the log; never a token.
    pub detail: String,
}

/// How a pass ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassEnd {
    /// The answers were applied (with `--dry-run`: would have been).
    Applied,
    /// More new refusals than the share allows: nobody suspended.
    Brake { refused: usize, allowed: usize },
    /// The provider refused our client: a configuration problem, nobody suspended.
    ClientRefused,
    /// The provider did not answer (unreachable, timed out, 5xx): nobody suspended.
    ProviderDown,
    /// The store failed mid-pass; nothing after the failure was changed.
    StoreDown(String),
}

#[derive(Clone, Debug)]
pub struct PassReport {
    pub mailboxes: Vec<Checked>,
    pub end: PassEnd,
    pub dry_run: bool,
}

impl PassReport {
    /// `checked N: 3 ok, 1 invalid_grant; 1 suspended`
    pub fn summary(&self) -> String {
        let mut counts: Vec<(Answer, usize)> = Vec::new();
        for c in &self.mailboxes {
            match counts.iter_mut().find(|(a, _)| *a == c.answer) {
                Some((_, n)) => *n += 1,
                None => counts.push((c.answer, 1)),
            }
        }
        let answers = if counts.is_empty() {
            "nothing to check".to_string()
        } else {
            counts
                .iter()
                .map(|(a, n)| format!("{n} {a}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let count = |change| self.mailboxes.iter().filter(|c| c.change == change).count();
        format!(
            "checked {}: {answers}; {} suspended, {} withheld, {} still suspended",
            self.mailboxes.len(),
            count(Change::Suspended),
            count(Change::Withheld),
            count(Change::StillSuspended),
        )
    }

    /// Why nobody was suspended, for a person; `None` when the answers were applied.
    pub fn problem(&self) -> Option<String> {
        match &self.end {
            PassEnd::Applied => None,
            PassEnd::Brake { refused, allowed } => Some(format!(
                "brake held: the provider refused {refused} mailboxes, more than the {allowed} \
                 one pass may suspend ([oidc] liveness_max_suspend_percent); nobody was suspended. \
                 Check the provider, then run `mailauthd idp check ADDRESS` for each one to suspend"
            )),
            PassEnd::ClientRefused => Some(
                "brake held: the provider refused our client (invalid_client): the client id or \
                 secret in [oidc] is wrong or was rotated; nobody was suspended"
                    .into(),
            ),
            PassEnd::ProviderDown => Some(
                "brake held: the identity provider is unreachable, timed out or answered with an \
                 error; nobody was suspended. Try again later"
                    .into(),
            ),
            PassEnd::StoreDown(e) => Some(format!(
                "the store failed during the check ({e}); nothing after the failure was changed"
            )),
        }
    }
}

#[derive(Debug, Error)]
pub enum PassError {
    #[error("{0} is not a mailbox linked to an identity-provider account")]
    NotLinked(String),
    #[error("another identity check is running (the daemon's or another command's); try again when it is done")]
    Busy,
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Everything a pass works with.
#[derive(Clone)]
pub struct Liveness {
    pub store: Arc<dyn Store>,
    pub rp: Arc<RelyingParty>,
    pub key: Arc<SealingKey>,
    pub clock: Arc<dyn Clock>,
    pub settings: LivenessSettings,
    /// One request's bound: the provider's metadata, keys and token endpoint in turn.
    pub request_timeout: Duration,
}

/// One asked mailbox, in the listing's order.
struct Asked {
    mailbox: LinkedMailbox,
    answer: Answer,
    detail: String,
}

impl Liveness {
    pub async fn run_pass(&self, options: &PassOptions) -> Result<PassReport, PassError> {
        let holder = lease_holder();
        let now = self.clock.now();
        if !self
            .store
            .take_check_lease(&holder, now, now + LEASE_SECONDS)
            .await?
        {
            return Err(PassError::Busy);
        }
        let result = self.under_lease(&holder, options).await;
        if let Err(e) = self.store.release_check_lease(&holder).await {
            tracing::warn!(error = %e, "cannot give the identity check lease back; it expires by itself");
        }
        result
    }

    async fn under_lease(
        &self,
        holder: &str,
        options: &PassOptions,
    ) -> Result<PassReport, PassError> {
        let linked = self.store.linked_mailboxes(options.only.as_deref()).await?;
        if let (Some(only), true) = (&options.only, linked.is_empty()) {
            return Err(PassError::NotLinked(only.clone()));
        }
        let (asked, store_down) = self.ask_all(holder, linked).await;
        let report = match store_down {
            Some(e) => {
                tracing::error!(error = %e, "identity check stopped: the store failed; nobody was suspended by this pass");
                PassReport {
                    mailboxes: asked
                        .iter()
                        .map(|a| unchanged(a, Change::Withheld))
                        .collect(),
                    end: PassEnd::StoreDown(e.to_string()),
                    dry_run: options.dry_run,
                }
            }
            None => self.apply(asked, options.dry_run).await,
        };
        // One audit line per mailbox; the many that are fine and unchanged only at debug
        // level, so a pass over thousands does not flood the log every few hours.
        for c in &report.mailboxes {
            if c.answer == Answer::Ok && c.change == Change::None {
                tracing::debug!(target: "mailauthd::audit", service = "idp-check", user = c.address.as_str(), answer = c.answer.code(), change = c.change.code(), dry_run = options.dry_run, "identity check");
            } else {
                tracing::info!(target: "mailauthd::audit", service = "idp-check", user = c.address.as_str(), answer = c.answer.code(), change = c.change.code(), detail = c.detail.as_str(), dry_run = options.dry_run, "identity check");
            }
        }
        match (&report.end, report.problem()) {
            (PassEnd::Applied, _) | (_, None) => {
                tracing::info!(summary = %report.summary(), dry_run = options.dry_run, "identity check done")
            }
            (PassEnd::StoreDown(_), Some(p)) => {
                tracing::error!(summary = %report.summary(), "identity check: {p}")
            }
            (_, Some(p)) => {
                crate::metrics::identity_check_braked();
                tracing::error!(summary = %report.summary(), "identity check: {p}");
            }
        }
        Ok(report)
    }

    /// Every mailbox's answer, in the listing's order; stops at the first answer that is
    /// no answer about a person, or at a store failure (returned).
    async fn ask_all(
        &self,
        holder: &str,
        linked: Vec<LinkedMailbox>,
    ) -> (Vec<Asked>, Option<StoreError>) {
        let total = linked.len();
        let mut slots: Vec<Option<Asked>> = (0..total).map(|_| None).collect();
        let mut pending = linked.iter().cloned().enumerate();
        let mut running: JoinSet<(usize, LinkedMailbox, RefreshAnswer)> = JoinSet::new();
        let mut stopped: Option<(Answer, String)> = None;
        let mut store_down = None;
        let mut renewed = tokio::time::Instant::now();
        let concurrency = self.settings.concurrency.max(1);
        loop {
            while stopped.is_none() && store_down.is_none() && running.len() < concurrency {
                let Some((i, mailbox)) = pending.next() else {
                    break;
                };
                match self.token_of(&mailbox) {
                    Ok(token) => {
                        let rp = self.rp.clone();
                        let limit = self.request_timeout;
                        running.spawn(async move {
                            let answer = match tokio::time::timeout(limit, rp.refresh(&token)).await
                            {
                                Ok(a) => a,
                                Err(_) => RefreshAnswer::Unreachable(format!(
                                    "no answer within {} ms",
                                    limit.as_millis()
                                )),
                            };
                            (i, mailbox, answer)
                        });
                    }
                    Err(why) => {
                        slots[i] = Some(Asked {
                            mailbox,
                            answer: Answer::NoRefreshToken,
                            detail: why.into(),
                        });
                    }
                }
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let Ok((i, mailbox, refresh)) = joined else {
                // A refresh task neither panics (crate lints) nor is aborted.
                continue;
            };
            let answer = Answer::of(&refresh);
            crate::metrics::identity_checked(answer.code());
            if let RefreshAnswer::Ok {
                rotated: Some(fresh),
            } = &refresh
            {
                if let Err(e) = self.keep_rotated(&mailbox, fresh).await {
                    tracing::error!(user = mailbox.address.as_str(), error = %e, "cannot store the refresh token the provider just rotated; if the provider retired the old one, the next check of this mailbox may be refused until the person signs in again");
                    store_down.get_or_insert(e);
                }
            }
            if answer.stops_the_pass() && stopped.is_none() {
                stopped = Some((
                    answer,
                    format!("not asked: {} earlier in this pass", answer),
                ));
            }
            slots[i] = Some(Asked {
                mailbox,
                answer,
                detail: refresh.detail(),
            });
            if store_down.is_none() && renewed.elapsed() >= RENEW_EVERY {
                let now = self.clock.now();
                match self
                    .store
                    .take_check_lease(holder, now, now + LEASE_SECONDS)
                    .await
                {
                    Ok(true) => renewed = tokio::time::Instant::now(),
                    Ok(false) => {
                        store_down = Some(StoreError::Unavailable(
                            "the identity check lease was taken over by another pass".into(),
                        ));
                    }
                    Err(e) => {
                        store_down = Some(e);
                    }
                }
            }
        }
        // Mailboxes not asked (the pass stopped, or its request was cut short) get the
        // answer that stopped it.
        let (fill, why) = stopped.unwrap_or((
            Answer::Unreachable,
            "not asked: the pass stopped".to_string(),
        ));
        let out = slots
            .into_iter()
            .zip(linked)
            .map(|(slot, mailbox)| {
                slot.unwrap_or_else(|| Asked {
                    mailbox,
                    answer: fill,
                    detail: why.clone(),
                })
            })
            .collect();
        (out, store_down)
    }

    fn token_of(&self, mailbox: &LinkedMailbox) -> Result<crate::secret::Secret, &'static str> {
        let Some(sealed) = mailbox
            .sealed_refresh_token
            .as_deref()
            .filter(|s| !s.is_empty())
        else {
            return Err("no refresh token stored (the provider issued none at sign-in)");
        };
        match self.key.open(sealed, owner(mailbox)) {
            Unsealed::Token(t) => Ok(t),
            Unsealed::Unusable(why) => {
                tracing::warn!(user = mailbox.address.as_str(), reason = why, "stored refresh token does not open (key file replaced?); treated as none until the next sign-in");
                Err(why)
            }
        }
    }

    async fn keep_rotated(
        &self,
        mailbox: &LinkedMailbox,
        fresh: &crate::secret::Secret,
    ) -> Result<(), StoreError> {
        let sealed = match self.key.seal(fresh, owner(mailbox)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(user = mailbox.address.as_str(), error = %e, "cannot seal a rotated refresh token; the old one stays");
                return Ok(());
            }
        };
        match self
            .store
            .store_refresh_token(&mailbox.address, Some(&sealed))
            .await
        {
            // Removed meanwhile: nothing to keep it for.
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    async fn apply(&self, asked: Vec<Asked>, dry_run: bool) -> PassReport {
        let answers: Vec<(Answer, bool)> = asked
            .iter()
            .map(|a| (a.answer, a.mailbox.suspension.is_some()))
            .collect();
        let decided = verdict(&answers, self.settings.max_suspend_percent);
        let end = match decided {
            Verdict::Apply => PassEnd::Applied,
            Verdict::ProviderDown => PassEnd::ProviderDown,
            Verdict::ClientRefused => PassEnd::ClientRefused,
            Verdict::Brake { refused, allowed } => PassEnd::Brake { refused, allowed },
        };
        let mut report = PassReport {
            mailboxes: Vec::with_capacity(asked.len()),
            end,
            dry_run,
        };
        let now = self.clock.now();
        let mut store_failed: Option<StoreError> = None;
        for a in &asked {
            let suspended = a.mailbox.suspension.is_some();
            let change = match (a.answer, suspended) {
                (_, true) => Change::StillSuspended,
                (Answer::InvalidGrant, false) => {
                    if dry_run || decided != Verdict::Apply || store_failed.is_some() {
                        Change::Withheld
                    } else {
                        match self
                            .store
                            .suspend_identity(&a.mailbox.address, REVOKED, now)
                            .await
                        {
                            Ok(true) => {
                                crate::metrics::identity_suspended();
                                tracing::warn!(target: "mailauthd::audit", service = "idp-check", user = a.mailbox.address.as_str(), reason = REVOKED, "mail logins suspended: the identity provider no longer knows this person");
                                Change::Suspended
                            }
                            Ok(false) => Change::StillSuspended,
                            Err(e) => {
                                store_failed = Some(e);
                                Change::Withheld
                            }
                        }
                    }
                }
                _ => Change::None,
            };
            report.mailboxes.push(unchanged(a, change));
        }
        if !dry_run && store_failed.is_none() {
            for a in &asked {
                let result = self
                    .store
                    .record_identity_check(&a.mailbox.address, now, a.answer.code())
                    .await;
                match result {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => {
                        store_failed = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = store_failed {
            report.end = PassEnd::StoreDown(e.to_string());
        }
        report
    }
}

fn unchanged(a: &Asked, change: Change) -> Checked {
    Checked {
        address: a.mailbox.address.clone(),
        answer: a.answer,
        change,
        detail: a.detail.clone(),
    }
}

fn owner(mailbox: &LinkedMailbox) -> Owner<'_> {
    Owner {
        address: &mailbox.address,
        issuer: &mailbox.issuer,
        subject: &mailbox.subject,
    }
}

/// A random name for this pass's hold on the lease.
fn lease_holder() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // Without randomness, the process id and the time still tell passes apart.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        return format!("pid{}-{now}", std::process::id());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fraction in [0, 1) from the operating system's randomness (0.5 without it).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// The daemon's passes: the first after a random delay within one interval, then every
/// interval ±10 %, until `stop` is cancelled (a pass in progress is dropped: nothing it
/// has not yet written is lost that the next pass would not redo).
pub async fn periodic(liveness: Liveness, interval: Duration, stop: CancellationToken) {
    let mut delay = interval.mul_f64(random_fraction());
    let options = PassOptions::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            result = liveness.run_pass(&options) => match result {
                Ok(_) => {}
                Err(PassError::Busy) => tracing::info!("identity check skipped: another pass is running"),
                Err(e) => tracing::error!(error = %e, "identity check failed; nobody was suspended"),
            },
        }
        delay = interval.mul_f64(0.9 + 0.2 * random_fraction());
    }
}
