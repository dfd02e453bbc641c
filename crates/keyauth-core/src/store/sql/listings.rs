//! Reads of keys: one key, an application's keys a page at a time, the applications with their
//! key counts, and every key id (for the key filter).

use std::sync::atomic::Ordering;

use keyauth_contract::principal::Scope;

use super::filters::{Assembled, Param, bind_all};
use super::rows::{ApplicationRow, KeyRow, Value, corrupt, select_keys};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{ApplicationId, Environment, KeyId, KeyRecord};
use crate::store::records::{ApplicationSummary, Cursor, KeyCounts, KeyListing};

/// $5: an environment or NULL for both; $6: the states (`KeyStates::bits`: 1 active, 2
/// expired, 4 revoked; 0 every state) at $7 (now); $8: keys not used since then (never-used
/// ones included), or NULL for every key.
const LIST_KEYS: &str = select_keys!(
    "WHERE application_id = $1 AND (create_time < $2 OR (create_time = $2 AND id < $3)) \
     AND ($5 IS NULL OR environment = $5) \
     AND ($6 = 0 \
          OR ($6 & 1 <> 0 AND revoke_time IS NULL AND (expire_time IS NULL OR expire_time > $7)) \
          OR ($6 & 2 <> 0 AND revoke_time IS NULL AND expire_time <= $7) \
          OR ($6 & 4 <> 0 AND revoke_time IS NOT NULL)) \
     AND ($8 IS NULL OR last_used_time IS NULL OR last_used_time < $8) \
     ORDER BY create_time DESC, id DESC LIMIT $4"
);

/// Key counts per application, environment and state at `$1` (as `KeyRecord::state` judges:
/// revoked wins, a key expires at its expire_time exactly), for the applications of one page:
/// `list_applications` adds the page's and the scope's conditions (placeholders only).
const COUNT_APPLICATION_KEYS: &str = "SELECT application_id, environment, \
     SUM(CASE WHEN revoke_time IS NULL AND (expire_time IS NULL OR expire_time > $1) \
         THEN 1 ELSE 0 END) AS active, \
     SUM(CASE WHEN revoke_time IS NULL AND expire_time IS NOT NULL AND expire_time <= $1 \
         THEN 1 ELSE 0 END) AS expired, \
     SUM(CASE WHEN revoke_time IS NOT NULL THEN 1 ELSE 0 END) AS revoked \
     FROM api_keys WHERE ";

const COUNT_KEYS: &str = "SELECT COUNT(*) AS value FROM api_keys";
/// Key ids in id order after `$1` (the primary key's index: no sort).
const KEY_IDS_AFTER: &str = "SELECT id AS value FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2";

sql_impl! { impl {
    /// Where a listing of keys resumes, as [`LIST_KEYS`] binds it: strictly older than this
    /// (create_time, id); from the newest key without a cursor.
    pub(super) fn before(cursor: Option<&Cursor>) -> (i64, &str) {
        match cursor {
            Some(c) => (c.create_time.as_micros(), c.id.as_str()),
            // Every id sorts below "~", every time below i64::MAX.
            None => (i64::MAX, "~"),
        }
    }

    pub(super) async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
        self.key_reads.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.acquire().await?;
        Self::get(&mut *conn, id).await
    }

    pub(super) async fn list_keys(
        &self,
        application: &ApplicationId,
        listing: &KeyListing,
        (before_time, before_id): (i64, &str),
        limit: u32,
    ) -> Result<Vec<KeyRecord>, Error> {
        let rows = sqlx::query_as::<_, KeyRow>(LIST_KEYS)
            .bind(application.as_str())
            .bind(before_time)
            .bind(before_id)
            .bind(i64::from(limit))
            .bind(listing.filters.environment.map(Environment::as_str))
            .bind(listing.filters.states.bits())
            .bind(listing.now.as_micros())
            .bind(listing.filters.last_used_before.map(Timestamp::as_micros))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    pub(super) async fn list_applications(
        &self,
        after: Option<&ApplicationId>,
        limit: u32,
        now: Timestamp,
        scope: &Scope,
    ) -> Result<Vec<ApplicationSummary>, Error> {
        let (sql, params) = applications_statement(after, limit, now, scope);
        let statement = sqlx::query_as::<_, ApplicationRow>(sqlx::AssertSqlSafe(sql));
        let rows = bind_all!(statement, params)
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        let mut out: Vec<ApplicationSummary> = Vec::new();
        for row in rows {
            if out
                .last()
                .is_none_or(|a| a.application_id.as_str() != row.application_id)
            {
                out.push(ApplicationSummary {
                    application_id: ApplicationId::from_store(row.application_id.clone()),
                    test: KeyCounts::default(),
                    live: KeyCounts::default(),
                });
            }
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            let counts = KeyCounts {
                active: count(row.active),
                expired: count(row.expired),
                revoked: count(row.revoked),
            };
            let summary = out.last_mut().expect("pushed above");
            match Environment::from_store(&row.environment).ok_or_else(|| corrupt("environment"))? {
                Environment::Test => summary.test = counts,
                Environment::Live => summary.live = counts,
            }
        }
        Ok(out)
    }

    pub(super) async fn count_keys(&self) -> Result<u64, Error> {
        let row: Value<i64> = sqlx::query_as(COUNT_KEYS)
            .fetch_one(&mut *self.pool.acquire().await?)
            .await?;
        Ok(u64::try_from(row.value).unwrap_or(0))
    }

    pub(super) async fn key_ids(
        &self,
        after: Option<&KeyId>,
        limit: u32,
    ) -> Result<Vec<KeyId>, Error> {
        let rows: Vec<Value<String>> = sqlx::query_as(KEY_IDS_AFTER)
            .bind(after.map_or("", KeyId::as_str))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| KeyId::from_store(r.value))
            .collect())
    }
}}

/// ListApplications' statement: the key counts of the applications in `scope` after `after`,
/// at most `limit` of them, counting only keys of `scope`'s environment. An application whose
/// keys are all outside the scope's environment is not listed.
fn applications_statement<'a>(
    after: Option<&'a ApplicationId>,
    limit: u32,
    now: Timestamp,
    scope: &'a Scope,
) -> (String, Vec<Param<'a>>) {
    let mut sql = Assembled::new(COUNT_APPLICATION_KEYS);
    sql.param(Param::Int(now.as_micros()));
    let environment = match sql.scope_environment(scope) {
        Some(p) => format!(" AND environment = {p}"),
        None => String::new(),
    };
    let after = sql.param(Param::Text(after.map_or("", ApplicationId::as_str)));
    let applications = sql.scope_applications(scope);
    let limit = sql.param(Param::Int(i64::from(limit)));
    sql.push(&format!(
        "application_id IN (SELECT DISTINCT application_id FROM api_keys \
         WHERE application_id > {after}{applications}{environment} \
         ORDER BY application_id LIMIT {limit}){environment} \
         GROUP BY application_id, environment ORDER BY application_id, environment"
    ));
    sql.finish()
}
