//! The decision core's sections: `[credentials]` (key file, Argon2 cost, the verification
//! cache), `[hash_pool]`, `[services]` and `[last_use]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::password::Argon2Params;
use crate::auth::services::ServiceMap;
use crate::auth::verify_cache::VerifyCacheConfig;
use crate::auth::WEB_SERVICE;
use crate::names::Protocol;
use crate::settings_check::{problem, Problem, Within};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CredentialsSection {
    key_file: Option<PathBuf>,
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
    argon2_parallelism: Option<u32>,
    rehash_on_login: Option<bool>,
    verify_cache_entries: Option<usize>,
    verify_cache_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HashPoolSection {
    workers: Option<usize>,
    queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LastUseSection {
    flush_interval_ms: Option<u64>,
    queue: Option<usize>,
}

/// The key file: by default next to the SQLite file, in the state directory.
pub fn key_file(section: &CredentialsSection, state_directory: &Path) -> PathBuf {
    section
        .key_file
        .clone()
        .unwrap_or_else(|| state_directory.join("app-password.key"))
}

/// Whether a login replaces a stored hash that is not Argon2id at today's cost.
pub fn rehash_on_login(section: &CredentialsSection) -> bool {
    section.rehash_on_login.unwrap_or(true)
}

/// The cost of new hashes; below 8 MiB of memory is refused as too weak.
pub fn argon2(section: &CredentialsSection, problems: &mut Vec<Problem>) -> Argon2Params {
    let defaults = Argon2Params::default();
    let argon2 = Argon2Params {
        memory_kib: section.argon2_memory_kib.unwrap_or(defaults.memory_kib),
        iterations: section.argon2_iterations.unwrap_or(defaults.iterations),
        parallelism: section.argon2_parallelism.unwrap_or(defaults.parallelism),
    };
    if let Err(e) = argon2.validate() {
        problem(problems, "credentials.argon2_*", e.to_string());
    }
    if argon2.memory_kib < 8192 {
        problem(
            problems,
            "credentials.argon2_memory_kib",
            "below 8192 KiB is too weak for stored passwords",
        );
    }
    argon2
}

pub fn verify_cache(
    section: &CredentialsSection,
    problems: &mut Vec<Problem>,
) -> VerifyCacheConfig {
    let defaults = VerifyCacheConfig::default();
    let verify_cache = VerifyCacheConfig {
        entries: section.verify_cache_entries.unwrap_or(defaults.entries),
        lifetime: section
            .verify_cache_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.lifetime),
    };
    if verify_cache.entries > 10_000_000 {
        problem(
            problems,
            "credentials.verify_cache_entries",
            "must be at most 10000000 (0 turns the cache off)",
        );
    }
    if verify_cache.lifetime > Duration::from_secs(86_400) {
        problem(
            problems,
            "credentials.verify_cache_secs",
            "must be at most 86400 (one day)",
        );
    }
    verify_cache
}

/// Workers and queue length; no workers (or 0) means one per core.
pub fn hash_pool(section: &HashPoolSection, problems: &mut Vec<Problem>) -> (usize, usize) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let workers = match section.workers {
        None | Some(0) => cores,
        Some(n) if n > 256 => {
            problem(problems, "hash_pool.workers", "at most 256");
            cores
        }
        Some(n) => n,
    };
    (workers, section.queue.unwrap_or(64 * workers))
}

/// Service names beyond the built-in ones, each mapped to the protocol it logs in to.
pub fn services(section: &BTreeMap<String, String>, problems: &mut Vec<Problem>) -> ServiceMap {
    let mut extra = BTreeMap::new();
    for (name, protocol) in section {
        if name.trim().eq_ignore_ascii_case(WEB_SERVICE) {
            problem(
                problems,
                &format!("services.{name}"),
                "is reserved for the web page's password form; a mail service cannot use that name",
            );
            continue;
        }
        match protocol.parse::<Protocol>() {
            Ok(p) => {
                extra.insert(name.clone(), p);
            }
            Err(e) => problem(problems, &format!("services.{name}"), e.to_string()),
        }
    }
    ServiceMap::with_overrides(&extra)
}

/// How often last-use records are written, and how many may wait.
pub fn last_use(section: &LastUseSection, problems: &mut Vec<Problem>) -> (Duration, usize) {
    let interval = section.flush_interval_ms.unwrap_or(1000);
    problems.within("last_use.flush_interval_ms", interval, 10..=600_000);
    (
        Duration::from_millis(interval),
        section.queue.unwrap_or(10_000),
    )
}

#[cfg(test)]
mod tests {
    use crate::config::tests::problem_keys;

    #[test]
    fn the_verification_cache_lives_at_most_a_day() {
        assert_eq!(
            problem_keys("[credentials]\nverify_cache_secs = 100000\n"),
            ["credentials.verify_cache_secs"]
        );
    }
}
