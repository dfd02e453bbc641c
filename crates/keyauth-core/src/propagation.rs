//! Keeping this instance's cache in step with changes made by any instance (DESIGN.md §4):
//!
//! - PostgreSQL's LISTEN/NOTIFY delivers each committed `key_events` row at once; the affected
//!   key's cache entry is dropped on arrival.
//! - Notifications sent while the listener is disconnected are lost, so `key_events` is also
//!   polled for sequences above the last one applied (every `poll_interval`), and when the
//!   listener drops, every cached record is marked stale (re-read from the store before it
//!   answers again) and the poll runs at once.
//! - Each successful poll tells the authority the store answered; past the staleness limit
//!   without one, Verify stops answering from memory (`UNAVAILABLE`).
//! - Each newly applied change is published to the authority's [`ChangeHub`] for the watch
//!   streams (`WatchKeyChanges`), and a change committed on this instance wakes the follower at
//!   once, so that its watchers hear of it within milliseconds, not at the next poll.
//!
//! [`ChangeHub`]: crate::changes::ChangeHub
//!
//! Sequences can commit out of order (and a rolled-back transaction leaves a gap for ever), so
//! the cursor remembers which sequences above its watermark it has applied, and steps over a
//! gap only once it is older than `gap_horizon` (longer than any key transaction lasts).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::authority::Authority;
use crate::changes::Change;
use crate::error::Error;
use crate::store::{ChangeFeed, EventKind, KeyEvent};

#[derive(Clone, Debug)]
pub struct FollowOptions {
    pub poll_interval: Duration,
    pub gap_horizon: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            poll_interval: Duration::from_secs(1),
            gap_horizon: Duration::from_secs(10),
        }
    }
}

/// Key events before the key filter's listing replayed at start-up (see `follow_changes`).
const STARTUP_REPLAY: i64 = 1000;

/// Which key events this instance has applied.
#[derive(Debug)]
struct EventCursor {
    /// Every sequence at or below it is applied (or a gap given up on).
    watermark: i64,
    /// Applied sequences above the watermark.
    applied: BTreeSet<i64>,
    /// Since when the sequence right after the watermark has been missing.
    gap_since: Option<Instant>,
}

impl EventCursor {
    fn new(watermark: i64) -> Self {
        EventCursor {
            watermark,
            applied: BTreeSet::new(),
            gap_since: None,
        }
    }

    /// Records `seq` as applied; false if it already was.
    fn apply(&mut self, seq: i64) -> bool {
        seq > self.watermark && self.applied.insert(seq)
    }

    /// Moves the watermark over contiguous applied sequences, and over a gap older than
    /// `horizon` (a sequence a rolled-back transaction took).
    fn advance(&mut self, now: Instant, horizon: Duration) {
        loop {
            while self.applied.remove(&(self.watermark + 1)) {
                self.watermark += 1;
                self.gap_since = None;
            }
            let Some(&next) = self.applied.first() else {
                self.gap_since = None;
                return;
            };
            let since = *self.gap_since.get_or_insert(now);
            if now.duration_since(since) < horizon {
                return;
            }
            tracing::debug!(
                from = self.watermark + 1,
                to = next - 1,
                "stepping over a key_events gap"
            );
            self.watermark = next - 1;
            self.gap_since = None;
        }
    }
}

