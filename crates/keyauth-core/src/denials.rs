//! Calls refused PERMISSION_DENIED: an authenticated principal without the RPC's role, or
//! asking for a key or an application outside its scope. Counted in memory per principal and
//! written to the audit trail in aggregate like refused operator calls
//! ([`crate::auth_failures`]): one `permission_denied` row per principal per interval, never a
//! write per call. Unlike a failed authentication it is not a guess, so nothing here limits
//! the caller.
//!
//! At most [`MAX_PRINCIPALS`] principals are tracked between two takes; the denials of further
//! ones are folded into one row named [`OTHER_PRINCIPALS`] (JWT subjects are as many as an
//! identity provider issues tokens for).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::clock::Timestamp;
use crate::store::Actor;

/// The name of the row that folds the principals past [`MAX_PRINCIPALS`].
pub const OTHER_PRINCIPALS: &str = "(other principals)";
/// Principals tracked between two takes.
pub const MAX_PRINCIPALS: usize = 10_000;

/// One aggregated audit row: `count` refused calls of `actor`, the last at `at` from `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenialRow {
    pub actor: Actor,
    pub peer: Option<String>,
    pub count: u64,
    pub last_request_id: Option<String>,
    pub at: Timestamp,
}

/// The denials counted since the last take.
#[derive(Debug, Default)]
pub struct Denials {
    pending: Mutex<HashMap<Actor, DenialRow>>,
}

impl Denials {
    /// Counts a refused call of `actor` (from `peer`, with `request_id`) at `at`.
    pub fn note(&self, actor: &Actor, peer: Option<&str>, request_id: Option<&str>, at: Timestamp) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let actor = if pending.len() < MAX_PRINCIPALS || pending.contains_key(actor) {
            actor.clone()
        } else {
            Actor {
                name: OTHER_PRINCIPALS.to_owned(),
                subject: String::new(),
                issuer: String::new(),
            }
        };
        let row = pending.entry(actor.clone()).or_insert(DenialRow {
            actor,
            peer: None,
            count: 0,
            last_request_id: None,
            at,
        });
        row.count += 1;
        row.at = row.at.max(at);
        row.peer = peer.map(str::to_owned);
        // Request ids are bounded (128 printable characters) by the server before they get here.
        row.last_request_id = request_id.map(str::to_owned);
    }

    /// The rows to write, one per principal (in no particular order), forgetting them.
    pub fn take(&self) -> Vec<DenialRow> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.drain().map(|(_, row)| row).collect()
    }

    /// Puts back rows that could not be written, to be written with the next take.
    pub fn restore(&self, rows: Vec<DenialRow>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            match pending.get_mut(&row.actor) {
                Some(newer) => {
                    newer.count += row.count;
                    newer.at = newer.at.max(row.at);
                }
                None => {
                    pending.insert(row.actor.clone(), row);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(name: &str) -> Actor {
        Actor {
            name: name.into(),
            subject: format!("sub-{name}"),
            issuer: "https://idp.test".into(),
        }
    }

    #[test]
    fn one_row_per_principal_with_the_count_and_the_last_call() {
        let denials = Denials::default();
        let t = Timestamp::from_micros;
        denials.note(&actor("a"), Some("10.0.0.1"), Some("r1"), t(1));
        denials.note(&actor("b"), Some("10.0.0.2"), None, t(2));
        denials.note(&actor("a"), Some("10.0.0.3"), Some("r3"), t(3));
        let mut rows = denials.take();
        rows.sort_by(|x, y| x.actor.name.cmp(&y.actor.name));
        assert_eq!(
            rows,
            vec![
                DenialRow {
                    actor: actor("a"),
                    peer: Some("10.0.0.3".into()),
                    count: 2,
                    last_request_id: Some("r3".into()),
                    at: t(3),
                },
                DenialRow {
                    actor: actor("b"),
                    peer: Some("10.0.0.2".into()),
                    count: 1,
                    last_request_id: None,
                    at: t(2),
                },
            ]
        );
        assert!(denials.take().is_empty());

        // Rows that could not be written come back with the next take, added up.
        denials.note(&actor("a"), None, None, t(5));
        denials.restore(rows);
        let rows = denials.take();
        assert_eq!(rows.len(), 2);
        let a = rows.iter().find(|r| r.actor.name == "a").unwrap();
        assert_eq!((a.count, a.at), (3, t(5)));
    }

    #[test]
    fn principals_past_the_bound_share_one_row() {
        let denials = Denials::default();
        for i in 0..MAX_PRINCIPALS + 5 {
            denials.note(
                &actor(&i.to_string()),
                None,
                None,
                Timestamp::from_micros(1),
            );
        }
        // A tracked principal still counts on its own row.
        denials.note(&actor("0"), None, None, Timestamp::from_micros(2));
        let rows = denials.take();
        assert_eq!(rows.len(), MAX_PRINCIPALS + 1);
        let other = rows
            .iter()
            .find(|r| r.actor.name == OTHER_PRINCIPALS)
            .unwrap();
        assert_eq!(other.count, 5);
        assert_eq!(rows.iter().find(|r| r.actor.name == "0").unwrap().count, 2);
        assert_eq!(
            rows.iter().map(|r| r.count).sum::<u64>(),
            MAX_PRINCIPALS as u64 + 6
        );
    }
}
