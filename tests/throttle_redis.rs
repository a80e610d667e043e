//! Throttle state shared through Redis: two `Throttle`s on one Redis (two daemons, as far
//! as the throttle can tell) must behave as one, with the rules of the in-memory throttle;
//! and a Redis that is down or silent must cost a login at most one short timeout while
//! memory keeps throttling.
//!
//! The shared-state tests need `MAILAUTHD_TEST_REDIS_URL` (required in CI); each uses a
//! prefix of its own. The outage tests need no Redis and always run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailauthd::auth::app_password::AppPasswordKey;
use mailauthd::auth::throttle::{
    Attempt, Fingerprinter, KeyKind, RedisUrl, Throttle, ThrottleConfig, ThrottleKey, Verdict,
};
use mailauthd::clock::SystemClock;
use mailauthd::shared_state;
use tokio::net::TcpListener;

const T0: i64 = 1_800_000_000_000;
const SEC: i64 = 1000;

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn net(s: &str) -> ThrottleKey {
    ThrottleKey::network_of(s.parse().unwrap())
}

fn ms(n: u64) -> Verdict {
    Verdict::Delay(Duration::from_millis(n))
}

fn config(url: &str, prefix: &str) -> ThrottleConfig {
    ThrottleConfig {
        free_failures: 2,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(800),
        window: Duration::from_secs(600),
        network_block_after: 6,
        account_block_after: 10,
        block_duration: Duration::from_secs(300),
        redis_url: Some(RedisUrl::new(url)),
        redis_prefix: prefix.to_string(),
        // Generous: these tests are about shared state, and a busy CI machine must not turn
        // a slow answer into a silent fallback (each test asserts there was none).
        redis_timeout: Duration::from_millis(1000),
        ..ThrottleConfig::default()
    }
}

/// A daemon's throttle: its own client and fingerprinter, from the site's shared key.
fn daemon(config: &ThrottleConfig) -> Throttle {
    let site_key = AppPasswordKey::new(vec![42; 32]);
    let fingerprinter = Fingerprinter::for_site(&site_key);
    shared_state::open_throttle(config.clone(), fingerprinter, Arc::new(SystemClock)).unwrap()
}

/// `n` failures with the distinct secrets `guess {from}`…, one second apart from `start`,
/// sent alternately through each of `daemons`; returns the time of the last.
async fn fail_n(
    daemons: &[&Throttle],
    rip: &str,
    account: &str,
    from: u32,
    n: u32,
    start: i64,
) -> i64 {
    let mut now = start;
    for i in 0..n {
        let t = daemons[i as usize % daemons.len()];
        now = start + i64::from(i) * SEC;
        let fp = t
            .fingerprinter()
            .fingerprint(account, format!("guess {}", from + i).as_bytes());
        t.record_failure(ip(rip), account, fp, now).await;
    }
    now
}

async fn listed(t: &Throttle, now: i64) -> Vec<(String, KeyKind, u32, Option<i64>)> {
    t.list(now)
        .await
        .into_iter()
        .map(|b| (b.key.to_string(), b.kind, b.failures, b.blocked_until))
        .collect()
}

