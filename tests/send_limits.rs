//! Sending-limit counters in Redis: the same answers as the memory counters for the same
//! sequences (one conformance run against both), two daemons on one Redis counting as
//! one (also when they race), keys that expire with their window, and a Redis that goes
//! away mid-way: memory answers, nothing is refused for it, and the shared counts return
//! with Redis.
//!
//! The Redis tests need `MAILAUTHD_TEST_REDIS_URL` (required in CI); each uses a prefix
//! of its own. The unreachable-Redis test needs none and always runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailauthd::auth::throttle::RedisUrl;
use mailauthd::clock::SystemClock;
use mailauthd::policy::{Counted, Counters, Exceeded, SendCounters, Usage, MESSAGES_PER_USER};
use mailauthd::shared_state::{Redis, RedisCounters};
use mailauthd::store::SendLimits;

const T0: i64 = 1_800_000_000;

#[derive(Clone, Debug)]
enum Op {
    Peek,
    Rcpt(Option<String>, Option<String>),
    Msg(Option<String>, u64),
}

#[derive(Clone, Debug)]
struct Step {
    user: &'static str,
    limits: &'static str,
    op: Op,
    now: i64,
}

fn usage(op: &Op) -> Usage<'_> {
    match op {
        Op::Peek => Usage::Peek,
        Op::Rcpt(instance, recipient) => Usage::Recipient {
            instance: instance.as_deref(),
            recipient: recipient.as_deref(),
        },
        Op::Msg(instance, recipients) => Usage::Message {
            instance: instance.as_deref(),
            recipients: *recipients,
        },
    }
}

/// What a counter answers: `None` for "counted", else the window and what ran out.
type Answer = Option<(u64, Counted, u64)>;

fn answer(r: Result<(), Exceeded>) -> Answer {
    r.err().map(|e| (e.window.seconds, e.counted, e.limit))
}

async fn run(counters: &dyn SendCounters, steps: &[Step]) -> Vec<Answer> {
    let mut out = Vec::new();
    for s in steps {
        let limits: SendLimits = s.limits.parse().unwrap();
        out.push(answer(
            counters
                .check_and_count(s.user, &limits, usage(&s.op), T0 + s.now)
                .await,
        ));
    }
    out
}

fn rcpt(user: &'static str, limits: &'static str, m: &str, r: &str, now: i64) -> Step {
    Step {
        user,
        limits,
        op: Op::Rcpt(Some(m.into()), Some(r.into())),
        now,
    }
}

fn msg(user: &'static str, limits: &'static str, m: Option<&str>, n: u64, now: i64) -> Step {
    Step {
        user,
        limits,
        op: Op::Msg(m.map(String::from), n),
        now,
    }
}

