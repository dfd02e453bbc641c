//! Check values read from the store for keys not proven on this instance, so that a flood of
//! wrong secrets for one key id is refused from memory after the first read: no store read,
//! no argon2, and no wait in the id's flight, which the owner's first proof also needs. A key
//! id's check value never changes (a seal-key rotation rewrites it under another fingerprint,
//! which the check keys then do not judge), so entries need no expiry, only a bound.

use quick_cache::UnitWeighter;
use quick_cache::sync::Cache as QuickCache;

use super::shared::SMALL_MAP_ENTRIES;
use crate::model::KeyId;

pub(super) struct KnownChecks {
    map: QuickCache<KeyId, Box<str>>,
}

impl KnownChecks {
    pub(super) fn new() -> Self {
        KnownChecks {
            map: QuickCache::with_weighter(
                SMALL_MAP_ENTRIES,
                SMALL_MAP_ENTRIES as u64,
                UnitWeighter,
            ),
        }
    }

    pub(super) fn get(&self, id: &KeyId) -> Option<Box<str>> {
        self.map.get(id)
    }

    pub(super) fn note(&self, id: &KeyId, check: &str) {
        self.map.insert(id.clone(), check.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_check_value_per_key_id() {
        let checks = KnownChecks::new();
        let id = KeyId::from_store("key_a".into());
        assert_eq!(checks.get(&id), None);
        checks.note(&id, "v1.00000000.11111111");
        assert_eq!(checks.get(&id).as_deref(), Some("v1.00000000.11111111"));
    }
}