#[tokio::test]
async fn two_daemons_on_one_redis_count_block_list_and_clear_as_one() {
    let Some(url) = common::redis_url("the shared-throttle test") else {
        return;
    };
    let config = config(&url, &common::unique_redis_prefix());
    let (a, b) = (daemon(&config), daemon(&config));
    assert!(a.is_shared() && b.is_shared());

    // Delays: failures through A and B add up, and both see the same delay.
    let last = fail_n(&[&a, &b], "192.0.2.7", "alice@example.org", 0, 3, T0).await;
    for t in [&a, &b] {
        assert_eq!(
            t.check(ip("192.0.2.7"), "alice@example.org", last).await,
            ms(200)
        );
    }
    // Another network and another account are untouched.
    assert_eq!(
        b.check(ip("192.0.2.8"), "carol@example.org", last).await,
        Verdict::Allow
    );

    // A stale client repeating one old password through both daemons counts once.
    let stale = |t: &Throttle| {
        t.fingerprinter()
            .fingerprint("bob@example.org", b"last year")
    };
    assert_eq!(stale(&a), stale(&b), "one site, one fingerprint key");
    for i in 0..20 {
        let t = if i % 2 == 0 { &a } else { &b };
        t.record_failure(ip("192.0.2.50"), "bob@example.org", stale(t), T0 + i * SEC)
            .await;
    }
    assert_eq!(
        a.check(ip("192.0.2.50"), "bob@example.org", T0 + 20 * SEC)
            .await,
        Verdict::Allow
    );

    // Blocks: the sixth failure of the network, whichever daemon saw it, blocks it at both.
    let last = fail_n(
        &[&b, &a],
        "192.0.2.7",
        "alice@example.org",
        3,
        3,
        last + SEC,
    )
    .await;
    let blocked = Verdict::Blocked {
        until: last + 300 * SEC,
        key: net("192.0.2.7"),
    };
    assert_eq!(
        a.check(ip("192.0.2.7"), "dave@example.org", last).await,
        blocked
    );
    assert_eq!(
        b.check(ip("192.0.2.7"), "dave@example.org", last).await,
        blocked
    );
    // Attempts admitted just before the block do not move it.
    fail_n(&[&a], "192.0.2.7", "alice@example.org", 100, 1, last + SEC).await;
    assert_eq!(
        b.check(ip("192.0.2.7"), "dave@example.org", last + 2 * SEC)
            .await,
        blocked
    );

    // Either daemon lists what both recorded.
    let expected = vec![
        (
            "192.0.2.7/32".to_string(),
            KeyKind::Network,
            6,
            Some(last + 300 * SEC),
        ),
        // Alice's account counts the attempt admitted before the block; it is not blocked.
        ("alice@example.org".to_string(), KeyKind::Account, 7, None),
        ("192.0.2.50/32".to_string(), KeyKind::Network, 1, None),
        ("bob@example.org".to_string(), KeyKind::Account, 1, None),
    ];
    assert_eq!(listed(&a, last + 2 * SEC).await, expected);
    assert_eq!(listed(&b, last + 2 * SEC).await, expected);

    // Clearing through B lifts at A: by address, by account, then everything.
    assert_eq!(b.clear(Some("192.0.2.7")).await.unwrap(), 1);
    assert_eq!(
        a.check(ip("192.0.2.7"), "dave@example.org", last + 2 * SEC)
            .await,
        Verdict::Allow
    );
    assert_eq!(b.clear(Some(" ALICE@example.org ")).await.unwrap(), 1);
    assert_eq!(
        a.check(ip("192.0.2.7"), "alice@example.org", last + 2 * SEC)
            .await,
        Verdict::Allow
    );
    assert_eq!(b.clear(Some("192.0.2.0/24")).await.unwrap(), 1);
    assert_eq!(a.clear(None).await.unwrap(), 1, "bob's account was left");
    assert!(listed(&b, last + 2 * SEC).await.is_empty());

    assert_eq!(a.redis_fallbacks() + b.redis_fallbacks(), 0);
    println!("throttle shared through redis passed");
}