/// The memory counters' unit-test sequences, in one list per rule.
fn scenarios() -> Vec<(&'static str, Vec<Step>)> {
    let l = "1h:2:-";
    let mut forgotten = Vec::new();
    for i in 0..=MESSAGES_PER_USER {
        forgotten.push(rcpt("u", "1h:100:-", &format!("m{i}"), "a@x", 0));
    }
    forgotten.push(rcpt("u", "1h:34:-", "m32", "b@x", 0));
    forgotten.push(rcpt("u", "1h:34:-", "m0", "a@x", 0));
    forgotten.push(rcpt("u", "1h:34:-", "m1", "a@x", 0));
    vec![
        (
            "messages once per instance",
            vec![
                rcpt("u", l, "m1", "a@x", 0),
                rcpt("u", l, "m1", "b@x", 0),
                rcpt("u", l, "m1", "c@x", 0),
                rcpt("u", l, "m2", "a@x", 1),
                rcpt("u", l, "m3", "a@x", 2),
                rcpt("u", l, "m2", "d@x", 3),
                msg("u", l, Some("m2"), 2, 4),
                Step {
                    user: "u",
                    limits: l,
                    op: Op::Peek,
                    now: 5,
                },
            ],
        ),
        (
            "recipients once per message",
            vec![
                rcpt("u", "1h:-:3", "m1", "a@x", 0),
                rcpt("u", "1h:-:3", "m1", "b@x", 0),
                rcpt("u", "1h:-:3", "m1", "a@x", 0),
                rcpt("u", "1h:-:3", "m1", "b@x", 0),
                rcpt("u", "1h:-:3", "m1", "c@x", 0),
                rcpt("u", "1h:-:3", "m1", "d@x", 0),
                msg("u", "1h:-:3", Some("m1"), 3, 0),
                msg("u", "1h:-:3", Some("m2"), 1, 0),
            ],
        ),
        (
            "refused requests are not counted",
            vec![
                rcpt("u", "1h:1:-", "m1", "a@x", 0),
                rcpt("u", "1h:1:-", "m2", "a@x", 0),
                rcpt("u", "1h:1:-", "m2", "a@x", 0),
                rcpt("u", "1h:1:-", "m2", "a@x", 3600),
                rcpt("u", "1h:1:-", "m3", "a@x", 3601),
            ],
        ),
        (
            "windows and users apart",
            vec![
                rcpt("u", "1m:2:-,1h:3:-", "1", "r@x", 0),
                rcpt("u", "1m:2:-,1h:3:-", "2", "r@x", 0),
                rcpt("u", "1m:2:-,1h:3:-", "3", "r@x", 0),
                rcpt("v", "1m:2:-,1h:3:-", "1", "r@x", 0),
                rcpt("u", "1m:2:-,1h:3:-", "3", "r@x", 60),
                rcpt("u", "1m:2:-,1h:3:-", "4", "r@x", 60),
            ],
        ),
        (
            "no instance, every request a message",
            vec![
                Step {
                    user: "u",
                    limits: l,
                    op: Op::Rcpt(None, Some("a@x".into())),
                    now: 0,
                },
                Step {
                    user: "u",
                    limits: l,
                    op: Op::Rcpt(None, Some("a@x".into())),
                    now: 0,
                },
                msg("u", l, None, 1, 0),
            ],
        ),
        ("forgotten messages count again", forgotten),
        (
            "a changed limit keeps the windows that stayed",
            vec![
                rcpt("u", "1h:2:-", "m1", "a@x", 0),
                rcpt("u", "1m:5:-,1h:2:-", "m2", "a@x", 1),
                rcpt("u", "1m:5:-,1h:2:-", "m3", "a@x", 2),
            ],
        ),
    ]
}

/// A long mixed sequence from a fixed seed: two users, RCPTs (new and repeated
/// recipients, some without a recipient), END-OF-MESSAGE, MAIL, messages without an
/// instance, over more than 32 open messages. Time moves in small steps inside an
/// "epoch" and jumps two hours between them; an instance is only ever reused inside its
/// epoch, as Postfix's are (a message takes minutes, not hours).
fn random_steps(seed: u64, count: usize) -> Vec<Step> {
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let limits = "1m:3:5,1h:6:12";
    let mut steps = Vec::new();
    let mut now = 0;
    let mut epoch = 0;
    let mut made = 0u64;
    for i in 0..count {
        if i % 80 == 79 {
            now += 7200;
            epoch += 1;
        } else {
            now += i64::try_from(next(20)).unwrap();
        }
        let user = if next(3) == 0 { "v" } else { "u" };
        // Mostly a recent instance of this epoch, sometimes a new one.
        let instance = if next(4) == 0 || made == 0 {
            made += 1;
            made - 1
        } else {
            made - 1 - next(made.min(40))
        };
        let instance = Some(format!("{epoch}.{instance}"));
        let op = match next(10) {
            0 => Op::Peek,
            1 => Op::Msg(instance, next(4)),
            2 => Op::Msg(None, next(3)),
            3 => Op::Rcpt(instance, None),
            4 => Op::Rcpt(None, Some(format!("r{}@x", next(3)))),
            _ => Op::Rcpt(instance, Some(format!("r{}@x", next(4)))),
        };
        steps.push(Step {
            user,
            limits,
            op,
            now,
        });
        if i % 80 == 79 {
            made = 0;
        }
    }
    steps
}

/// Counters in Redis on a connection of their own (a daemon of their own), under `prefix`.
async fn redis_counters(url: &str, prefix: &str, timeout: Duration) -> RedisCounters {
    let redis = Redis::open(&RedisUrl::new(url), Arc::new(SystemClock)).unwrap();
    RedisCounters::new(Arc::new(redis), prefix, timeout)
}

fn prefix() -> String {
    common::unique_redis_prefix().replace(":throttle:", ":limits:")
}

