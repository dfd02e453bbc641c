//! Time as a parameter: a [`Timestamp`] type and the [`Clock`] that the service reads once per
//! call. Nothing below the service layer reads the system clock, so expiry and grace periods
//! are tested by moving a manual clock instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: microseconds since the Unix epoch (UTC), the unit the store keeps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Earliest time the service accepts (1970-01-01).
    pub const EPOCH: Timestamp = Timestamp(0);

    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Adds a duration, saturating at the far future instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Self {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}µs)", self.0)
    }
}

/// Where "now" comes from: the system clock in production, a hand-moved clock in tests.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `start`; move it with [`Clock::advance`].
    pub fn manual(start: Timestamp) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(start.as_micros())))
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => {
                let since = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO);
                Timestamp(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
            }
            Clock::Manual(micros) => Timestamp(micros.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(micros) = self {
            let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            micros.fetch_add(by, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(Timestamp::from_micros(1_000));
        assert_eq!(clock.now(), Timestamp::from_micros(1_000));
        clock.advance(Duration::from_millis(2));
        assert_eq!(clock.now(), Timestamp::from_micros(3_000));
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_micros(i64::MAX - 1);
        assert_eq!(
            t.saturating_add(Duration::from_secs(10)).as_micros(),
            i64::MAX
        );
        assert_eq!(Timestamp::EPOCH.since(t), Duration::ZERO);
        assert_eq!(
            t.since(Timestamp::EPOCH).as_micros(),
            (i64::MAX - 1) as u128
        );
    }
}
