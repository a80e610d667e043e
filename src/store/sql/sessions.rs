//! The `web_sessions` and `logout_tokens_seen` tables.
//!
//! Every change that must happen once across daemons (taking a pending sign-in, a notice)
//! is a compare-and-set on the value read, so of two daemons racing one wins. Removals that
//! could touch many rows (the expiry sweep, trimming) pick at most a batch of keys first and
//! delete those, so no statement holds locks on an unbounded number of rows.

use std::borrow::Cow;

use async_trait::async_trait;

use super::super::param::Param;
use super::super::rows::{texts, Columns, Decoded, RowError, Select};
use super::super::sessions::{
    PendingSignInRecord, ProviderSessions, SessionScope, SessionStore, SessionUser, SignedInWith,
    Swept, WebSession, TRIM_BATCH,
};
use super::super::{Record, StoreError, StoreResult};
use super::errors::{write_error, SqlxResult};
use super::statement;
use super::{placeholders, SqlStore};
use crate::clock::UnixTime;

const COLUMNS: &str = "csrf, created_at, expires_at, mailbox, via, credential_generation, \
     id_token, oidc_issuer, oidc_subject, oidc_sid, pending_state, pending_nonce, \
     pending_verifier, notice";

/// A page request reads its session: a hot read on SQLite.
const SESSION: Select<WebSession> = Select {
    sql: Cow::Borrowed(
        "SELECT csrf, created_at, expires_at, mailbox, via, credential_generation, \
         id_token, oidc_issuer, oidc_subject, oidc_sid, pending_state, pending_nonce, \
         pending_verifier, notice FROM web_sessions WHERE id_digest = ? AND expires_at > ?",
    ),
    what: "web session",
    decode: session_from,
    hot: true,
};

const PASSWORD: &str = "password";
const PROVIDER: &str = "provider";

fn corrupt(detail: &str) -> RowError {
    RowError::Column(sqlx::Error::Decode(detail.to_string().into()))
}

fn session_from(r: &dyn Columns) -> Decoded<WebSession> {
    let user = match r.opt_text(3)? {
        None => None,
        Some(mailbox) => {
            let generation = r.opt_int(5)?.unwrap_or(0);
            let via = match r.opt_text(4)?.as_deref() {
                Some(PASSWORD) => SignedInWith::Password,
                Some(PROVIDER) => match (r.opt_text(6)?, r.opt_text(7)?, r.opt_text(8)?) {
                    (Some(id_token), Some(issuer), Some(subject)) => SignedInWith::Provider {
                        id_token,
                        issuer,
                        subject,
                        sid: r.opt_text(9)?,
                    },
                    _ => return Err(corrupt("provider session without its identity")),
                },
                other => return Err(corrupt(&format!("unknown sign-in method {other:?}"))),
            };
            Some(SessionUser {
                mailbox,
                generation,
                via,
            })
        }
    };
    let pending = match (r.opt_text(10)?, r.opt_text(11)?, r.opt_text(12)?) {
        (Some(state), Some(nonce), Some(pkce_verifier)) => Some(PendingSignInRecord {
            state,
            nonce,
            pkce_verifier,
        }),
        _ => None,
    };
    Ok(WebSession {
        csrf: r.text(0)?,
        created_at: r.int(1)?,
        expires_at: r.int(2)?,
        user,
        pending,
        notice: r.opt_text(13)?,
    })
}

