//! The audit trail (`key_events`): an event written with each change, ListKeyEvents, refused
//! operator calls and their retention, and the change follower's reads.

use super::rows::{ChangeRow, EventRow, Value};
use crate::auth_failures::FailureRow;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{KeyId, KeyRecord};
use crate::store::feed::KeyEvent;
use crate::store::records::{AuditEvent, EventFilter, EventKind, EventQuery, Exposure, Provenance};

const INSERT_EVENT: &str = "INSERT INTO key_events \
     (event, key_id, related_key_id, application_id, operator, peer, request_id, event_time, \
     source, url, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// The start of every ListKeyEvents query; `list_events` adds the conditions its query needs
/// (placeholders only, never a value).
const SELECT_EVENTS: &str = "SELECT seq, event, key_id, related_key_id, application_id, \
     operator, peer, request_id, event_time, source, url, occurrences, detail FROM key_events \
     WHERE seq < $1";

const INSERT_AUTH_FAILURES: &str = "INSERT INTO key_events \
     (event, peer, request_id, event_time, occurrences) VALUES ($1, $2, $3, $4, $5)";
const PURGE_AUTH_FAILURES: &str = "DELETE FROM key_events WHERE event = $1 AND event_time < $2";

const LATEST_EVENT: &str = "SELECT COALESCE(MAX(seq), 0) AS value FROM key_events";
const EVENTS_AFTER: &str = "SELECT seq, event, key_id, related_key_id FROM key_events \
     WHERE seq > $1 ORDER BY seq LIMIT $2";

/// A failed audit write stops the change: the store refused the record (UNAVAILABLE).
fn audit_failed(e: sqlx::Error) -> Error {
    Error::AuditUnavailable(e)
}

sql_impl! { impl {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn event(
        conn: &mut DB::Connection,
        kind: EventKind,
        key: &KeyRecord,
        related: Option<&KeyId>,
        when: Timestamp,
        who: &Provenance,
        exposure: Option<Exposure<'_>>,
        detail: Option<&str>,
    ) -> Result<(), Error> {
        sqlx::query(INSERT_EVENT)
            .bind(kind.as_str())
            .bind(key.id.as_str())
            .bind(related.map(KeyId::as_str))
            .bind(key.application_id.as_str())
            .bind(who.operator.as_deref())
            .bind(who.peer.as_deref())
            .bind(who.request_id.as_deref())
            .bind(when.as_micros())
            .bind(exposure.map(|e| e.source))
            .bind(exposure.map(|e| e.url))
            .bind(detail)
            .execute(conn)
            .await
            .map_err(audit_failed)?;
        Ok(())
    }

    pub(super) async fn list_events(
        &self,
        query: &EventQuery,
        before: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, Error> {
        // The statement is assembled from fixed pieces with numbered placeholders; every value
        // is bound, in the order of its placeholder.
        let mut sql = String::from(SELECT_EVENTS);
        let mut texts: Vec<&str> = Vec::new();
        let mut times = Vec::new();
        let mut next = 2;
        let mut placeholder = || {
            next += 1;
            format!("${}", next - 1)
        };
        match &query.filter {
            EventFilter::Key(id) => {
                let p = placeholder();
                sql.push_str(&format!(" AND (key_id = {p} OR related_key_id = {p})"));
                texts.push(id.as_str());
            }
            EventFilter::Application(app) => {
                sql.push_str(&format!(" AND application_id = {}", placeholder()));
                texts.push(app.as_str());
            }
            EventFilter::All => {}
        }
        if !query.kinds.is_empty() {
            let list: Vec<String> = query.kinds.iter().map(|_| placeholder()).collect();
            sql.push_str(&format!(" AND event IN ({})", list.join(", ")));
            texts.extend(query.kinds.iter().map(|k| k.as_str()));
        }
        if let Some(start) = query.start {
            sql.push_str(&format!(" AND event_time >= {}", placeholder()));
            times.push(start.as_micros());
        }
        if let Some(end) = query.end {
            sql.push_str(&format!(" AND event_time < {}", placeholder()));
            times.push(end.as_micros());
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", placeholder()));
        let mut statement = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql)).bind(before);
        for text in texts {
            statement = statement.bind(text);
        }
        for time in times {
            statement = statement.bind(time);
        }
        let rows = statement
            .bind(i64::from(limit))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        rows.into_iter().map(AuditEvent::try_from).collect()
    }

    pub(super) async fn record_auth_failures(&self, rows: &[FailureRow]) -> Result<(), Error> {
        let mut tx = DB::begin_write(&self.pool).await?;
        for row in rows {
            sqlx::query(INSERT_AUTH_FAILURES)
                .bind(EventKind::OperatorAuthFailed.as_str())
                .bind(row.peer.as_str())
                .bind(row.last_request_id.as_deref())
                .bind(row.at.as_micros())
                .bind(i64::try_from(row.count).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(audit_failed)?;
        }
        tx.commit().await.map_err(audit_failed)?;
        Ok(())
    }

    pub(super) async fn purge_auth_failures(&self, before: Timestamp) -> Result<u64, Error> {
        let done = sqlx::query(PURGE_AUTH_FAILURES)
            .bind(EventKind::OperatorAuthFailed.as_str())
            .bind(before.as_micros())
            .execute(&mut *self.pool.acquire().await?)
            .await?;
        Ok(DB::rows_affected(&done))
    }

    pub(super) async fn latest_event(&self) -> Result<i64, Error> {
        let row: Value<i64> = sqlx::query_as(LATEST_EVENT)
            .fetch_one(&mut *self.pool.acquire().await?)
            .await?;
        Ok(row.value)
    }

    pub(super) async fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<KeyEvent>, Error> {
        let rows: Vec<ChangeRow> = sqlx::query_as(EVENTS_AFTER)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        Ok(rows.into_iter().map(KeyEvent::from).collect())
    }
}}
