//! `last_used_time`, recorded in memory on each successful Verify and written to the store in
//! batches (every flush interval and at shutdown), never one write per call.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::clock::Timestamp;
use crate::model::KeyId;

#[derive(Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<KeyId, Timestamp>>,
}

impl UsageRecorder {
    pub fn note(&self, id: &KeyId, at: Timestamp) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(id) {
            Some(t) if *t >= at => {}
            Some(t) => *t = at,
            None => {
                pending.insert(id.clone(), at);
            }
        }
    }

    /// A use not yet written to the store, if any.
    pub fn pending(&self, id: &KeyId) -> Option<Timestamp> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(id).copied()
    }

    /// Takes every pending use, for one batch write.
    pub fn take(&self) -> Vec<(KeyId, Timestamp)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Take the map itself, not its entries: a burst's capacity is not kept for ever.
        std::mem::take(&mut *pending).into_iter().collect()
    }

    /// Puts back a batch whose write failed, keeping newer uses noted meanwhile.
    pub fn restore(&self, batch: Vec<(KeyId, Timestamp)>) {
        for (id, at) in batch {
            self.note(&id, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_use_per_key() {
        let u = UsageRecorder::default();
        let a = KeyId::from_store("key_a".into());
        u.note(&a, Timestamp::from_micros(5));
        u.note(&a, Timestamp::from_micros(3));
        assert_eq!(u.pending(&a), Some(Timestamp::from_micros(5)));
        let batch = u.take();
        assert_eq!(batch.len(), 1);
        assert!(u.take().is_empty());
        u.note(&a, Timestamp::from_micros(7));
        u.restore(batch);
        assert_eq!(u.pending(&a), Some(Timestamp::from_micros(7)));
    }
}