impl SqlStore {
    /// Deletes the sessions with these digests (at most a batch); returns how many went.
    async fn delete_sessions(&self, digests: &[String]) -> StoreResult<u64> {
        if digests.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "DELETE FROM web_sessions WHERE id_digest IN ({})",
            placeholders(digests.len())
        );
        let params: Vec<Param<'_>> = digests.iter().map(Param::from).collect();
        self.execute(&sql, &params).await.context("web sessions")
    }
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn create_web_session(&self, digest: &str, s: &WebSession) -> StoreResult<()> {
        let (mailbox, via, generation) = match &s.user {
            Some(u) => (
                Some(u.mailbox.as_str()),
                Some(match u.via {
                    SignedInWith::Password => PASSWORD,
                    SignedInWith::Provider { .. } => PROVIDER,
                }),
                Some(u.generation),
            ),
            None => (None, None, None),
        };
        let (id_token, issuer, subject, sid) = match s.user.as_ref().map(|u| &u.via) {
            Some(SignedInWith::Provider {
                id_token,
                issuer,
                subject,
                sid,
            }) => (
                Some(id_token.as_str()),
                Some(issuer.as_str()),
                Some(subject.as_str()),
                sid.as_deref(),
            ),
            _ => (None, None, None, None),
        };
        let pending = s.pending.as_ref();
        let sql = format!(
            "INSERT INTO web_sessions (id_digest, {COLUMNS}) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let params: [Param<'_>; 15] = [
            digest.into(),
            s.csrf.as_str().into(),
            s.created_at.into(),
            s.expires_at.into(),
            mailbox.into(),
            via.into(),
            generation.into(),
            id_token.into(),
            issuer.into(),
            subject.into(),
            sid.into(),
            pending.map(|p| p.state.as_str()).into(),
            pending.map(|p| p.nonce.as_str()).into(),
            pending.map(|p| p.pkce_verifier.as_str()).into(),
            s.notice.as_deref().into(),
        ];
        let result = self.execute(&sql, &params).await;
        result
            .map(drop)
            .map_err(|e| write_error(e, Record::Setting("web session")))
    }

    async fn web_session(&self, digest: &str, now: UnixTime) -> StoreResult<Option<WebSession>> {
        self.fetch_optional(&SESSION, &[digest.into(), now.into()])
            .await
    }

    async fn set_session_pending(
        &self,
        digest: &str,
        p: &PendingSignInRecord,
        now: UnixTime,
    ) -> StoreResult<bool> {
        let sql = "UPDATE web_sessions SET pending_state = ?, pending_nonce = ?, \
                   pending_verifier = ? WHERE id_digest = ? AND expires_at > ?";
        let params: [Param<'_>; 5] = [
            p.state.as_str().into(),
            p.nonce.as_str().into(),
            p.pkce_verifier.as_str().into(),
            digest.into(),
            now.into(),
        ];
        let changed = self.execute(sql, &params).await.context("web session")?;
        Ok(changed > 0)
    }

    async fn take_session_pending(
        &self,
        digest: &str,
        now: UnixTime,
    ) -> StoreResult<Option<PendingSignInRecord>> {
        let Some(pending) = self.web_session(digest, now).await?.and_then(|s| s.pending) else {
            return Ok(None);
        };
        // Only the state it was read with is cleared: a second taker finds nothing to clear.
        let sql = "UPDATE web_sessions SET pending_state = NULL, pending_nonce = NULL, \
                   pending_verifier = NULL WHERE id_digest = ? AND pending_state = ?";
        let params: [Param<'_>; 2] = [digest.into(), pending.state.as_str().into()];
        let changed = self.execute(sql, &params).await.context("web session")?;
        Ok((changed > 0).then_some(pending))
    }

    async fn set_session_notice(
        &self,
        digest: &str,
        notice: &str,
        now: UnixTime,
    ) -> StoreResult<bool> {
        let sql = "UPDATE web_sessions SET notice = ? WHERE id_digest = ? AND expires_at > ?";
        let params: [Param<'_>; 3] = [notice.into(), digest.into(), now.into()];
        let changed = self.execute(sql, &params).await.context("web session")?;
        Ok(changed > 0)
    }

    async fn take_session_notice(&self, digest: &str) -> StoreResult<Option<String>> {
        let select = texts(
            "SELECT notice FROM web_sessions WHERE id_digest = ? AND notice IS NOT NULL",
            "web session",
        );
        let Some(notice) = self.fetch_optional(&select, &[digest.into()]).await? else {
            return Ok(None);
        };
        let sql = "UPDATE web_sessions SET notice = NULL WHERE id_digest = ? AND notice = ?";
        let params: [Param<'_>; 2] = [digest.into(), notice.as_str().into()];
        let changed = self.execute(sql, &params).await.context("web session")?;
        Ok((changed > 0).then_some(notice))
    }

    async fn delete_web_session(&self, digest: &str) -> StoreResult<()> {
        let sql = "DELETE FROM web_sessions WHERE id_digest = ?";
        self.execute(sql, &[digest.into()])
            .await
            .context("web session")?;
        Ok(())
    }

    async fn end_provider_sessions(&self, which: ProviderSessions<'_>) -> StoreResult<u64> {
        let (sql, issuer, value) = ending(which);
        self.execute(sql, &[issuer.into(), value.into()])
            .await
            .context("web sessions")
    }

    async fn logout_once(
        &self,
        jti: &str,
        remember_until: UnixTime,
        which: ProviderSessions<'_>,
    ) -> StoreResult<Option<u64>> {
        let (end, issuer, value) = ending(which);
        let mut tx = self.pool.begin().await.context("logout token")?;
        let record = "INSERT INTO logout_tokens_seen (issuer, jti, expires_at) VALUES (?, ?, ?)";
        let params: [Param<'_>; 3] = [issuer.into(), jti.into(), remember_until.into()];
        if let Err(e) = statement::execute(&mut *tx, self.dialect, record, &params).await {
            // The key is (issuer, jti): a duplicate is the same token seen before.
            return match write_error(e, Record::Setting("logout token")) {
                StoreError::Conflict(_) => Ok(None),
                other => Err(other),
            };
        }
        let ended = statement::execute(&mut *tx, self.dialect, end, &[issuer.into(), value.into()])
            .await
            .context("web sessions")?;
        tx.commit().await.context("logout token")?;
        Ok(Some(ended))
    }

    async fn trim_web_sessions(&self, scope: SessionScope<'_>, keep: u64) -> StoreResult<u64> {
        let (filter, params): (&str, Vec<Param<'_>>) = match scope {
            SessionScope::Anonymous => ("mailbox IS NULL", Vec::new()),
            SessionScope::Mailbox(m) => ("mailbox = ?", vec![m.into()]),
        };
        let count = Select::built(
            format!("SELECT COUNT(*) FROM web_sessions WHERE {filter}"),
            "web sessions",
            |r| r.int(0),
        );
        let stored = self.fetch_optional(&count, &params).await?.unwrap_or(0);
        let excess = u64::try_from(stored).unwrap_or(0).saturating_sub(keep);
        if excess == 0 {
            return Ok(0);
        }
        // The ones closest to expiry go first; the newest are kept.
        let oldest = Select::built(
            format!(
                "SELECT id_digest FROM web_sessions WHERE {filter} ORDER BY expires_at LIMIT {}",
                excess.min(TRIM_BATCH)
            ),
            "web sessions",
            |r| r.text(0),
        );
        let digests = self.fetch_all(&oldest, &params).await?;
        self.delete_sessions(&digests).await
    }

    async fn sweep_expired(&self, now: UnixTime, batch: u64) -> StoreResult<Swept> {
        let batch = batch.max(1);
        let expired = Select::built(
            format!(
                "SELECT id_digest FROM web_sessions WHERE expires_at <= ? \
                 ORDER BY expires_at LIMIT {batch}"
            ),
            "web sessions",
            |r| r.text(0),
        );
        let digests = self.fetch_all(&expired, &[now.into()]).await?;
        let sessions = self.delete_sessions(&digests).await?;
        let seen = Select::built(
            format!(
                "SELECT issuer, jti FROM logout_tokens_seen WHERE expires_at <= ? \
                 ORDER BY expires_at LIMIT {batch}"
            ),
            "logout tokens",
            |r| Ok((r.text(0)?, r.text(1)?)),
        );
        let mut logout_tokens = 0;
        for (issuer, jti) in self.fetch_all(&seen, &[now.into()]).await? {
            let sql = "DELETE FROM logout_tokens_seen WHERE issuer = ? AND jti = ?";
            logout_tokens += self
                .execute(sql, &[issuer.as_str().into(), jti.as_str().into()])
                .await
                .context("logout tokens")?;
        }
        Ok(Swept {
            sessions,
            logout_tokens,
        })
    }

    async fn record_logout_token(
        &self,
        issuer: &str,
        jti: &str,
        expires_at: UnixTime,
    ) -> StoreResult<bool> {
        let sql = "INSERT INTO logout_tokens_seen (issuer, jti, expires_at) VALUES (?, ?, ?)";
        let params: [Param<'_>; 3] = [issuer.into(), jti.into(), expires_at.into()];
        match self.execute(sql, &params).await {
            Ok(_) => Ok(true),
            // The key is (issuer, jti): a duplicate is the same token seen before.
            Err(e) => match write_error(e, Record::Setting("logout token")) {
                StoreError::Conflict(_) => Ok(false),
                other => Err(other),
            },
        }
    }
}

/// The statement that ends the sessions a logout names, and its two values.
fn ending(which: ProviderSessions<'_>) -> (&'static str, &str, &str) {
    match which {
        ProviderSessions::Sid { issuer, sid } => (
            "DELETE FROM web_sessions WHERE oidc_issuer = ? AND oidc_sid = ?",
            issuer,
            sid,
        ),
        ProviderSessions::Subject { issuer, subject } => (
            "DELETE FROM web_sessions WHERE oidc_issuer = ? AND oidc_subject = ?",
            issuer,
            subject,
        ),
    }
}