/// Follows key changes until `stop` turns true.
pub async fn follow_changes(
    authority: Arc<Authority>,
    options: FollowOptions,
    mut stop: watch::Receiver<bool>,
) {
    let store = authority.store().clone();
    // From a little before where the key filter was listed: keys other instances made since
    // are added to it. The margin covers changes that took a sequence below the one read
    // then but had not committed yet (sequences commit out of order): above the watermark,
    // they are waited for like any gap. Replaying a few old events is harmless.
    let mut cursor = EventCursor::new(
        authority
            .keys_listed_after_event()
            .saturating_sub(STARTUP_REPLAY)
            .max(0),
    );
    authority.changes().set_watermark(cursor.watermark);
    let mut feed: Option<ChangeFeed> = None;
    let mut feed_supported = true;
    let mut poll = tokio::time::interval(options.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if feed.is_none() && feed_supported {
            match store.subscribe().await {
                Ok(Some(f)) => {
                    tracing::info!("listening for key changes");
                    feed = Some(f);
                    // Changes committed before the subscription took hold come from the table.
                    catch_up(&authority, &mut cursor, &options).await;
                }
                Ok(None) => feed_supported = false,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to key changes failed; polling only")
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = poll.tick() => catch_up(&authority, &mut cursor, &options).await,
            _ = authority.changes().committed() => catch_up(&authority, &mut cursor, &options).await,
            event = next_event(&mut feed) => match event {
                Ok(Some(event)) => {
                    apply(&authority, &mut cursor, &event).await;
                    advance(&authority, &mut cursor, &options);
                }
                lost => {
                    if let Err(e) = lost {
                        tracing::warn!(error = %e, "key change listener failed");
                    }
                    tracing::warn!("key change listener lost; cached keys are re-read before use");
                    feed = None;
                    authority.cache().expire_all();
                    catch_up(&authority, &mut cursor, &options).await;
                }
            },
        }
    }
}

/// Drops the cache entry of an event's key, adds a new key to the key filter, and publishes
/// the change to watchers, once per event.
async fn apply(authority: &Authority, cursor: &mut EventCursor, event: &KeyEvent) {
    if !cursor.apply(event.seq) {
        return;
    }
    let (Some(id), Some(kind)) = (&event.key_id, event.kind.filter(|k| k.changes_key())) else {
        return;
    };
    match kind {
        // A new key was proven nowhere yet: only a stale "unknown id" can concern it.
        EventKind::Issued => authority.note_key_exists(id),
        _ => authority.cache().forget(id),
    }
    if let Some(new) = &event.related_key_id {
        authority.note_key_exists(new);
    }
    if !authority.changes().has_watchers() {
        return;
    }
    let mut change = Change {
        seq: event.seq,
        kind,
        key_id: id.clone(),
        related_key_id: event.related_key_id.clone(),
        expire_time: None,
    };
    // A roll is worth a read: watchers learn the old key's new expiry.
    if kind == EventKind::Rolled
        && let Ok(Some(record)) = authority.store().get_key(id).await
    {
        change.related_key_id = record.replaced_by.or(change.related_key_id);
        change.expire_time = record.expire_time;
    }
    authority.changes().publish(change);
}

/// Moves the cursor on and tells watchers how far every change has been published.
fn advance(authority: &Authority, cursor: &mut EventCursor, options: &FollowOptions) {
    cursor.advance(Instant::now(), options.gap_horizon);
    authority.changes().set_watermark(cursor.watermark);
}

async fn next_event(feed: &mut Option<ChangeFeed>) -> Result<Option<KeyEvent>, Error> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

/// Applies every key event above the watermark.
async fn catch_up(authority: &Authority, cursor: &mut EventCursor, options: &FollowOptions) {
    const BATCH: u32 = 1000;
    loop {
        match authority
            .store()
            .events_after(cursor.watermark, BATCH)
            .await
        {
            Ok(events) => {
                authority.note_store_contact();
                let full = events.len() == BATCH as usize;
                for event in &events {
                    apply(authority, cursor, event).await;
                }
                let before = cursor.watermark;
                advance(authority, cursor, options);
                if !full || cursor.watermark == before {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "polling key events failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_follows_contiguous_sequences() {
        let mut c = EventCursor::new(10);
        let t = Instant::now();
        assert!(c.apply(11) && c.apply(12));
        assert!(!c.apply(12) && !c.apply(9));
        c.advance(t, Duration::from_secs(10));
        assert_eq!(c.watermark, 12);
        assert!(c.applied.is_empty());
    }

    #[test]
    fn a_gap_is_waited_for_then_stepped_over() {
        let mut c = EventCursor::new(0);
        let t = Instant::now();
        c.apply(2);
        c.advance(t, Duration::from_secs(10));
        assert_eq!(c.watermark, 0, "1 may still commit");
        // 1 commits late: applied, and the watermark moves over both.
        assert!(c.apply(1));
        c.advance(t + Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(c.watermark, 2);
        // 3 never commits (rolled back): stepped over once older than the horizon.
        c.apply(4);
        c.advance(t, Duration::from_secs(10));
        assert_eq!(c.watermark, 2);
        c.advance(t + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(c.watermark, 4);
        assert!(
            !c.apply(3),
            "a sequence below the watermark is not applied again"
        );
    }
}
