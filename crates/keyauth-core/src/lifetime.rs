//! Lifetime bounds (`--max-live-key-lifetime`, `--max-test-key-lifetime`): a key issued,
//! rolled or updated without an expiry gets now + its environment's bound, and a later expiry
//! is refused (INVALID_ARGUMENT naming the field). Unset: no bound. A key made before a bound
//! was set keeps its expiry until it is rolled or its expiry is changed.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::Environment;

/// The longest lifetime of a key, per environment; `None`: unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifetimeBounds {
    pub live: Option<Duration>,
    pub test: Option<Duration>,
}

impl LifetimeBounds {
    /// No bound at all.
    pub const NONE: LifetimeBounds = LifetimeBounds {
        live: None,
        test: None,
    };

    /// The bound of `environment`'s keys and the setting that sets it.
    fn bound(&self, environment: Environment) -> Option<(Duration, &'static str)> {
        match environment {
            Environment::Live => self.live.map(|d| (d, "--max-live-key-lifetime")),
            Environment::Test => self.test.map(|d| (d, "--max-test-key-lifetime")),
        }
    }

    /// The latest expiry a key of `environment` made or changed at `now` may have.
    pub fn latest(&self, environment: Environment, now: Timestamp) -> Option<Timestamp> {
        self.bound(environment).map(|(d, _)| now.saturating_add(d))
    }

    /// The expiry to store for a key of `environment` asked to expire at `requested` (`None`:
    /// never) at `now`: `requested` if within the bound, the bound if none was asked for; a
    /// later one is an error naming `field`.
    pub fn expiry(
        &self,
        environment: Environment,
        now: Timestamp,
        requested: Option<Timestamp>,
        field: &str,
    ) -> Result<Option<Timestamp>, Error> {
        let Some((bound, setting)) = self.bound(environment) else {
            return Ok(requested);
        };
        let latest = now.saturating_add(bound);
        match requested {
            None => Ok(Some(latest)),
            Some(t) if t <= latest => Ok(Some(t)),
            Some(_) => Err(Error::invalid(
                field,
                format!(
                    "must be at most {} from now: {setting} bounds the lifetime of {} keys",
                    human(bound),
                    environment.as_str()
                ),
            )),
        }
    }
}

/// `366d`, `12h`, `90m` or `45s`: the largest unit that divides `d`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s > 0 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s > 0 && s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: u64) -> Timestamp {
        Timestamp::from_micros(1_800_000_000_000_000).saturating_add(DAY * days as u32)
    }

    #[test]
    fn an_expiry_is_bounded_per_environment() {
        let bounds = LifetimeBounds {
            live: Some(DAY * 366),
            test: None,
        };
        let now = at(0);
        let live = |t| bounds.expiry(Environment::Live, now, t, "expire_time");
        // None asked: the bound.
        assert_eq!(live(None).unwrap(), Some(at(366)));
        // Within the bound, the bound itself included: as asked.
        assert_eq!(live(Some(at(30))).unwrap(), Some(at(30)));
        assert_eq!(live(Some(at(366))).unwrap(), Some(at(366)));
        // Later: refused, naming the field and the setting.
        match live(Some(at(367))).unwrap_err() {
            Error::InvalidArgument(v) => {
                assert_eq!(v[0].field, "expire_time");
                assert!(
                    v[0].description
                        .contains("at most 366d from now: --max-live-key-lifetime"),
                    "{}",
                    v[0].description
                );
            }
            other => panic!("{other:?}"),
        }
        // Test keys are unbounded here.
        assert_eq!(
            bounds
                .expiry(Environment::Test, now, None, "expire_time")
                .unwrap(),
            None
        );
        assert_eq!(bounds.latest(Environment::Test, now), None);
        assert_eq!(bounds.latest(Environment::Live, now), Some(at(366)));
        assert_eq!(
            LifetimeBounds::NONE
                .expiry(Environment::Live, now, Some(at(9999)), "x")
                .unwrap(),
            Some(at(9999))
        );
    }

    #[test]
    fn bounds_are_shown_in_their_largest_unit() {
        assert_eq!(human(DAY * 90), "90d");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
    }
}
