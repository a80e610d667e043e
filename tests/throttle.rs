//! The throttle seen through the decision core: repeated failures end in `Fail(throttled)`
//! before the store is asked, while other networks and accounts carry on.
//!
//! Delays here are a few milliseconds so the tests run at full speed; the delay values
//! themselves are tested in `src/auth/throttle/memory.rs`, state shared through Redis in
//! `tests/throttle_redis.rs`. Windows and blocks run on a `ManualClock`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mailauthd::auth::app_password::AppPasswordKey;
use mailauthd::auth::last_use::LastUseWriter;
use mailauthd::auth::password::{self, Argon2Params};
use mailauthd::auth::pool::HashPool;
use mailauthd::auth::services::ServiceMap;
use mailauthd::auth::throttle::{Fingerprinter, KeyKind, Throttle, ThrottleConfig};
use mailauthd::auth::verify_cache::{VerifyCache, VerifyCacheConfig};
use mailauthd::auth::{AuthRequest, Authenticator, AuthenticatorParts, FailReason, Outcome};
use mailauthd::clock::{Clock, ManualClock};
use mailauthd::names::{Address, Protocols};
use mailauthd::provision::{self, NewMailbox};
use mailauthd::secret::Secret;
use mailauthd::store::{AuthSource, MailboxState};

const NOW: i64 = 1_800_000_000;
const CHEAP: Argon2Params = Argon2Params {
    memory_kib: 256,
    iterations: 1,
    parallelism: 1,
};
const THROTTLED: Outcome = Outcome::Fail(FailReason::Throttled);
const WRONG: Outcome = Outcome::Fail(FailReason::BadCredentials);

struct Fixture {
    auth: Authenticator,
    clock: ManualClock,
    writer: LastUseWriter,
    db: common::TestDb,
}

fn config() -> ThrottleConfig {
    ThrottleConfig {
        free_failures: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        window: Duration::from_secs(600),
        network_block_after: 5,
        account_block_after: 8,
        block_duration: Duration::from_secs(60),
        trusted_networks: vec!["10.0.0.0/8".parse().unwrap()],
        ..ThrottleConfig::default()
    }
}

async fn setup() -> Fixture {
    let db = common::fresh(&common::Backend::Sqlite).await;
    let store = db.dyn_store();
    common::create_example_org(&*store).await;
    for (address, pw) in [
        ("alice@example.org", "alice-pw"),
        ("bob@example.org", "bob-pw"),
    ] {
        let new = NewMailbox {
            address: Address::parse(address).unwrap(),
            password_hash: Some(password::hash_argon2id(pw.as_bytes(), CHEAP).unwrap()),
            auth_source: AuthSource::Local,
            display_name: String::new(),
            quota: None,
            protocols: Some(Protocols::ALL),
            state: Some(MailboxState::Active),
            template: None,
            oidc_identity: None,
            require_active_domain: false,
        };
        provision::create_mailbox(&*store, &ManualClock::at(NOW), new)
            .await
            .unwrap();
    }
    let clock = ManualClock::at(NOW);
    let (sender, writer) = LastUseWriter::spawn(store.clone(), Duration::from_millis(20), 100);
    let auth = Authenticator::new(AuthenticatorParts {
        store,
        key: AppPasswordKey::new(vec![42; 32]),
        pool: Arc::new(HashPool::new(2, 64)),
        clock: Arc::new(clock.clone()),
        services: ServiceMap::default(),
        argon2: CHEAP,
        rehash_on_login: false,
        last_use: sender,
        throttle: Arc::new(Throttle::in_memory(
            config(),
            Fingerprinter::random().unwrap(),
        )),
        verify_cache: Arc::new(
            VerifyCache::new(VerifyCacheConfig::default(), Arc::new(clock.clone())).unwrap(),
        ),
        max_age_without_sign_in: None,
        tokens: None,
    })
    .unwrap();
    Fixture {
        auth,
        clock,
        writer,
        db,
    }
}

impl Fixture {
    async fn login(&self, login: &str, password: &str, rip: &str) -> Outcome {
        self.attempt(login, password, rip, false).await
    }

    async fn attempt(&self, login: &str, password: &str, rip: &str, no_penalty: bool) -> Outcome {
        let rip: IpAddr = rip.parse().unwrap();
        self.auth
            .authenticate(&AuthRequest {
                login,
                secret: &Secret::from(password),
                kind: mailauthd::auth::SecretKind::Password,
                service: "imap",
                remote_ip: Some(rip),
                secured: true,
                mechanism: Some("PLAIN"),
                no_penalty,
                admitted: None,
            })
            .await
    }

    async fn finish(self) {
        drop(self.auth);
        self.writer.shutdown().await;
        self.db.finish().await;
    }
}

