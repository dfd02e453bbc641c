//! Reads: one key, an application's keys, the applications, the audit trail; every listing
//! a page at a time through one page helper ([`page`]).

use std::future::Future;

use keyauth_contract::principal::Scope;

use super::{Authority, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{ApplicationId, KeyId, KeyRecord};
use crate::store::{
    ApplicationSummary, AuditEvent, Cursor, EventFilter, EventKind, EventQuery, KeyFilters,
    KeyListing, UsageQuery,
};
use crate::usage_counts::Counts;

/// One page of a listing: `fetch` reads at most `limit` items (one more than the page holds,
/// so that a next page shows itself); `next` makes the token that resumes after an item. The
/// page size is `page_size`, or the default for 0, and never more than [`MAX_PAGE_SIZE`]. The
/// token is empty on the last page.
async fn page<T, F>(
    page_size: u32,
    fetch: impl FnOnce(u32) -> F,
    next: impl FnOnce(&T) -> String,
) -> Result<(Vec<T>, String), Error>
where
    F: Future<Output = Result<Vec<T>, Error>>,
{
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let mut items = fetch(size + 1).await?;
    let token = if items.len() > size as usize {
        items.truncate(size as usize);
        next(items.last().expect("a full page has a last item"))
    } else {
        String::new()
    };
    Ok((items, token))
}

impl Authority {
    /// Applications that have keys in `scope`, by id, with their key counts per environment
    /// (`scope`'s) and state at now, a page at a time. A page token holds for the same scope
    /// only.
    pub async fn list_applications(
        &self,
        page_size: u32,
        page_token: &str,
        scope: &Scope,
    ) -> Result<(Vec<ApplicationSummary>, String), Error> {
        let after = match page_token {
            "" => None,
            token => Some(self.page_tokens.open_applications(token, scope)?),
        };
        let now = self.now();
        page(
            page_size,
            |limit| {
                self.store
                    .list_applications(after.as_ref(), limit, now, scope)
            },
            |last| {
                self.page_tokens
                    .issue_applications(&last.application_id, scope)
            },
        )
        .await
    }

    pub async fn get(&self, id: &KeyId) -> Result<KeyRecord, Error> {
        let record = self
            .store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::KeyNotFound(id.to_string()))?;
        Ok(self.with_pending_use(record))
    }

    pub async fn list(
        &self,
        application: &ApplicationId,
        filters: KeyFilters,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<KeyRecord>, String), Error> {
        let cursor = match page_token {
            "" => None,
            token => Some(self.page_tokens.open(application, &filters, token)?),
        };
        if filters.last_used_before.is_some() {
            // The uses noted here since the last flush are written first, so the store judges
            // them (another instance's unwritten uses are at most a flush interval old).
            self.write_last_use().await?;
        }
        let listing = KeyListing {
            filters,
            now: self.now(),
        };
        let (keys, next) = page(
            page_size,
            |limit| {
                self.store
                    .list_keys(application, &listing, cursor.as_ref(), limit)
            },
            |last| {
                let cursor = Cursor {
                    create_time: last.create_time,
                    id: last.id.clone(),
                };
                self.page_tokens.issue(application, &filters, &cursor)
            },
        )
        .await?;
        let keys = keys.into_iter().map(|k| self.with_pending_use(k)).collect();
        Ok((keys, next))
    }

    /// A stored record with the last use noted since the last flush, if later.
    fn with_pending_use(&self, mut record: KeyRecord) -> KeyRecord {
        if let Some(at) = self.usage.pending(&record.id) {
            record.last_used_time = record.last_used_time.max(Some(at));
        }
        record
    }

    /// Audit events of a key, an application or the whole authority (of some types, by an
    /// actor, in a time range), of keys in `scope` (with a limited scope, no event that belongs
    /// to no key), newest first, a page at a time. A page token holds for the same query and
    /// scope only.
    pub async fn list_events(
        &self,
        query: &EventQuery,
        page_size: u32,
        page_token: &str,
        scope: &Scope,
    ) -> Result<(Vec<AuditEvent>, String), Error> {
        if let (Some(start), Some(end)) = (query.start, query.end)
            && end <= start
        {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        let filter = event_filter(query);
        let before = match page_token {
            "" => i64::MAX,
            token => self.page_tokens.open_events(&filter, scope, token)?,
        };
        page(
            page_size,
            |limit| self.store.list_events(query, scope, before, limit),
            |last| self.page_tokens.issue_events(&filter, scope, last.seq),
        )
        .await
    }
}

/// The longest range GetKeyUsage reads at once.
pub const MAX_USAGE_RANGE: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

impl Authority {
    /// The verification counts of a key or an application in [`start`, `end`), by hour or by
    /// day (UTC), oldest first; buckets without a count are left out. Counts reach the store
    /// at each flush (`write_usage_counts`). A range that ends before it starts, or longer than
    /// [`MAX_USAGE_RANGE`], is INVALID_ARGUMENT.
    pub async fn usage(&self, query: &UsageQuery) -> Result<Vec<(Timestamp, Counts)>, Error> {
        if query.end <= query.start {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        if query.end.since(query.start) > MAX_USAGE_RANGE {
            return Err(Error::invalid(
                "end_time",
                "the range must be at most 366 days: ask for a longer one in parts",
            ));
        }
        self.store.usage(query).await
    }
}

/// What a ListKeyEvents page token is bound to: whose events, of which types, in which range,
/// by which actor (written with its length: no two filters write the same; none, as before
/// the actor filter, for every actor).
fn event_filter(query: &EventQuery) -> String {
    let mut filter = match &query.filter {
        EventFilter::Key(id) => format!("key:{id}"),
        EventFilter::Application(app) => format!("app:{}", app.as_str()),
        EventFilter::All => "all".to_owned(),
    };
    let mut kinds: Vec<&str> = query.kinds.iter().map(EventKind::as_str).collect();
    kinds.sort_unstable();
    let micros = |t: Option<Timestamp>| t.map_or(String::new(), |t| t.as_micros().to_string());
    filter.push_str(&format!(
        "\0{}\0{}\0{}",
        kinds.join(","),
        micros(query.start),
        micros(query.end)
    ));
    if let Some(actor) = &query.actor {
        filter.push_str(&format!("\0actor:{}:{actor}", actor.len()));
    }
    filter
}

#[cfg(test)]
mod actor_tests;
#[cfg(test)]
mod scope_tests;
#[cfg(test)]
mod tests;
