//! Prometheus metrics: what the daemon decided, how fast, and how loaded it is.
//!
//! One registry per process. The decision core, the policy service and provisioning each
//! record into it where their single decision point is, so every front door is counted
//! the same way without passing a handle through every constructor. Label values come
//! from fixed sets (protocol names, reason codes), never from what a client sent, so a
//! client cannot grow the number of series.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type Prometheus expects for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    protocol: &'static str,
    mechanism: &'static str,
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    outcome: &'static str,
    /// `app_password` or `password`: the two paths differ by three orders of magnitude.
    secret: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    action: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Latency buckets from 100 µs (an app password) to 10 s (Postfix's SASL timeout).
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

type Latency = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// Declares [`Metrics`]: each metric once, as its field, its type and first value, and the
/// name and help it is registered under. They are registered (and exposed) in this order,
/// then `build_info`.
macro_rules! metrics {
    ($($field:ident: $ty:ty = $first:expr, $name:literal, $help:literal;)*) => {
        struct Metrics {
            registry: Registry,
            $($field: $ty,)*
        }

        impl Metrics {
            fn new() -> Self {
                let mut registry = Registry::with_prefix("mailauthd");
                $(
                    let $field: $ty = $first;
                    registry.register($name, $help, $field.clone());
                )*
                register_build_info(&mut registry);
                Metrics { registry, $($field,)* }
            }
        }
    };
}

metrics! {
    auth: Family<AuthLabels, Counter> = Default::default(), "auth_requests", "Authentication decisions by protocol, SASL mechanism, outcome and reason";
    auth_latency: Latency = Family::new_with_constructor(latency_histogram), "auth_duration_seconds", "Time to decide a login, throttle delays included";
    policy: Family<PolicyLabels, Counter> = Default::default(), "policy_requests", "Postfix policy decisions by action and reason";
    policy_latency: Histogram = latency_histogram(), "policy_duration_seconds", "Time to decide a policy request";
    provisioning: Family<ResultLabels, Counter> = Default::default(), "provisioning", "Sign-ins through the identity provider: mailboxes created, updated, unchanged or refused";
    backchannel_logouts: Family<ResultLabels, Counter> = Default::default(), "backchannel_logouts", "Back-channel logout tokens from the identity provider: accepted, refused (by reason) or unavailable";
    throttle_delayed: Family<KindLabels, Counter> = Default::default(), "throttle_delayed", "Login attempts delayed by the throttle";
    throttle_refused: Family<KindLabels, Counter> = Default::default(), "throttle_blocked", "Login attempts refused because their network or account is blocked";
    throttle_fallbacks: Counter = Default::default(), "throttle_redis_fallbacks", "Throttle calls answered from memory because Redis did not answer in time";
    send_limits_fallbacks: Counter = Default::default(), "send_limits_redis_fallbacks", "Sending-limit checks answered from memory because Redis did not answer in time";
    auth_overloaded: Counter = Default::default(), "auth_overloaded", "Auth requests answered with a temporary failure because too many were being decided at once";
    verify_cache: Family<ResultLabels, Counter> = Default::default(), "verify_cache_lookups", "Stored-password checks answered by the verification cache (hit) or by hashing (miss)";
    hash_pool_depth: Gauge = Default::default(), "hash_pool_queue_depth", "Password hashes running or waiting for a worker";
    hash_pool_workers: Gauge = Default::default(), "hash_pool_workers", "Password hashes that may run at once";
    verify_cache_entries: Gauge = Default::default(), "verify_cache_entries", "Verified passwords remembered now";
    accept_errors: Family<ListenerLabels, Counter> = Default::default(), "accept_errors", "Failed accepts by listener (out of descriptors, for one); the listener backs off";
    connections_evicted: Family<ListenerLabels, Counter> = Default::default(), "connections_evicted", "Idle connections closed to make room for a new one on a full listener";
    identity_checks: Family<AnswerLabels, Counter> = Default::default(), "identity_checks", "Liveness checks of linked mailboxes by the identity provider's answer";
    identity_suspensions: Counter = Default::default(), "identity_suspensions", "Mailboxes suspended for mail logins because the identity provider no longer knows the person";
    identity_check_brake: Counter = Default::default(), "identity_check_brake", "Liveness passes that suspended nobody: provider down, client refused, or too many refusals";
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// A gauge that is 1, labelled with the running version.
fn register_build_info(registry: &mut Registry) {
    let build = Family::<VersionLabels, Gauge>::default();
    build
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register("build_info", "The running version", build);
}

/// One authentication decision. `protocol` is the resolved protocol's name, or `unknown`.
pub fn auth_decided(
    protocol: &'static str,
    mechanism: Option<&str>,
    outcome: &'static str,
    reason: &'static str,
    app_password_shaped: bool,
    took: Duration,
) {
    let m = &*METRICS;
    m.auth
        .get_or_create(&AuthLabels {
            protocol,
            mechanism: mechanism_label(mechanism),
            outcome,
            reason,
        })
        .inc();
    m.auth_latency
        .get_or_create(&LatencyLabels {
            outcome,
            secret: if app_password_shaped {
                "app_password"
            } else {
                "password"
            },
        })
        .observe(took.as_secs_f64());
}

/// A client-chosen mechanism name becomes one of a fixed set.
fn mechanism_label(mechanism: Option<&str>) -> &'static str {
    let Some(m) = mechanism else {
        return "none";
    };
    const KNOWN: [&str; 4] = ["PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"];
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(m))
        .map(|k| match *k {
            "PLAIN" => "plain",
            "LOGIN" => "login",
            "OAUTHBEARER" => "oauthbearer",
            _ => "xoauth2",
        })
        .unwrap_or("other")
}