#[tokio::test]
async fn repeated_failures_are_throttled_and_other_networks_are_not() {
    let f = setup().await;
    for i in 0..5 {
        let out = f
            .login("alice@example.org", &format!("guess {i}"), "192.0.2.10")
            .await;
        assert_eq!(out, WRONG, "attempt {i}");
    }
    // The network is blocked: the right password and other accounts are refused there.
    assert_eq!(
        f.login("alice@example.org", "alice-pw", "192.0.2.10").await,
        THROTTLED
    );
    assert_eq!(
        f.login("bob@example.org", "bob-pw", "192.0.2.10").await,
        THROTTLED
    );
    // The owner elsewhere is unaffected: five failures do not block the account.
    assert!(matches!(
        f.login("alice@example.org", "alice-pw", "198.51.100.20")
            .await,
        Outcome::Ok(_)
    ));

    let listed = f.auth.throttle().list(f.clock.now_ms()).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            listed[0].key.to_string(),
            listed[0].kind,
            listed[0].failures
        ),
        ("192.0.2.10/32".to_string(), KeyKind::Network, 5)
    );
    assert_eq!(listed[0].blocked_until, Some((NOW + 60) * 1000));

    // Blocked attempts are not counted, so the block ends when it said it would.
    f.clock.advance(60);
    assert!(matches!(
        f.login("alice@example.org", "alice-pw", "192.0.2.10").await,
        Outcome::Ok(_)
    ));
    f.finish().await;
}

#[tokio::test]
async fn an_attacked_account_is_blocked_from_everywhere_until_its_block_ends() {
    let f = setup().await;
    for i in 0..8u8 {
        let rip = format!("203.0.113.{i}");
        let out = f
            .login("alice@example.org", &format!("guess {i}"), &rip)
            .await;
        assert_eq!(out, WRONG, "attempt {i}");
    }
    assert_eq!(
        f.login("alice@example.org", "alice-pw", "198.51.100.99")
            .await,
        THROTTLED
    );
    assert!(matches!(
        f.login("bob@example.org", "bob-pw", "198.51.100.99").await,
        Outcome::Ok(_)
    ));
    assert_eq!(
        f.auth
            .throttle()
            .clear(Some("Alice@Example.org"))
            .await
            .unwrap(),
        1,
        "a postmaster lifts the block"
    );
    assert!(matches!(
        f.login("alice@example.org", "alice-pw", "198.51.100.99")
            .await,
        Outcome::Ok(_)
    ));
    f.finish().await;
}

#[tokio::test]
async fn stale_clients_no_penalty_peers_and_trusted_networks_are_never_blocked() {
    let f = setup().await;
    for i in 0..20 {
        let out = f
            .login("alice@example.org", "last year's password", "192.0.2.30")
            .await;
        assert_eq!(out, WRONG, "stale attempt {i}");
    }
    for i in 0..20 {
        let out = f
            .attempt(
                "bob@example.org",
                &format!("no-penalty {i}"),
                "192.0.2.40",
                true,
            )
            .await;
        assert_eq!(out, WRONG, "no-penalty attempt {i}");
    }
    for i in 0..20 {
        let out = f
            .login("bob@example.org", &format!("trusted {i}"), "10.1.2.3")
            .await;
        assert_eq!(out, WRONG, "trusted attempt {i}");
    }
    for (login, pw, rip) in [
        ("alice@example.org", "alice-pw", "192.0.2.30"),
        ("bob@example.org", "bob-pw", "192.0.2.40"),
        ("bob@example.org", "bob-pw", "10.1.2.3"),
    ] {
        let out = f.login(login, pw, rip).await;
        assert!(matches!(out, Outcome::Ok(_)), "{login} from {rip}: {out:?}");
    }
    f.finish().await;
}

/// Unknown users count like wrong passwords (a guesser cannot tell them apart, so neither
/// may the throttle), and a blocked source is refused before the store is asked: with
/// the database gone it still gets "throttled", not a temporary failure.
#[tokio::test]
async fn a_blocked_source_is_refused_before_the_store_is_asked() {
    let f = setup().await;
    for i in 0..5 {
        let out = f
            .login(&format!("ghost{i}@example.org"), "x", "2001:db8:7:7::1")
            .await;
        assert_eq!(out, Outcome::Fail(FailReason::UnknownUser), "attempt {i}");
    }
    f.db.store.close().await;
    assert_eq!(
        f.login("alice@example.org", "alice-pw", "2001:db8:7:7:abcd::9")
            .await,
        THROTTLED,
        "same /64"
    );
    assert_eq!(
        f.login("alice@example.org", "alice-pw", "2001:db8:7:8::1")
            .await
            .label(),
        "tempfail",
        "another /64 reaches the (closed) store"
    );
    f.finish().await;
}