#[tokio::test]
async fn redis_counters_answer_as_memory_does() {
    let Some(url) = common::redis_url("the sending-limit conformance test") else {
        return;
    };
    let mut scenarios = scenarios();
    scenarios.push(("random", random_steps(7, 800)));
    for (name, steps) in scenarios {
        let memory = Counters::default();
        let prefix = prefix();
        let redis = redis_counters(&url, &prefix, Duration::from_secs(2)).await;
        let expected = run(&memory, &steps).await;
        let got = run(&redis, &steps).await;
        for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
            assert_eq!(e, g, "{name}: step {i} {:?} differs", steps[i]);
        }
        // Each sequence both passes and refuses, so equal answers say something.
        assert!(
            expected.iter().any(Option::is_some),
            "{name}: never refused"
        );
        assert!(expected.iter().any(Option::is_none), "{name}: never passed");
        assert_eq!(redis.fallbacks(), 0, "{name}: Redis answered every call");
        assert_eq!(
            redis.tracked_users(),
            0,
            "{name}: nothing counted in memory"
        );
        if name == "random" {
            let refused = expected.iter().filter(|a| a.is_some()).count();
            println!(
                "random: {} steps, {refused} refused, same answers",
                steps.len()
            );
        }
        common::remove_redis_keys(&url, &prefix).await;
    }
    println!("sending limits answered as memory through redis");
}

#[tokio::test]
async fn two_daemons_on_one_redis_share_the_count() {
    let Some(url) = common::redis_url("the two-daemon sending-limit test") else {
        return;
    };
    let prefix = prefix();
    let a = redis_counters(&url, &prefix, Duration::from_secs(2)).await;
    let b = redis_counters(&url, &prefix, Duration::from_secs(2)).await;
    let l: SendLimits = "1h:2:-".parse().unwrap();
    let r = |m: &'static str, to: &'static str| Usage::Recipient {
        instance: Some(m),
        recipient: Some(to),
    };
    assert_eq!(
        a.check_and_count("u@x", &l, r("m1", "a@x"), T0).await,
        Ok(())
    );
    // The same message at the other daemon (its second recipient, its END-OF-MESSAGE)
    // is not a new message.
    assert_eq!(
        b.check_and_count("u@x", &l, r("m1", "b@x"), T0).await,
        Ok(())
    );
    let eom = Usage::Message {
        instance: Some("m1"),
        recipients: 2,
    };
    assert_eq!(b.check_and_count("u@x", &l, eom, T0).await, Ok(()));
    assert_eq!(
        b.check_and_count("u@x", &l, r("m2", "a@x"), T0 + 1).await,
        Ok(())
    );
    for (d, m) in [(&a, "m3"), (&b, "m3"), (&a, "m4")] {
        let over = d
            .check_and_count("u@x", &l, r(m, "a@x"), T0 + 2)
            .await
            .unwrap_err();
        assert_eq!((over.counted, over.limit), (Counted::Messages, 2));
    }
    assert!(a
        .check_and_count("u@x", &l, Usage::Peek, T0 + 3)
        .await
        .is_err());
    // Another user is not touched; the window's end frees both daemons.
    assert_eq!(
        a.check_and_count("v@x", &l, r("m1", "a@x"), T0).await,
        Ok(())
    );
    assert_eq!(
        b.check_and_count("u@x", &l, r("m3", "a@x"), T0 + 3600)
            .await,
        Ok(())
    );

    // Racing: 40 new messages at once through both daemons, limit 5: exactly 5 pass.
    let l5: SendLimits = "1h:5:-".parse().unwrap();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let d = if i % 2 == 0 { a.clone() } else { b.clone() };
        let l5 = l5.clone();
        tasks.push(tokio::spawn(async move {
            let instance = format!("race{i}");
            let usage = Usage::Recipient {
                instance: Some(&instance),
                recipient: Some("a@x"),
            };
            d.check_and_count("racer@x", &l5, usage, T0).await.is_ok()
        }));
    }
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.unwrap());
    }
    assert_eq!(passed, 5, "counted once, whichever daemon answered");
    assert_eq!(a.fallbacks() + b.fallbacks(), 0);
    common::remove_redis_keys(&url, &prefix).await;
    println!("sending limits shared through redis passed");
}

