//! Usage counts per key and bucket (`usage_counts`): added in batches, read by hour or by day,
//! hourly rows folded into daily ones, old rows deleted.

use super::rows::UsageBucketRow;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::Environment;
use crate::store::records::{Granularity, UsageOf, UsageQuery};
use crate::usage_counts::{Counts, DAY_MICROS, UsageRow};

/// Adds one key's counts of one hour; the key's application and environment are copied from
/// its row (a key that is gone is counted nowhere).
const ADD_HOUR: &str = "INSERT INTO key_usage (key_id, application_id, environment, \
     granularity, bucket_start, valid, authentication_error, api_key_revoked, api_key_expired, \
     insufficient_permissions) \
     SELECT id, application_id, environment, 'hour', $2, $3, $4, $5, $6, $7 \
     FROM api_keys WHERE id = $1 \
     ON CONFLICT (key_id, granularity, bucket_start) DO UPDATE SET \
     valid = key_usage.valid + excluded.valid, \
     authentication_error = key_usage.authentication_error + excluded.authentication_error, \
     api_key_revoked = key_usage.api_key_revoked + excluded.api_key_revoked, \
     api_key_expired = key_usage.api_key_expired + excluded.api_key_expired, \
     insufficient_permissions = key_usage.insufficient_permissions + excluded.insufficient_permissions";

/// The sums of a group of rows, as bigints on both databases (PostgreSQL sums to numeric).
const SUMS: &str = "CAST(SUM(valid) AS BIGINT) AS valid, \
     CAST(SUM(authentication_error) AS BIGINT) AS authentication_error, \
     CAST(SUM(api_key_revoked) AS BIGINT) AS api_key_revoked, \
     CAST(SUM(api_key_expired) AS BIGINT) AS api_key_expired, \
     CAST(SUM(insufficient_permissions) AS BIGINT) AS insufficient_permissions";

/// Folds the hourly rows before $1 into daily rows, adding to any there.
const FOLD_HOURS: &str = "INSERT INTO key_usage (key_id, application_id, environment, \
     granularity, bucket_start, valid, authentication_error, api_key_revoked, api_key_expired, \
     insufficient_permissions) \
     SELECT key_id, application_id, environment, 'day', (bucket_start / 86400000000) * 86400000000, \
     SUM(valid), SUM(authentication_error), SUM(api_key_revoked), SUM(api_key_expired), \
     SUM(insufficient_permissions) \
     FROM key_usage WHERE granularity = 'hour' AND bucket_start < $1 \
     GROUP BY key_id, application_id, environment, (bucket_start / 86400000000) * 86400000000 \
     ON CONFLICT (key_id, granularity, bucket_start) DO UPDATE SET \
     valid = key_usage.valid + excluded.valid, \
     authentication_error = key_usage.authentication_error + excluded.authentication_error, \
     api_key_revoked = key_usage.api_key_revoked + excluded.api_key_revoked, \
     api_key_expired = key_usage.api_key_expired + excluded.api_key_expired, \
     insufficient_permissions = key_usage.insufficient_permissions + excluded.insufficient_permissions";
const DROP_FOLDED_HOURS: &str =
    "DELETE FROM key_usage WHERE granularity = 'hour' AND bucket_start < $1";
const DROP_OLD: &str = "DELETE FROM key_usage WHERE bucket_start < $1";

sql_impl! { impl {
    pub(super) async fn record_usage(&self, rows: &[UsageRow]) -> Result<(), Error> {
        let mut tx = DB::begin_write(&self.pool).await?;
        for row in rows {
            let [valid, auth, revoked, expired, insufficient] =
                row.counts.0.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
            sqlx::query(ADD_HOUR)
                .bind(row.key_id.as_str())
                .bind(row.hour.as_micros())
                .bind(valid)
                .bind(auth)
                .bind(revoked)
                .bind(expired)
                .bind(insufficient)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn usage(&self, query: &UsageQuery) -> Result<Vec<(Timestamp, Counts)>, Error> {
        // Placeholders only: every value is bound.
        let (bucket, granularity) = match query.granularity {
            Granularity::Hour => ("bucket_start", " AND granularity = 'hour'"),
            // Hours not folded yet count towards their day.
            Granularity::Day => ("(bucket_start / 86400000000) * 86400000000", ""),
        };
        let (subject, id, environment) = match &query.of {
            UsageOf::Key(id) => ("key_id = $1", id.as_str(), None),
            UsageOf::Application(app, env) => (
                "application_id = $1 AND ($4 IS NULL OR environment = $4)",
                app.as_str(),
                *env,
            ),
        };
        let sql = format!(
            "SELECT {bucket} AS bucket, {SUMS} FROM key_usage WHERE {subject}{granularity} \
             AND bucket_start >= $2 AND bucket_start < $3 GROUP BY {bucket} ORDER BY {bucket}"
        );
        let mut statement = sqlx::query_as::<_, UsageBucketRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(query.start.as_micros())
            .bind(query.end.as_micros());
        if matches!(query.of, UsageOf::Application(..)) {
            statement = statement.bind(environment.map(Environment::as_str));
        }
        let rows = statement.fetch_all(&mut *self.pool.acquire().await?).await?;
        Ok(rows.into_iter().map(UsageBucketRow::bucket).collect())
    }

    pub(super) async fn compact_usage(
        &self,
        fold_before: Timestamp,
        delete_before: Timestamp,
    ) -> Result<u64, Error> {
        // Whole days only: a day's hours are folded together.
        let fold_before = fold_before.as_micros().div_euclid(DAY_MICROS) * DAY_MICROS;
        let mut tx = DB::begin_write(&self.pool).await?;
        sqlx::query(FOLD_HOURS).bind(fold_before).execute(&mut *tx).await?;
        let folded = sqlx::query(DROP_FOLDED_HOURS)
            .bind(fold_before)
            .execute(&mut *tx)
            .await?;
        let dropped = sqlx::query(DROP_OLD)
            .bind(delete_before.as_micros())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DB::rows_affected(&folded) + DB::rows_affected(&dropped))
    }
}}
