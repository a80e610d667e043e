//! Embedded schema migrations, one folder per dialect, applied in order.

use super::Dialect;

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    sqlite: &'static str,
    mysql: &'static str,
    postgres: &'static str,
}

impl Migration {
    pub fn sql(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Mysql => self.mysql,
            Dialect::Postgres => self.postgres,
        }
    }

    /// Statements end with `;` at the end of a line; our migrations hold no procedures.
    pub fn statements(&self, dialect: Dialect) -> Vec<String> {
        let mut statements = Vec::new();
        let mut current = String::new();
        for line in self.sql(dialect).lines() {
            let code = line.trim();
            if code.is_empty() || code.starts_with("--") {
                continue;
            }
            current.push_str(line);
            current.push('\n');
            if code.ends_with(';') {
                let stmt = current.trim().trim_end_matches(';').trim().to_string();
                statements.push(stmt);
                current.clear();
            }
        }
        if !current.trim().is_empty() {
            statements.push(current.trim().to_string());
        }
        statements
    }
}

macro_rules! migration {
    ($version:expr, $file:literal) => {
        Migration {
            version: $version,
            name: $file,
            sqlite: include_str!(concat!("migrations/sqlite/", $file)),
            mysql: include_str!(concat!("migrations/mysql/", $file)),
            postgres: include_str!(concat!("migrations/postgres/", $file)),
        }
    };
}

pub static MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_init.sql"),
    migration!(2, "0002_policy.sql"),
    migration!(3, "0003_overrides.sql"),
    migration!(4, "0004_credential_generation.sql"),
    migration!(5, "0005_web_sessions.sql"),
    migration!(6, "0006_identity_liveness.sql"),
];

/// Names of migrations in the order they apply; what `mailauthd migrate` reports.
pub fn applied_migrations(versions: &[i64]) -> Vec<String> {
    MIGRATIONS
        .iter()
        .filter(|m| versions.contains(&m.version))
        .map(|m| m.name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const DIALECTS: [Dialect; 3] = [Dialect::Sqlite, Dialect::Mysql, Dialect::Postgres];

    fn folder_files(dialect: Dialect) -> Vec<String> {
        let dir = format!(
            "{}/src/store/migrations/{}",
            env!("CARGO_MANIFEST_DIR"),
            dialect.name()
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// table -> ordered column names, read from the CREATE TABLE and ALTER TABLE … ADD
    /// COLUMN statements.
    fn schema(dialect: Dialect) -> BTreeMap<String, Vec<String>> {
        let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in MIGRATIONS {
            for stmt in m.statements(dialect) {
                if let Some(rest) = stmt.strip_prefix("ALTER TABLE ") {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    let [table, "ADD", "COLUMN", column, ..] = words[..] else {
                        panic!("{}: unexpected ALTER TABLE: {stmt}", m.name);
                    };
                    tables
                        .get_mut(table)
                        .unwrap_or_else(|| panic!("{}: no table {table}", m.name))
                        .push(column.to_string());
                    continue;
                }
                let Some(rest) = stmt.strip_prefix("CREATE TABLE ") else {
                    continue;
                };
                let name = rest.split_whitespace().next().unwrap().to_string();
                let body = &rest[rest.find('(').unwrap() + 1..rest.rfind(')').unwrap()];
                let columns = body
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| l.split_whitespace().next().unwrap().to_string())
                    .filter(|c| !["PRIMARY", "FOREIGN", "UNIQUE"].contains(&c.as_str()))
                    .collect();
                tables.insert(name, columns);
            }
        }
        tables
    }

    fn indexes(dialect: Dialect) -> Vec<String> {
        MIGRATIONS
            .iter()
            .flat_map(|m| m.statements(dialect))
            .filter(|s| s.starts_with("CREATE INDEX") || s.starts_with("CREATE UNIQUE INDEX"))
            .collect()
    }

    #[test]
    fn every_dialect_folder_has_the_same_files_and_all_are_embedded() {
        let expected: Vec<String> = MIGRATIONS.iter().map(|m| m.name.to_string()).collect();
        for d in DIALECTS {
            assert_eq!(
                folder_files(d),
                expected,
                "migrations/{} is out of step",
                d.name()
            );
        }
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "versions must increase"
        );
    }

    #[test]
    fn every_dialect_creates_the_same_tables_columns_and_indexes() {
        let sqlite = schema(Dialect::Sqlite);
        assert!(sqlite.contains_key("mailboxes") && sqlite.contains_key("app_passwords"));
        assert!(sqlite["mailboxes"].contains(&"overrides".to_string()));
        for d in [Dialect::Mysql, Dialect::Postgres] {
            assert_eq!(schema(d), sqlite, "{} schema differs from sqlite", d.name());
            assert_eq!(
                indexes(d),
                indexes(Dialect::Sqlite),
                "{} indexes differ",
                d.name()
            );
        }
    }
}
