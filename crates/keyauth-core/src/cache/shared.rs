//! What the caches share: entries judged by their age against the `now` passed down.

use std::time::Duration;

use crate::clock::Timestamp;

/// Entries of the small maps (unknown ids, failure windows) kept at most.
pub(super) const SMALL_MAP_ENTRIES: usize = 100_000;

/// Whether something made at `made` is still younger than `ttl` at `now` (a clock moved back
/// counts as expired).
pub(super) fn younger(made: Timestamp, now: Timestamp, ttl: Duration) -> bool {
    now >= made && now.since(made) < ttl
}
