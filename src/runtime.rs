//! Assembles the decision core from a checked config: store, key, hash pool, last-use writer.

use std::sync::Arc;

use thiserror::Error;

use crate::auth::last_use::LastUseWriter;
use crate::auth::pool::HashPool;
use crate::auth::throttle::{Fingerprinter, Throttle};
use crate::auth::verify_cache::VerifyCache;
use crate::auth::{Authenticator, AuthenticatorParts, TokenVerifier};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::keyfile::{self, KeyFileError};
use crate::oidc::tokens::TokenValidator;
use crate::policy::SendCounters;
use crate::shared_state;
use crate::store::{self, GuardedStore, Store, StoreError};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("database {url}: {source}")]
    Store { url: String, source: StoreError },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("the operating system gave no random bytes for an in-memory key: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Redis(#[from] shared_state::SetupError),
    #[error("[oauth]: cannot set up the token validator: {0}")]
    Tokens(String),
}

impl StartError {
    pub fn is_temporary(&self) -> bool {
        matches!(self, StartError::Store { source, .. } if source.is_unavailable())
    }
}

pub struct Core {
    /// Every call with a deadline (`store.query_timeout_ms`).
    pub store: Arc<GuardedStore>,
    pub auth: Arc<Authenticator>,
    /// Shared with the decision core; the control socket lists and lifts blocks here.
    pub throttle: Arc<Throttle>,
    /// The policy service's sending-limit counters: in Redis when `[redis]` names one
    /// (on the throttle's connection), else in this process.
    pub send_counters: Arc<dyn SendCounters>,
    last_use: LastUseWriter,
}

/// The access-token validator when `[oauth]` is configured. It asks the provider nothing
/// yet: a provider that is down at start makes tokens fail temporarily, not the daemon.
fn token_verifier(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Option<Arc<dyn TokenVerifier>>, StartError> {
    let (Some(oauth), Some(oidc)) = (&config.oauth, &config.oidc) else {
        return Ok(None);
    };
    let validator =
        TokenValidator::new(oauth, oidc, clock).map_err(|e| StartError::Tokens(e.to_string()))?;
    Ok(Some(Arc::new(validator)))
}

impl Core {
    /// Opens and migrates the store, loads (or creates) the key, starts the writer.
    pub async fn start(config: &Config) -> Result<Core, StartError> {
        let store_err = |source| StartError::Store {
            url: config.store.url.to_string(),
            source,
        };
        let store = store::open(&config.store).await.map_err(store_err)?;
        let store = Arc::new(GuardedStore::new(store, config.store.query_timeout));
        store.migrate().await.map_err(store_err)?;
        let key = keyfile::load_or_create(&config.key_file)?;
        let dyn_store: Arc<dyn Store> = store.clone();
        let (sender, last_use) = LastUseWriter::spawn(
            dyn_store.clone(),
            config.last_use_interval,
            config.last_use_queue,
        );
        // Daemons sharing Redis must fingerprint a secret alike, or a stale client's one
        // old password counts once per daemon; alone, a random key reveals less.
        let fingerprinter = if config.throttle.redis_url.is_some() {
            Fingerprinter::for_site(&key)
        } else {
            Fingerprinter::random().map_err(StartError::Random)?
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // One connection for everything kept in Redis: one health, one outage line.
        let redis = shared_state::open(&config.redis, clock.clone())?;
        let throttle = Arc::new(shared_state::throttle_on(
            config.throttle.clone(),
            fingerprinter,
            redis.clone(),
        ));
        let send_counters = shared_state::send_counters(&config.redis, redis);
        let tokens = token_verifier(config, clock.clone())?;
        let auth = Authenticator::new(AuthenticatorParts {
            store: dyn_store,
            key,
            pool: Arc::new(HashPool::new(config.hash_workers, config.hash_queue)),
            clock: clock.clone(),
            services: config.services.clone(),
            argon2: config.argon2,
            rehash_on_login: config.rehash_on_login,
            last_use: sender,
            throttle: throttle.clone(),
            verify_cache: Arc::new(
                VerifyCache::new(config.verify_cache, clock).map_err(StartError::Random)?,
            ),
            max_age_without_sign_in: config
                .oidc
                .as_ref()
                .and_then(|o| o.liveness.max_days_without_sign_in)
                .map(|days| i64::try_from(days).unwrap_or(36_500) * 86_400),
            tokens,
        })
        .map_err(|e| StartError::Credentials(e.to_string()))?;
        Ok(Core {
            store,
            auth: Arc::new(auth),
            throttle,
            send_counters,
            last_use,
        })
    }

    /// Flushes last-use records and closes the database.
    pub async fn shutdown(self) {
        self.last_use.shutdown().await;
        self.store.close().await;
    }
}
