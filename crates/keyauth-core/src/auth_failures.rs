//! Refused operator calls, counted in memory per peer address and written to the audit trail
//! in aggregate, never inline: a caller without the operator token can make keyauth write
//! nothing per call.
//!
//! - [`AuthFailures::note`] counts a failure of a peer (its IP address: every port of one host
//!   is one peer) and says whether that peer is past the limit (`limit` failures within
//!   `window`): its further failures are then answered RESOURCE_EXHAUSTED with the wait until
//!   its window ends. A right token is never refused here: the limit only changes how a
//!   failure is answered.
//! - [`AuthFailures::take`] (the housekeeping task, once per interval) hands back one row per
//!   peer with failures since the last take, carrying their count, the last request id and
//!   time; at most `max_rows` peers get a row of their own, the others are folded into one
//!   "other peers" row. So the audit trail grows by at most `max_rows + 1` rows per interval,
//!   whatever the attack.
//! - At most `max_peers` peers are tracked; failures of further peers count towards the
//!   "other peers" row only (and are not limited per peer).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Timestamp;

/// The peer of the "other peers" row.
pub const OTHER_PEERS: &str = "(other peers)";

#[derive(Clone, Debug)]
pub struct AuthFailureSettings {
    /// Failures per peer within `window` before further ones get RESOURCE_EXHAUSTED.
    pub limit: u32,
    pub window: Duration,
    /// Peers with a row of their own per interval; the rest share one.
    pub max_rows: usize,
    /// Peers tracked at most.
    pub max_peers: usize,
    /// How long the aggregated rows are kept in the audit trail.
    pub retention: Duration,
    /// Failures over all peers within `window` before each further one is answered only
    /// after [`GLOBAL_DELAY`] (guessing from many addresses at once).
    pub global_limit: u32,
}

/// How long a failure waits before it is answered once the global ceiling is passed.
pub const GLOBAL_DELAY: Duration = Duration::from_secs(1);

impl AuthFailureSettings {
    pub const DEFAULT_LIMIT: u32 = 20;
    pub const DEFAULT_GLOBAL_LIMIT: u32 = 1000;
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
}

impl Default for AuthFailureSettings {
    fn default() -> Self {
        AuthFailureSettings {
            limit: Self::DEFAULT_LIMIT,
            window: Duration::from_secs(60),
            max_rows: 20,
            max_peers: 10_000,
            retention: Self::DEFAULT_RETENTION,
            global_limit: Self::DEFAULT_GLOBAL_LIMIT,
        }
    }
}

/// One aggregated audit row: `count` refused operator calls of `peer`, the last at `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureRow {
    pub peer: String,
    pub count: u64,
    pub last_request_id: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug)]
struct Peer {
    window_start: Timestamp,
    in_window: u32,
    /// Failures not yet written.
    unwritten: u64,
    last_request_id: Option<String>,
    last_at: Timestamp,
}

struct State {
    peers: HashMap<String, Peer>,
    /// Failures of untracked peers not yet written, and when the last one happened.
    untracked: u64,
    untracked_at: Timestamp,
    /// Failures over all peers in the current global window.
    global_start: Timestamp,
    global_in_window: u32,
}

pub struct AuthFailures {
    state: Mutex<State>,
    settings: AuthFailureSettings,
}

impl AuthFailures {
    pub fn new(settings: AuthFailureSettings) -> Self {
        AuthFailures {
            state: Mutex::new(State {
                peers: HashMap::new(),
                untracked: 0,
                untracked_at: Timestamp::EPOCH,
                global_start: Timestamp::EPOCH,
                global_in_window: 0,
            }),
            settings,
        }
    }

    pub fn settings(&self) -> &AuthFailureSettings {
        &self.settings
    }