/// One policy request answered (`action` is Postfix's verb) or failed (`action` = `error`).
pub fn policy_decided(action: &'static str, reason: &'static str, took: Duration) {
    let m = &*METRICS;
    m.policy
        .get_or_create(&PolicyLabels { action, reason })
        .inc();
    m.policy_latency.observe(took.as_secs_f64());
}

/// One sign-in's provisioning result: `created`, `updated`, `unchanged` or `refused`.
pub fn provisioned(result: &'static str, reason: &'static str) {
    METRICS
        .provisioning
        .get_or_create(&ResultLabels { result, reason })
        .inc();
}

/// One back-channel logout: `ok`, `refused` or `unavailable`, with a reason code.
pub fn backchannel_logout(result: &'static str, reason: &'static str) {
    METRICS
        .backchannel_logouts
        .get_or_create(&ResultLabels { result, reason })
        .inc();
}

/// One linked mailbox checked: `answer` is the liveness answer's code.
pub fn identity_checked(answer: &'static str) {
    METRICS
        .identity_checks
        .get_or_create(&AnswerLabels { answer })
        .inc();
}

pub fn identity_suspended() {
    METRICS.identity_suspensions.inc();
}

/// A pass that held back its suspensions (the brake, an unreachable provider, our client
/// refused).
pub fn identity_check_braked() {
    METRICS.identity_check_brake.inc();
}

/// `kind`: `network` or `account` for blocks; delays are counted under `any`.
pub fn throttle_delayed() {
    METRICS
        .throttle_delayed
        .get_or_create(&KindLabels { kind: "any" })
        .inc();
}

pub fn throttle_blocked(kind: &'static str) {
    METRICS
        .throttle_refused
        .get_or_create(&KindLabels { kind })
        .inc();
}

pub fn throttle_redis_fallback() {
    METRICS.throttle_fallbacks.inc();
}

pub fn send_limits_redis_fallback() {
    METRICS.send_limits_fallbacks.inc();
}

pub fn auth_overloaded() {
    METRICS.auth_overloaded.inc();
}

pub fn verify_cache(hit: bool) {
    METRICS
        .verify_cache
        .get_or_create(&ResultLabels {
            result: if hit { "hit" } else { "miss" },
            reason: "stored_password",
        })
        .inc();
}

/// `listener`: the config section's name, e.g. `auth_socket`.
pub fn accept_failed(listener: &'static str) {
    METRICS
        .accept_errors
        .get_or_create(&ListenerLabels { listener })
        .inc();
}

pub fn connection_evicted(listener: &'static str) {
    METRICS
        .connections_evicted
        .get_or_create(&ListenerLabels { listener })
        .inc();
}

/// Gauges that are read, not counted, set just before a scrape.
pub struct Levels {
    pub hash_pool_depth: usize,
    pub hash_pool_workers: usize,
    pub verify_cache_entries: usize,
}

/// The text exposition of every metric, with the gauges set from `levels`.
pub fn render(levels: &Levels) -> String {
    let m = &*METRICS;
    let gauge = |g: &Gauge, v: usize| {
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
    };
    gauge(&m.hash_pool_depth, levels.hash_pool_depth);
    gauge(&m.hash_pool_workers, levels.hash_pool_workers);
    gauge(&m.verify_cache_entries, levels.verify_cache_entries);
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> Levels {
        Levels {
            hash_pool_depth: 3,
            hash_pool_workers: 2,
            verify_cache_entries: 0,
        }
    }

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counts_appear_with_their_labels_and_gauges_are_set_at_render() {
        let before = render(&levels());
        let series = "mailauthd_auth_requests_total{protocol=\"imap\",mechanism=\"plain\",outcome=\"fail\",reason=\"unit_test_reason\"}";
        assert_eq!(line_value(&before, series), None);
        auth_decided(
            "imap",
            Some("plain"),
            "fail",
            "unit_test_reason",
            false,
            Duration::from_millis(3),
        );
        auth_decided(
            "imap",
            Some("PLAIN"),
            "fail",
            "unit_test_reason",
            false,
            Duration::from_millis(3),
        );
        let after = render(&levels());
        assert_eq!(line_value(&after, series), Some(2.0), "{after}");
        assert_eq!(
            line_value(&after, "mailauthd_hash_pool_queue_depth "),
            Some(3.0)
        );
        assert!(after.contains("# TYPE mailauthd_auth_duration_seconds histogram"));
        assert!(after.contains("mailauthd_build_info{version=\""));
        assert!(after.ends_with("# EOF\n"), "{after}");
    }

    #[test]
    fn mechanisms_from_the_network_map_to_a_fixed_set() {
        assert_eq!(mechanism_label(None), "none");
        assert_eq!(mechanism_label(Some("login")), "login");
        assert_eq!(mechanism_label(Some("XOAUTH2")), "xoauth2");
        assert_eq!(mechanism_label(Some("\u{1b}[31mEVIL")), "other");
        assert_eq!(mechanism_label(Some("CRAM-MD5")), "other");
    }
}
