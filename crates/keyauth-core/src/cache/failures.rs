//! The failed-secret window: failed secrets per key id in a window; past the limit, unproven
//! attempts on that id get one argon2 try per `throttled_try_interval` (one a second) and the
//! rest a retryable refusal ([`Admission::Throttled`]), never "invalid".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quick_cache::UnitWeighter;
use quick_cache::sync::Cache as QuickCache;

use super::shared::{SMALL_MAP_ENTRIES, younger};
use crate::clock::Timestamp;
use crate::model::KeyId;

/// Failed secrets for one key id since `start`.
#[derive(Debug)]
struct FailureWindow {
    start: Timestamp,
    count: u32,
    /// The last unproven attempt let through once past the limit.
    last_try: Option<Timestamp>,
}

impl FailureWindow {
    fn starting(start: Timestamp) -> Self {
        FailureWindow {
            start,
            count: 0,
            last_try: None,
        }
    }
}

/// Whether an unproven attempt on a key id may run argon2.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Try,
    /// Too many failures on this id: retry after this long.
    Throttled(Duration),
}

/// When failed secrets start rationing argon2 for a key id.
#[derive(Clone, Copy, Debug)]
pub(super) struct FailureLimits {
    /// Failed secrets per key id within `window` before argon2 is rationed.
    pub(super) limit: u32,
    pub(super) window: Duration,
    /// Past the limit, one unproven attempt per id per this interval still runs argon2.
    pub(super) try_interval: Duration,
}

pub(super) struct FailedSecrets {
    map: QuickCache<KeyId, Arc<Mutex<FailureWindow>>>,
    limits: FailureLimits,
}

impl FailedSecrets {
    pub(super) fn new(limits: FailureLimits) -> Self {
        FailedSecrets {
            map: QuickCache::with_weighter(
                SMALL_MAP_ENTRIES,
                SMALL_MAP_ENTRIES as u64,
                UnitWeighter,
            ),
            limits,
        }
    }

    /// Whether an unproven attempt on `id` may run argon2 at `now`; `take`: the attempt let
    /// through past the limit is counted at once, so concurrent callers do not all pass.
    pub(super) fn judge(&self, id: &KeyId, now: Timestamp, take: bool) -> Admission {
        let Some(window) = self.map.get(id) else {
            return Admission::Try;
        };
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        if !younger(w.start, now, self.limits.window) || w.count < self.limits.limit {
            return Admission::Try;
        }
        let interval = self.limits.try_interval;
        match w.last_try {
            Some(at) if younger(at, now, interval) => {
                Admission::Throttled(interval.saturating_sub(now.since(at)))
            }
            _ => {
                if take {
                    w.last_try = Some(now);
                }
                Admission::Try
            }
        }
    }

    /// Counts a failed secret for `id`; a window older than the limits' window starts over.
    pub(super) fn note(&self, id: &KeyId, now: Timestamp) {
        let window = match self.map.get(id) {
            Some(w) => w,
            None => {
                let fresh = Arc::new(Mutex::new(FailureWindow::starting(now)));
                self.map.insert(id.clone(), fresh.clone());
                fresh
            }
        };
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        if !younger(w.start, now, self.limits.window) {
            *w = FailureWindow::starting(now);
        }
        w.count = w.count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::records::secs;

    #[test]
    fn past_the_limit_one_try_a_second_and_the_window_expires() {
        let c = FailedSecrets::new(FailureLimits {
            limit: 3,
            window: Duration::from_secs(60),
            try_interval: Duration::from_secs(1),
        });
        let admit = |at| c.judge(&KeyId::from_store("key_a".into()), at, true);
        let look = |at| c.judge(&KeyId::from_store("key_a".into()), at, false);
        let id = KeyId::from_store("key_a".into());
        for _ in 0..3 {
            assert_eq!(admit(secs(10)), Admission::Try);
            c.note(&id, secs(10));
        }
        // Past the limit: the first attempt of each second runs, the rest wait.
        assert_eq!(look(secs(10)), Admission::Try, "looking takes nothing");
        assert_eq!(admit(secs(10)), Admission::Try);
        assert_eq!(look(secs(10)), Admission::Throttled(Duration::from_secs(1)));
        assert_eq!(
            admit(secs(10)),
            Admission::Throttled(Duration::from_secs(1))
        );
        assert_eq!(
            admit(Timestamp::from_micros(10_600_000)),
            Admission::Throttled(Duration::from_millis(400))
        );
        assert_eq!(admit(secs(11)), Admission::Try);
        assert_eq!(admit(secs(69)), Admission::Try);
        assert!(matches!(admit(secs(69)), Admission::Throttled(_)));
        // The window has passed: every attempt runs again.
        assert_eq!(admit(secs(70)), Admission::Try);
        assert_eq!(admit(secs(70)), Admission::Try);
        c.note(&id, secs(71));
        assert_eq!(admit(secs(71)), Admission::Try);
    }
}
