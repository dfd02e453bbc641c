//! Time as a parameter: a [`Timestamp`] type and the [`Clock`] that the service reads once per
//! call. Nothing below the service layer reads the system clock, so expiry and grace periods
//! are tested by moving a manual clock instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
///
/// Two readings, for two jobs (review finding "clock jumps"):
/// - [`Clock::now`], wall-clock time for what is stored and judged against stored times
///   (creation, expiry, last use). It never goes back within a process: after the system clock
///   is set back, it holds at the latest time it gave until the wall clock passes it again, so
///   a backward jump cannot make an expired key valid again.
/// - [`Clock::steady_now`], the wall-clock time at start plus a monotonic clock's elapsed
///   time: it moves at the rate of real time and no jump moves it. For what measures spans in
///   memory (cache ages, failure windows, probe budgets) and for idempotency expiry, so that a
///   forward jump neither ages a retry's record out nor stalls a window once the jump is
///   corrected.
#[derive(Clone, Debug)]
pub struct Clock(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    source: Source,
    /// The latest wall-clock time `now` gave (µs).
    latest: AtomicI64,
    /// The wall-clock time when the clock was made (µs).
    origin_wall: i64,
}

#[derive(Debug)]
enum Source {
    System {
        origin: Instant,
    },
    /// Wall and steady time (µs), moved by hand.
    Manual {
        wall: AtomicI64,
        steady: AtomicI64,
    },
}

fn system_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

impl Clock {
    /// The system's clocks.
    pub fn system() -> Self {
        let origin_wall = system_micros();
        Clock(Arc::new(Inner {
            source: Source::System {
                origin: Instant::now(),
            },
            latest: AtomicI64::new(origin_wall),
            origin_wall,
        }))
    }

    /// A manual clock starting at `start`; move it with [`Clock::advance`] (time passing) or
    /// [`Clock::jump`] (the wall clock set).
    pub fn manual(start: Timestamp) -> Self {
        Clock(Arc::new(Inner {
            source: Source::Manual {
                wall: AtomicI64::new(start.0),
                steady: AtomicI64::new(start.0),
            },
            latest: AtomicI64::new(start.0),
            origin_wall: start.0,
        }))
    }

    /// Wall-clock time, never earlier than a time this clock gave before.
    pub fn now(&self) -> Timestamp {
        let wall = match &self.0.source {
            Source::System { .. } => system_micros(),
            Source::Manual { wall, .. } => wall.load(Ordering::SeqCst),
        };
        let before = self.0.latest.fetch_max(wall, Ordering::Relaxed);
        Timestamp(wall.max(before))
    }

    /// The time at start plus the time elapsed since, on a clock no jump moves.
    pub fn steady_now(&self) -> Timestamp {
        match &self.0.source {
            Source::System { origin } => {
                let elapsed = i64::try_from(origin.elapsed().as_micros()).unwrap_or(i64::MAX);
                Timestamp(self.0.origin_wall.saturating_add(elapsed))
            }
            Source::Manual { steady, .. } => Timestamp(steady.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock forward (time passing: both readings); does nothing to the
    /// system clock.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual { wall, steady } = &self.0.source {
            let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            wall.fetch_add(by, Ordering::SeqCst);
            steady.fetch_add(by, Ordering::SeqCst);
        }
    }

    /// Sets a manual clock's wall time `by` µs forward (negative: back), as an operator or
    /// NTP setting the system clock does; the steady reading does not move.
    pub fn jump(&self, by_micros: i64) {
        if let Source::Manual { wall, .. } = &self.0.source {
            wall.fetch_add(by_micros, Ordering::SeqCst);
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
    fn a_backward_jump_holds_now_and_no_jump_moves_steady_time() {
        let clock = Clock::manual(Timestamp::from_micros(10_000_000));
        clock.jump(-5_000_000);
        assert_eq!(clock.now(), Timestamp::from_micros(10_000_000), "held");
        assert_eq!(clock.steady_now(), Timestamp::from_micros(10_000_000));
        clock.advance(Duration::from_secs(6));
        assert_eq!(
            clock.now(),
            Timestamp::from_micros(11_000_000),
            "passed again"
        );
        assert_eq!(clock.steady_now(), Timestamp::from_micros(16_000_000));
        clock.jump(3_600_000_000);
        assert_eq!(clock.now(), Timestamp::from_micros(3_611_000_000));
        assert_eq!(clock.steady_now(), Timestamp::from_micros(16_000_000));
    }

    #[test]
    fn the_system_clock_never_goes_back() {
        let clock = Clock::system();
        let (a, s) = (clock.now(), clock.steady_now());
        assert!(clock.now() >= a && clock.steady_now() >= s);
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