#[tokio::test]
async fn success_windows_and_block_ends_follow_the_memory_rules_across_daemons() {
    let Some(url) = common::redis_url("the shared-throttle rules test") else {
        return;
    };
    let config = ThrottleConfig {
        network_block_after: 0,
        ..config(&url, &common::unique_redis_prefix())
    };
    let (a, b) = (daemon(&config), daemon(&config));

    // A success halves the network at most once a minute and clears the account.
    let last = fail_n(&[&a, &b], "192.0.2.9", "dave@example.org", 0, 8, T0).await;
    b.record_success(ip("192.0.2.9"), "dave@example.org", last + SEC)
        .await;
    assert_eq!(
        listed(&a, last + SEC).await,
        [("192.0.2.9/32".to_string(), KeyKind::Network, 4, None)]
    );
    a.record_success(ip("192.0.2.9"), "mallory@example.org", last + 2 * SEC)
        .await;
    assert_eq!(
        listed(&b, last + 2 * SEC).await[0].2,
        4,
        "not again so soon"
    );
    a.record_success(ip("192.0.2.9"), "mallory@example.org", last + 61 * SEC)
        .await;
    assert_eq!(listed(&b, last + 61 * SEC).await[0].2, 2);
    b.record_success(ip("192.0.2.9"), "mallory@example.org", last + 122 * SEC)
        .await;
    a.record_success(ip("192.0.2.9"), "mallory@example.org", last + 183 * SEC)
        .await;
    assert!(
        listed(&b, last + 183 * SEC).await.is_empty(),
        "relaxed to nothing"
    );

    // Failures are forgotten after a quiet window.
    let last = fail_n(&[&a, &b], "192.0.2.10", "", 0, 5, T0).await;
    assert_eq!(
        b.check(ip("192.0.2.10"), "", last + 599 * SEC).await,
        ms(800)
    );
    assert_eq!(
        a.check(ip("192.0.2.10"), "", last + 600 * SEC).await,
        Verdict::Allow
    );
    // ... and a failure after the window starts again from one.
    fail_n(&[&b], "192.0.2.10", "", 50, 1, last + 600 * SEC).await;
    assert_eq!(listed(&a, last + 600 * SEC).await[0].2, 1);

    // An account is blocked by failures from many networks through both daemons, the
    // block ends when it said, and a success does not lift a network block early.
    for i in 0..10u8 {
        let t = if i % 2 == 0 { &a } else { &b };
        let fp = t.fingerprinter().fingerprint("ceo@example.org", &[i]);
        let rip = IpAddr::from([203, 0, 113, i]);
        t.record_failure(Some(rip), "ceo@example.org", fp, T0 + i64::from(i))
            .await;
    }
    let until = T0 + 9 + 300 * SEC;
    assert_eq!(
        a.check(ip("198.51.100.9"), "ceo@example.org", T0 + 10)
            .await,
        Verdict::Blocked {
            until,
            key: ThrottleKey::account("ceo@example.org"),
        }
    );
    assert_eq!(
        b.check(ip("198.51.100.9"), "ceo@example.org", until).await,
        Verdict::Allow
    );
    b.clear(None).await.unwrap();

    let blocking = ThrottleConfig {
        network_block_after: 6,
        ..config.clone()
    };
    assert!(a.reconfigure(blocking.clone()).is_empty());
    assert!(b.reconfigure(blocking).is_empty());
    let last = fail_n(&[&a, &b], "192.0.2.11", "erin@example.org", 0, 6, T0).await;
    a.record_success(ip("192.0.2.11"), "erin@example.org", last + SEC)
        .await;
    assert!(matches!(
        b.check(ip("192.0.2.11"), "erin@example.org", last + SEC)
            .await,
        Verdict::Blocked { .. }
    ));
    assert_eq!(
        b.check(ip("192.0.2.11"), "erin@example.org", last + 300 * SEC)
            .await,
        Verdict::Allow,
        "served"
    );
    a.clear(None).await.unwrap();
    assert_eq!(a.redis_fallbacks() + b.redis_fallbacks(), 0);
    println!("throttle rules through redis passed");
}

