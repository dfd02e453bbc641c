//! The negative cache: key ids the store did not know, and when it said so, so that garbage
//! with a valid checksum costs one store lookup per id per TTL.

use std::time::Duration;

use quick_cache::UnitWeighter;
use quick_cache::sync::Cache as QuickCache;

use super::shared::{SMALL_MAP_ENTRIES, younger};
use crate::clock::Timestamp;
use crate::model::KeyId;

pub(super) struct UnknownIds {
    /// Key ids the store did not know, and when it said so.
    map: QuickCache<KeyId, Timestamp>,
    /// How long an unknown key id is remembered.
    ttl: Duration,
}

impl UnknownIds {
    pub(super) fn new(ttl: Duration) -> Self {
        UnknownIds {
            map: QuickCache::with_weighter(
                SMALL_MAP_ENTRIES,
                SMALL_MAP_ENTRIES as u64,
                UnitWeighter,
            ),
            ttl,
        }
    }

    /// Whether the store said at most the negative TTL ago that `id` does not exist.
    pub(super) fn contains(&self, id: &KeyId, now: Timestamp) -> bool {
        self.map
            .get(id)
            .is_some_and(|at| younger(at, now, self.ttl))
    }

    pub(super) fn mark(&self, id: &KeyId, now: Timestamp) {
        self.map.insert(id.clone(), now);
    }

    /// Drops the "unknown id" memory of `id` (a key with that id now exists).
    pub(super) fn forget(&self, id: &KeyId) {
        self.map.remove(id);
    }

    pub(super) fn clear(&self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::records::secs;

    #[test]
    fn unknown_ids_are_forgotten_after_the_negative_ttl() {
        let c = UnknownIds::new(Duration::from_secs(10));
        let id = KeyId::from_store("key_a".into());
        assert!(!c.contains(&id, secs(0)));
        c.mark(&id, secs(0));
        assert!(c.contains(&id, secs(9)));
        assert!(!c.contains(&id, secs(10)));
        c.mark(&id, secs(20));
        c.forget(&id);
        assert!(!c.contains(&id, secs(20)));
        c.mark(&id, secs(20));
        c.clear();
        assert!(!c.contains(&id, secs(20)));
    }
}