    /// Counts a refused call of `peer` at `now`; `Some(wait)` when that peer is past the
    /// limit (answer RESOURCE_EXHAUSTED, retry after `wait`).
    /// `at` is the wall-clock time (kept in the row), `now` the steady reading the windows are
    /// measured on (see `clock`).
    pub fn note(
        &self,
        peer: &str,
        request_id: Option<&str>,
        at: Timestamp,
        now: Timestamp,
    ) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now < state.global_start || now.since(state.global_start) >= self.settings.window {
            state.global_start = now;
            state.global_in_window = 0;
        }
        state.global_in_window = state.global_in_window.saturating_add(1);
        let tracked = state.peers.len() < self.settings.max_peers || state.peers.contains_key(peer);
        if !tracked {
            state.untracked += 1;
            state.untracked_at = at;
            return None;
        }
        let window = self.settings.window;
        let entry = state.peers.entry(peer.to_owned()).or_insert(Peer {
            window_start: now,
            in_window: 0,
            unwritten: 0,
            last_request_id: None,
            last_at: at,
        });
        if now < entry.window_start || now.since(entry.window_start) >= window {
            entry.window_start = now;
            entry.in_window = 0;
        }
        entry.in_window = entry.in_window.saturating_add(1);
        entry.unwritten += 1;
        entry.last_at = at;
        // Request ids are bounded (128 printable characters) by the server before they get here.
        entry.last_request_id = request_id.map(str::to_owned);
        (entry.in_window > self.settings.limit)
            .then(|| window.saturating_sub(now.since(entry.window_start)))
    }

    /// Whether failures over all peers are past the global ceiling in the current window:
    /// a failure is then answered only after [`GLOBAL_DELAY`].
    pub fn over_global_ceiling(&self, now: Timestamp) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let current =
            now >= state.global_start && now.since(state.global_start) < self.settings.window;
        current && state.global_in_window > self.settings.global_limit
    }

    /// `Some(wait)` when `peer` is past the limit in its current window (see [`Self::note`]),
    /// without counting anything.
    pub fn blocked(&self, peer: &str, now: Timestamp) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let entry = state.peers.get(peer)?;
        let window = self.settings.window;
        let current = now >= entry.window_start && now.since(entry.window_start) < window;
        (current && entry.in_window > self.settings.limit)
            .then(|| window.saturating_sub(now.since(entry.window_start)))
    }

    /// The rows to write for the failures since the last take (see the module docs), and
    /// forgets peers whose window has passed with nothing left to write.
    pub fn take(&self, now: Timestamp) -> Vec<FailureRow> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending: Vec<(&String, &mut Peer)> = state
            .peers
            .iter_mut()
            .filter(|(_, p)| p.unwritten > 0)
            .collect();
        // The loudest peers get their own rows.
        pending.sort_by(|a, b| b.1.unwritten.cmp(&a.1.unwritten).then(a.0.cmp(b.0)));
        let mut rows = Vec::new();
        let mut other = FailureRow {
            peer: OTHER_PEERS.to_owned(),
            count: 0,
            last_request_id: None,
            at: Timestamp::EPOCH,
        };
        for (i, (peer, p)) in pending.into_iter().enumerate() {
            if i < self.settings.max_rows {
                rows.push(FailureRow {
                    peer: peer.clone(),
                    count: p.unwritten,
                    last_request_id: p.last_request_id.take(),
                    at: p.last_at,
                });
            } else {
                other.count += p.unwritten;
                other.at = other.at.max(p.last_at);
            }
            p.unwritten = 0;
        }
        if state.untracked > 0 {
            other.count += state.untracked;
            other.at = other.at.max(state.untracked_at);
            state.untracked = 0;
        }
        if other.count > 0 {
            rows.push(other);
        }
        let window = self.settings.window;
        state.peers.retain(|_, p| {
            p.unwritten > 0 || (now >= p.window_start && now.since(p.window_start) < window)
        });
        rows
    }

    /// Puts back rows that could not be written, to be written with the next take.
    pub fn restore(&self, rows: Vec<FailureRow>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            match state.peers.get_mut(&row.peer) {
                Some(p) => p.unwritten += row.count,
                None => {
                    state.untracked += row.count;
                    state.untracked_at = state.untracked_at.max(row.at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_peer_is_known_without_counting_and_the_global_ceiling_holds() {
        let f = AuthFailures::new(AuthFailureSettings {
            limit: 2,
            global_limit: 3,
            ..AuthFailureSettings::default()
        });
        let t0 = Timestamp::from_micros(1_000_000);
        assert_eq!(f.blocked("a", t0), None);
        for _ in 0..3 {
            f.note("a", None, t0, t0);
        }
        let wait = f.blocked("a", t0).expect("past the limit");
        assert_eq!(wait, Duration::from_secs(60));
        assert_eq!(f.blocked("a", t0), Some(wait), "asking counts nothing");
        assert_eq!(f.blocked("b", t0), None, "per address");
        assert!(!f.over_global_ceiling(t0), "3 failures: at the ceiling");
        f.note("b", None, t0, t0);
        assert!(f.over_global_ceiling(t0), "4 over all addresses");
        let later = t0.saturating_add(Duration::from_secs(60));
        assert_eq!(f.blocked("a", later), None, "the window passed");
        assert!(!f.over_global_ceiling(later));
    }

    fn secs(n: i64) -> Timestamp {
        Timestamp::from_micros(n * 1_000_000)
    }

    fn settings() -> AuthFailureSettings {
        AuthFailureSettings {
            limit: 3,
            window: Duration::from_secs(60),
            max_rows: 2,
            max_peers: 4,
            ..AuthFailureSettings::default()
        }
    }

    #[test]
    fn past_the_limit_a_peer_is_told_to_wait_until_its_window_ends() {
        let f = AuthFailures::new(settings());
        for _ in 0..3 {
            assert_eq!(f.note("10.0.0.1", None, secs(100), secs(100)), None);
        }
        assert_eq!(
            f.note("10.0.0.1", None, secs(110), secs(110)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(
            f.note("10.0.0.2", None, secs(110), secs(110)),
            None,
            "per peer"
        );
        assert_eq!(
            f.note("10.0.0.1", None, secs(160), secs(160)),
            None,
            "a new window"
        );
    }

    #[test]
    fn one_row_per_peer_per_take_and_the_rest_folded() {
        let f = AuthFailures::new(settings());
        for (peer, n) in [("a", 5), ("b", 3), ("c", 2), ("d", 1)] {
            for i in 0..n {
                f.note(
                    peer,
                    Some(&format!("req-{peer}-{i}")),
                    secs(10 + i),
                    secs(10 + i),
                );
            }
        }
        // A fifth peer is past max_peers: counted with the others.
        f.note("e", None, secs(20), secs(20));
        let rows = f.take(secs(30));
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(
            rows[0],
            FailureRow {
                peer: "a".into(),
                count: 5,
                last_request_id: Some("req-a-4".into()),
                at: secs(14),
            }
        );
        assert_eq!((rows[1].peer.as_str(), rows[1].count), ("b", 3));
        assert_eq!((rows[2].peer.as_str(), rows[2].count), (OTHER_PEERS, 4));
        assert_eq!(rows[2].at, secs(20));
        assert!(f.take(secs(31)).is_empty(), "nothing new, nothing written");
        // Rows that could not be written come back with the next take.
        f.restore(rows);
        let again = f.take(secs(32));
        assert_eq!(again.iter().map(|r| r.count).sum::<u64>(), 12);
        // Windows passed: the peers are forgotten.
        assert!(f.take(secs(200)).is_empty());
        assert!(f.state.lock().unwrap().peers.is_empty());
    }
}