/// Nothing listens on port 1: every call fails at once, memory answers, and throttling
/// goes on as if there were no Redis.
#[tokio::test]
async fn unreachable_redis_falls_back_to_memory_and_still_throttles() {
    let config = ThrottleConfig {
        redis_timeout: Duration::from_millis(250),
        ..config("redis://127.0.0.1:1/", "unreachable:")
    };
    let t = daemon(&config);
    let started = Instant::now();
    assert_eq!(t.check(ip("192.0.2.7"), "", T0).await, Verdict::Allow);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    let last = fail_n(&[&t], "192.0.2.7", "", 0, 6, T0).await;
    assert!(matches!(
        t.check(ip("192.0.2.7"), "", last).await,
        Verdict::Blocked { .. }
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(t.redis_fallbacks() >= 8, "{}", t.redis_fallbacks());
    assert_eq!(listed(&t, last).await.len(), 1, "this daemon's own view");
    let e = t.clear(Some("192.0.2.7")).await.unwrap_err();
    assert_eq!(e.removed, 1, "{e}");
    assert_eq!(t.check(ip("192.0.2.7"), "", last).await, Verdict::Allow);
}

/// A Redis that accepts connections and never answers: the first call waits one timeout,
/// the calls right after it do not wait at all.
#[tokio::test]
async fn silent_redis_costs_one_timeout_not_one_per_login() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let config = ThrottleConfig {
        redis_timeout: Duration::from_millis(100),
        ..config(&format!("redis://127.0.0.1:{port}/"), "silent:")
    };
    let t = daemon(&config);

    let started = Instant::now();
    assert_eq!(t.check(ip("192.0.2.7"), "", T0).await, Verdict::Allow);
    let first = started.elapsed();
    assert!(
        first >= Duration::from_millis(100) && first < Duration::from_millis(600),
        "{first:?}"
    );
    let started = Instant::now();
    let last = fail_n(&[&t], "192.0.2.7", "", 0, 6, T0).await;
    assert!(matches!(
        t.check(ip("192.0.2.7"), "", last).await,
        Verdict::Blocked { .. }
    ));
    // Seven calls, well under one timeout in all (not seven).
    let rest = started.elapsed();
    assert!(rest < Duration::from_millis(300), "{rest:?}");
    assert_eq!(t.redis_fallbacks(), 8);
    acceptor.abort();
}

/// Redis goes away and comes back: meanwhile memory throttles, afterwards the shared
/// state (recorded before the outage) applies again without a restart.
#[tokio::test]
async fn redis_outage_falls_back_and_shared_state_returns_with_redis() {
    let Some(url) = common::redis_url("the Redis outage test") else {
        return;
    };
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let upstream = match client.get_connection_info().addr() {
        ::redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => panic!("the outage test relays TCP only, not {other:?}"),
    };
    let relay = common::relay::Relay::start(upstream).await;
    let config = ThrottleConfig {
        redis_timeout: Duration::from_millis(250),
        ..config(
            &common::relay::via(&url, &format!("127.0.0.1:{}", relay.port)),
            &common::unique_redis_prefix(),
        )
    };
    let t = daemon(&config);
    let last = fail_n(&[&t], "192.0.2.7", "", 0, 6, T0).await;
    assert!(matches!(
        t.check(ip("192.0.2.7"), "", last).await,
        Verdict::Blocked { .. }
    ));
    assert_eq!(t.redis_fallbacks(), 0);

    relay.cut();
    // Let the aborted links close before the next call.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Memory knows nothing of the block Redis holds; it answers on its own.
    assert_eq!(t.check(ip("192.0.2.7"), "", last).await, Verdict::Allow);
    assert!(t.redis_fallbacks() >= 1);
    fail_n(&[&t], "192.0.2.8", "", 0, 6, last).await;
    assert!(matches!(
        t.check(ip("192.0.2.8"), "", last + 6 * SEC).await,
        Verdict::Blocked { .. }
    ));

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if matches!(
            t.check(ip("192.0.2.7"), "", last).await,
            Verdict::Blocked { .. }
        ) {
            break;
        }
        assert!(Instant::now() < deadline, "Redis was not used again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        t.clear(None).await.unwrap(),
        2,
        "Redis's block and memory's"
    );
    println!("throttle redis outage and recovery passed");
}

/// With Redis, an attempt cancelled while it was being decided (its ticket dropped) still
/// counts: this daemon's own count holds next to the shared one.
#[tokio::test]
async fn attempts_cancelled_in_flight_count_with_redis_too() {
    let Some(url) = common::redis_url("the cancelled-attempt Redis test") else {
        return;
    };
    let config = config(&url, &common::unique_redis_prefix());
    let t = daemon(&config);
    for i in 0..6 {
        let secret = format!("cancelled {i}");
        let attempt = Attempt {
            rip: ip("192.0.2.90"),
            account: "",
            fingerprint: t.fingerprinter().fingerprint("", secret.as_bytes()),
            unguessable: false,
            counted: true,
        };
        let (verdict, ticket) = t.admit(attempt, T0).await;
        assert!(
            !matches!(verdict, Verdict::Blocked { .. }),
            "attempt {i}: {verdict:?}"
        );
        drop(ticket);
    }
    let attempt = Attempt {
        rip: ip("192.0.2.90"),
        account: "",
        fingerprint: 7,
        unguessable: false,
        counted: true,
    };
    let (verdict, _ticket) = t.admit(attempt, T0 + SEC).await;
    assert!(matches!(verdict, Verdict::Blocked { .. }), "{verdict:?}");
    assert_eq!(t.redis_fallbacks(), 0, "Redis answered every call");
    t.clear(None).await.unwrap();
    println!("cancelled attempts through redis passed");
}
