//! The `[store]` section, checked into [`StoreOptions`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::settings_check::{inline_or_file, problem, Problem, Within};
use crate::store::{DatabaseUrl, Dialect, StoreOptions};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StoreSection {
    url: Option<String>,
    url_file: Option<PathBuf>,
    max_connections: Option<u32>,
    connect_timeout_ms: Option<u64>,
    query_timeout_ms: Option<u64>,
}

/// Without a URL the store is the SQLite file in the state directory.
pub fn check(
    section: StoreSection,
    state_directory: &Path,
    problems: &mut Vec<Problem>,
) -> StoreOptions {
    let url_key = if section.url_file.is_some() {
        "store.url_file"
    } else {
        "store.url"
    };
    let url = inline_or_file(
        "store",
        "url",
        section.url,
        section.url_file.as_deref(),
        problems,
    )
    .unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            state_directory.join("mailauthd.db").display()
        )
    });
    if Dialect::from_url(&url).is_none() {
        problem(
            problems,
            url_key,
            "unsupported database URL: use sqlite://PATH, mysql://USER@HOST/DB (MariaDB) or postgres://USER@HOST/DB",
        );
    }
    let max_connections = section.max_connections.unwrap_or(16);
    if max_connections == 0 {
        problem(problems, "store.max_connections", "must be at least 1");
    }
    let connect_timeout_ms = section.connect_timeout_ms.unwrap_or(3000);
    problems.within("store.connect_timeout_ms", connect_timeout_ms, 100..=60_000);
    let query_timeout_ms = section.query_timeout_ms.unwrap_or(3000);
    problems.within("store.query_timeout_ms", query_timeout_ms, 100..=600_000);
    StoreOptions {
        url: DatabaseUrl::new(url),
        max_connections: max_connections.max(1),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        query_timeout: Duration::from_millis(query_timeout_ms),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::parse;
    use crate::test_support::file_in_tempdir;

    #[test]
    fn the_store_query_timeout_has_a_default_and_bounds() {
        let c = parse("").unwrap();
        assert_eq!(c.store.query_timeout, Duration::from_secs(3));
        let c = parse("[store]\nquery_timeout_ms = 1500\n").unwrap();
        assert_eq!(c.store.query_timeout, Duration::from_millis(1500));
        let problems = parse("[store]\nquery_timeout_ms = 50\n").unwrap_err();
        assert_eq!(problems[0].key, "store.query_timeout_ms");
    }

    #[test]
    fn url_from_file_is_read_and_hidden_in_debug() {
        let (_dir, path) = file_in_tempdir("url", "postgres://mail:s3cret@127.0.0.1/mail\n");
        let c = parse(&format!("[store]\nurl_file = {:?}\n", path)).unwrap();
        assert_eq!(
            c.store.url.expose(),
            "postgres://mail:s3cret@127.0.0.1/mail"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
