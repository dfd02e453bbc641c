//! The audit trail (`key_events`): an event written with each change, ListKeyEvents, refused
//! operator calls and their retention, and the change follower's reads.

use keyauth_contract::principal::Scope;

use super::filters::{Assembled, Param, bind_all};
use super::rows::{ChangeRow, EventRow, Value};
use crate::auth_failures::FailureRow;
use crate::clock::Timestamp;
use crate::denials::DenialRow;
use crate::error::Error;
use crate::model::{KeyId, KeyRecord};
use crate::store::feed::KeyEvent;
use crate::store::records::{
    AuditEvent, EventFilter, EventKind, EventKinds, EventQuery, Exposure, Provenance,
};

const INSERT_EVENT: &str = "INSERT INTO key_events \
     (event, key_id, related_key_id, application_id, operator, peer, request_id, event_time, \
     source, url, detail, actor_name, actor_subject, actor_issuer) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// The start of every ListKeyEvents query; `list_events` adds the conditions its query needs
/// (placeholders only, never a value).
const SELECT_EVENTS: &str = "SELECT seq, event, key_id, related_key_id, application_id, \
     operator, peer, request_id, event_time, source, url, occurrences, detail, actor_name, \
     actor_subject, actor_issuer FROM key_events WHERE seq < ";

/// An event's kind as its bit in `EventKinds::bits` (`EventKind::bit`; checked by a test).
const EVENT_BIT: &str = "(CASE event WHEN 'issued' THEN 1 WHEN 'rolled' THEN 2 \
     WHEN 'revoked' THEN 4 WHEN 'operator_auth_failed' THEN 8 WHEN 'exposed' THEN 16 \
     WHEN 'updated' THEN 32 WHEN 'permission_denied' THEN 64 \
     WHEN 'expiring' THEN 128 ELSE 0 END)";

const INSERT_AUTH_FAILURES: &str = "INSERT INTO key_events \
     (event, peer, request_id, event_time, occurrences) VALUES ($1, $2, $3, $4, $5)";
const INSERT_DENIALS: &str = "INSERT INTO key_events \
     (event, peer, request_id, event_time, occurrences, actor_name, actor_subject, actor_issuer) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// Both kinds of aggregated refused-call rows.
const PURGE_AUTH_FAILURES: &str =
    "DELETE FROM key_events WHERE event IN ($1, $2) AND event_time < $3";

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
            .bind(who.actor.as_ref().map(|a| a.name.as_str()))
            .bind(who.actor.as_ref().map(|a| a.subject.as_str()).filter(|s| !s.is_empty()))
            .bind(who.actor.as_ref().map(|a| a.issuer.as_str()).filter(|s| !s.is_empty()))
            .execute(conn)
            .await
            .map_err(audit_failed)?;
        Ok(())
    }

    pub(super) async fn list_events(
        &self,
        query: &EventQuery,
        scope: &Scope,
        before: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, Error> {
        let (sql, params) = events_statement(query, scope, before, limit);
        let statement = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql));
        let rows = bind_all!(statement, params)
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

    pub(super) async fn record_denials(&self, rows: &[DenialRow]) -> Result<(), Error> {
        let mut tx = DB::begin_write(&self.pool).await?;
        for row in rows {
            sqlx::query(INSERT_DENIALS)
                .bind(EventKind::PermissionDenied.as_str())
                .bind(row.peer.as_deref())
                .bind(row.last_request_id.as_deref())
                .bind(row.at.as_micros())
                .bind(i64::try_from(row.count).unwrap_or(i64::MAX))
                .bind(row.actor.name.as_str())
                .bind(Some(row.actor.subject.as_str()).filter(|s| !s.is_empty()))
                .bind(Some(row.actor.issuer.as_str()).filter(|s| !s.is_empty()))
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
            .bind(EventKind::PermissionDenied.as_str())
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

/// ListKeyEvents' statement: `query`'s events in `scope` below sequence `before`, newest
/// first, at most `limit`. Every filter is one placeholder however many values the request
/// repeated (the kinds are one bit set), except the scope's application patterns, which come
/// from the principal's configuration.
fn events_statement<'a>(
    query: &'a EventQuery,
    scope: &'a Scope,
    before: i64,
    limit: u32,
) -> (String, Vec<Param<'a>>) {
    let mut sql = Assembled::new(SELECT_EVENTS);
    let p = sql.param(Param::Int(before));
    sql.push(&p);
    match &query.filter {
        EventFilter::Key(id) => {
            let p = sql.param(Param::Text(id.as_str()));
            sql.push(&format!(" AND (key_id = {p} OR related_key_id = {p})"));
        }
        EventFilter::Application(app) => {
            let p = sql.param(Param::Text(app.as_str()));
            sql.push(&format!(" AND application_id = {p}"));
        }
        EventFilter::All => {}
    }
    if query.kinds != EventKinds::ALL {
        let p = sql.param(Param::Int(query.kinds.bits()));
        sql.push(&format!(" AND ({EVENT_BIT} & {p}) <> 0"));
    }
    if let Some(actor) = &query.actor {
        let p = sql.param(Param::Text(actor));
        sql.push(&format!(" AND (actor_name = {p} OR actor_subject = {p})"));
    }
    if let Some(start) = query.start {
        let p = sql.param(Param::Int(start.as_micros()));
        sql.push(&format!(" AND event_time >= {p}"));
    }
    if let Some(end) = query.end {
        let p = sql.param(Param::Int(end.as_micros()));
        sql.push(&format!(" AND event_time < {p}"));
    }
    if !scope.is_everything() {
        // Events of keys in scope only: refused calls (no key) are in no limited scope.
        sql.push(" AND key_id IS NOT NULL");
        let apps = sql.scope_applications(scope);
        sql.push(&apps);
        if let Some(p) = sql.scope_environment(scope) {
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM api_keys WHERE api_keys.id = key_events.key_id \
                 AND api_keys.environment = {p})"
            ));
        }
    }
    let p = sql.param(Param::Int(i64::from(limit)));
    sql.push(&format!(" ORDER BY seq DESC LIMIT {p}"));
    sql.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_bit_of_each_kind_is_its_bit() {
        for kind in EventKind::ALL {
            let when = format!("WHEN '{}' THEN {} ", kind.as_str(), kind.bit());
            assert!(EVENT_BIT.contains(&when), "{kind:?}: {EVENT_BIT}");
        }
        assert_eq!(EVENT_BIT.matches("WHEN").count(), EventKind::ALL.len());
    }

    #[test]
    fn repeated_kinds_are_one_placeholder() {
        let query = EventQuery {
            kinds: std::iter::repeat_n(EventKind::Revoked, 40_000)
                .chain([EventKind::Issued])
                .collect(),
            ..EventQuery::of(EventFilter::All)
        };
        let all = Scope::everything();
        let (sql, params) = events_statement(&query, &all, 10, 5);
        assert_eq!(params.len(), 3, "{sql}");
        assert!(matches!(params[1], Param::Int(5)), "{params:?}");
    }
}