#[tokio::test]
async fn keys_expire_with_their_window() {
    let Some(url) = common::redis_url("the sending-limit expiry test") else {
        return;
    };
    let prefix = prefix();
    let c = redis_counters(&url, &prefix, Duration::from_secs(2)).await;
    let l: SendLimits = "1m:5:-,1h:50:-".parse().unwrap();
    let usage = Usage::Recipient {
        instance: Some("m1"),
        recipient: Some("a@x"),
    };
    // Both windows open 20 s before `now`: the 1m one has 40 s left, the 1h one 3580 s;
    // the message is kept an hour (the longest window) from its last request. Each gets
    // the 5 s of slack for clocks that differ.
    assert_eq!(c.check_and_count("u@x", &l, usage, T0).await, Ok(()));
    assert_eq!(c.check_and_count("u@x", &l, usage, T0 + 20).await, Ok(()));
    let conn = ::redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            let ms: i64 = ::redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            ms
        }
    };
    let minute = pttl(format!("{prefix}win:60:u@x")).await;
    assert!(
        (40_000..=45_000).contains(&minute),
        "1m window: {minute} ms"
    );
    let hour = pttl(format!("{prefix}win:3600:u@x")).await;
    assert!(
        (3_580_000..=3_585_000).contains(&hour),
        "1h window: {hour} ms"
    );
    let message = pttl(format!("{prefix}msg:3:u@x:m1")).await;
    assert!(
        (3_600_000..=3_605_000).contains(&message),
        "message: {message} ms"
    );
    let list = pttl(format!("{prefix}msgs:u@x")).await;
    assert!(
        (3_600_000..=3_605_000).contains(&list),
        "message list: {list} ms"
    );
    // No key of ours without an expiry.
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in keys {
        assert!(pttl(key.clone()).await > 0, "{key} never expires");
    }
    common::remove_redis_keys(&url, &prefix).await;
}

/// Redis goes away between two messages and comes back: meanwhile memory counts (a limit
/// still holds, nothing is refused for Redis itself), afterwards Redis's count applies
/// again without a restart.
#[tokio::test]
async fn redis_outage_falls_back_to_memory_and_recovers() {
    let Some(url) = common::redis_url("the sending-limit outage test") else {
        return;
    };
    let relay = common::relay::Relay::start(common::relay::upstream_of(&url)).await;
    let via = common::relay::via(&url, &format!("127.0.0.1:{}", relay.port));
    let prefix = prefix();
    let c = redis_counters(&via, &prefix, Duration::from_millis(250)).await;
    let l: SendLimits = "1h:3:-".parse().unwrap();
    let r = |m: &'static str| Usage::Recipient {
        instance: Some(m),
        recipient: Some("a@x"),
    };
    assert_eq!(c.check_and_count("u@x", &l, r("m1"), T0).await, Ok(()));
    assert_eq!(c.check_and_count("u@x", &l, r("m2"), T0).await, Ok(()));
    assert_eq!(c.fallbacks(), 0);

    relay.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    // Memory knows none of Redis's two: three more fit, the fourth does not.
    for m in ["m3", "m4", "m5"] {
        assert_eq!(
            c.check_and_count("u@x", &l, r(m), T0 + 1).await,
            Ok(()),
            "{m}"
        );
    }
    assert!(c.check_and_count("u@x", &l, r("m6"), T0 + 1).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the outage cost {:?}",
        started.elapsed()
    );
    assert!(c.fallbacks() >= 4, "{}", c.fallbacks());
    assert_eq!(c.tracked_users(), 1, "counted in memory");

    relay.restore();
    // Redis has two: a MAIL (which counts nothing) fits again once Redis answers.
    let deadline = Instant::now() + Duration::from_secs(15);
    while c
        .check_and_count("u@x", &l, Usage::Peek, T0 + 2)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "Redis was not used again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fallbacks = c.fallbacks();
    assert_eq!(c.check_and_count("u@x", &l, r("m7"), T0 + 2).await, Ok(()));
    assert!(c.check_and_count("u@x", &l, r("m8"), T0 + 2).await.is_err());
    assert_eq!(c.fallbacks(), fallbacks, "answered by Redis");
    common::remove_redis_keys(&url, &prefix).await;
    println!("sending limits through a Redis outage and back passed");
}

/// Nothing listens on port 1: every check is answered from memory, at once, and the
/// limits still hold.
#[tokio::test]
async fn unreachable_redis_still_limits_from_memory() {
    let c = redis_counters(
        "redis://127.0.0.1:1/",
        "unreachable:",
        Duration::from_millis(250),
    )
    .await;
    let l: SendLimits = "1h:2:-".parse().unwrap();
    let started = Instant::now();
    let r = |m: &'static str| Usage::Recipient {
        instance: Some(m),
        recipient: Some("a@x"),
    };
    assert_eq!(c.check_and_count("u@x", &l, r("m1"), T0).await, Ok(()));
    assert_eq!(c.check_and_count("u@x", &l, r("m1"), T0).await, Ok(()));
    assert_eq!(c.check_and_count("u@x", &l, r("m2"), T0).await, Ok(()));
    assert!(c.check_and_count("u@x", &l, r("m3"), T0).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(c.fallbacks() >= 4, "{}", c.fallbacks());
}
