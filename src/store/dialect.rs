//! The few differences between the three SQL dialects, in one place.
//!
//! Queries are written once with `?` placeholders and plain types (TEXT, BIGINT); only
//! PostgreSQL needs numbered placeholders, and only aggregate casts differ.

use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Mysql,
    Postgres,
}

impl Dialect {
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Dialect::Sqlite),
            "mysql" | "mariadb" => Some(Dialect::Mysql),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Mysql => "mysql",
            Dialect::Postgres => "postgres",
        }
    }

    /// Rewrites `?` placeholders to `$1, $2, …` for PostgreSQL. Our queries never contain a
    /// literal `?`, which keeps this a plain scan.
    pub fn rewrite_placeholders(self, query: &str) -> Cow<'_, str> {
        if self != Dialect::Postgres || !query.contains('?') {
            return Cow::Borrowed(query);
        }
        let mut out = String::with_capacity(query.len() + 16);
        let mut n = 0;
        for c in query.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    /// Appended to a `SELECT` that must read the newest committed row and keep it until
    /// the transaction ends. SQLite has no row locks: a transaction that has written holds
    /// the whole database, so its reads are current already.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Mysql | Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// `SUM` returns NUMERIC/DECIMAL on PostgreSQL and MySQL; cast back to a 64-bit integer.
    pub fn bigint_cast(self) -> &'static str {
        match self {
            Dialect::Mysql => "SIGNED",
            Dialect::Sqlite | Dialect::Postgres => "BIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let q = "SELECT a FROM t WHERE b = ? AND c = ?";
        assert_eq!(
            Dialect::Postgres.rewrite_placeholders(q),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
        assert_eq!(Dialect::Mysql.rewrite_placeholders(q), q);
        assert_eq!(Dialect::Sqlite.rewrite_placeholders(q), q);
    }

    #[test]
    fn urls_pick_the_dialect() {
        for (url, dialect) in [
            ("sqlite:///var/lib/x.db", Some(Dialect::Sqlite)),
            ("mysql://root@127.0.0.1/test", Some(Dialect::Mysql)),
            ("mariadb://root@127.0.0.1/test", Some(Dialect::Mysql)),
            ("postgresql://localhost/test", Some(Dialect::Postgres)),
            ("redis://x", None),
        ] {
            assert_eq!(Dialect::from_url(url), dialect, "{url}");
        }
    }
}
