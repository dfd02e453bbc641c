//! What differs between the databases the store runs on.

use std::future::Future;

use sqlx::{Database, Pool, Postgres, Sqlite, Transaction};

use super::rows::{GET_KEY, GET_KEY_LOCKED};
use crate::error::Error;
use crate::store::feed::ChangeFeed;

/// What differs between the databases the store runs on.
pub trait Backend: Database + Sync {
    /// `sqlite` or `postgres`, for logs and metrics.
    const LABEL: &'static str;

    /// Begins a transaction that will write.
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;

    /// Reads a key inside a write transaction so that no other change to it commits before
    /// this transaction does.
    const GET_KEY_FOR_WRITE: &'static str;

    /// Rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// A live feed of key changes made by any instance, if the database has one.
    fn change_feed(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Option<ChangeFeed>, Error>> + Send;
}

impl Backend for Sqlite {
    const LABEL: &'static str = "sqlite";
    /// `BEGIN IMMEDIATE` took the write lock already.
    const GET_KEY_FOR_WRITE: &'static str = GET_KEY;

    /// Takes SQLite's write lock up front: writers queue on the busy timeout instead of
    /// failing when a read lock would need upgrading.
    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    /// One SQLite file serves one instance: there is no one else to hear from.
    async fn change_feed(_: &Pool<Self>) -> Result<Option<ChangeFeed>, Error> {
        Ok(None)
    }
}

impl Backend for Postgres {
    const LABEL: &'static str = "postgres";
    const GET_KEY_FOR_WRITE: &'static str = GET_KEY_LOCKED;

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin().await
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    async fn change_feed(pool: &Pool<Self>) -> Result<Option<ChangeFeed>, Error> {
        let listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        Ok(Some(ChangeFeed::listen(listener).await?))
    }
}
