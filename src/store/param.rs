//! A value a statement binds, in the one form both drivers take: sqlx's `Any` arguments and
//! rusqlite's parameters of the hot reads.

/// A statement parameter: the schema has only text and 64-bit integer columns, either of
/// them nullable.
#[derive(Clone, Debug)]
pub(super) enum Param<'a> {
    Text(&'a str),
    /// A value written in its text form (protocols, networks, overrides).
    OwnedText(String),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}

impl From<String> for Param<'_> {
    fn from(v: String) -> Self {
        Param::OwnedText(v)
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Param::OptText(v)
    }
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(v: Option<i64>) -> Self {
        Param::OptInt(v)
    }
}

impl From<&i64> for Param<'_> {
    fn from(v: &i64) -> Self {
        Param::Int(*v)
    }
}

/// A 0/1 column.
impl From<&bool> for Param<'_> {
    fn from(v: &bool) -> Self {
        Param::from(*v)
    }
}

/// A 0/1 column.
impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Param::Int(i64::from(v))
    }
}

/// A count or a size in bytes.
impl From<u64> for Param<'_> {
    fn from(v: u64) -> Self {
        Param::Int(to_i64(v))
    }
}

impl From<Option<u64>> for Param<'_> {
    fn from(v: Option<u64>) -> Self {
        Param::OptInt(v.map(to_i64))
    }
}

/// The hot reads bind through rusqlite.
impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Text(v) => v.to_sql(),
            Param::OwnedText(v) => v.to_sql(),
            Param::OptText(v) => v.to_sql(),
            Param::Int(v) => v.to_sql(),
            Param::OptInt(v) => v.to_sql(),
        }
    }
}

/// What the store writes for a count or a size; beyond `i64::MAX` is unlimited in practice.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
