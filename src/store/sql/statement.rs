//! How a statement is sent: its parameters, its dialect's placeholders, the rows decoded.
//!
//! Each function runs on the pool or inside a transaction alike (any sqlx executor), so a
//! query reads the same in both places.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Executor};

use super::super::param::Param;
use super::super::rows::Select;
use super::super::{Dialect, StoreResult};
use super::errors::SqlxResult;

type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

fn bind<'q>(mut query: AnyQuery<'q>, params: &'q [Param<'q>]) -> AnyQuery<'q> {
    for p in params {
        query = match p {
            Param::Text(v) => query.bind(*v),
            Param::OwnedText(v) => query.bind(v.as_str()),
            Param::OptText(v) => query.bind(*v),
            Param::Int(v) => query.bind(*v),
            Param::OptInt(v) => query.bind(*v),
        };
    }
    query
}

/// Runs a statement written with `?` placeholders; returns how many rows it changed.
pub(super) async fn execute<'c>(
    on: impl Executor<'c, Database = Any>,
    dialect: Dialect,
    sql: &str,
    params: &[Param<'_>],
) -> Result<u64, sqlx::Error> {
    let text = dialect.rewrite_placeholders(sql);
    let done = bind(sqlx::query(&text), params).execute(on).await?;
    Ok(done.rows_affected())
}

/// How many rows a fetch wants.
#[derive(Clone, Copy, Debug)]
pub(super) enum Rows {
    /// At most the first one.
    First,
    All,
}

/// The rows of `select`, decoded.
pub(super) async fn fetch<'c, T>(
    on: impl Executor<'c, Database = Any>,
    dialect: Dialect,
    select: &Select<T>,
    params: &[Param<'_>],
    rows: Rows,
) -> StoreResult<Vec<T>> {
    let text = dialect.rewrite_placeholders(&select.sql);
    let query = bind(sqlx::query(&text), params);
    let fetched = match rows {
        Rows::First => query.fetch_optional(on).await.map(Vec::from_iter),
        Rows::All => query.fetch_all(on).await,
    };
    let fetched = fetched.context(select.what)?;
    fetched.iter().map(|r| select.read(r)).collect()
}
