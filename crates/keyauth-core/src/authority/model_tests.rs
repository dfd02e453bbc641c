//! The key lifecycle against a reference model (the review's item 10), on both stores.
//!
//! proptest makes random sequences of Issue, Roll, Update, Revoke, Expose, Verify, time passing
//! and restarts; each runs against a real authority (manual clock, a fresh database per
//! sequence) and against [`Model`], a few lines of plain Rust that say what the lifecycle means.
//! After every step the two must agree; at the end, the audit trail must list the model's
//! events in the model's order, and no issued secret may be in the store. A failing sequence is
//! shrunk to the shortest that still fails and printed, and its seed is kept in
//! `model_tests.regressions` beside this file (commit it: it runs first from then on).
//! Checked by breaking the model on purpose (expiry judged `<` instead of `<=`): both stores
//! failed, shrunk to Issue, Advance to the expiry, Verify.
//!
//! What it holds the authority to:
//! - a revoked key never verifies; an expired one never does either;
//! - a rolled key verifies until its grace ends, and never after;
//! - the successor carries the permissions the old key had at the roll (an update before it
//!   included);
//! - a wrong secret is always `authentication_error`, whatever the key's state;
//! - the audit trail's order is the order of the changes.
//!
//! Budget: `KEYAUTH_MODEL_CASES` sequences per store (64 by default, a few seconds; CI uses the default).

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use crate::authority::{ExposureOutcome, NewKey};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::key::{KeyIdOf, PresentedKey};
use crate::model::{ApplicationId, Denial, Environment, KeyId, Metadata, Permissions};
use crate::store::{EventFilter, EventKind, EventQuery, Exposure, KeyUpdate};
use crate::testing::{self, StoreKind, TestAuthority, who};
use keyauth_contract::principal::Scope;

/// The permissions a key may hold: a bit set over these pairs.
const PAIRS: [(&str, &str); 3] = [
    ("patients", "read"),
    ("patients", "write"),
    ("encounters", "read"),
];

#[derive(Clone, Debug)]
enum Op {
    /// A restricted key with the pairs of `perms` (never empty), expiring after `expires_in`
    /// minutes if given.
    Issue {
        perms: u8,
        expires_in: Option<u32>,
    },
    Roll {
        key: usize,
        grace_minutes: u32,
    },
    Update {
        key: usize,
        perms: u8,
    },
    Revoke {
        key: usize,
    },
    Expose {
        key: usize,
    },
    Verify {
        key: usize,
        pair: usize,
        wrong: bool,
    },
    Advance {
        minutes: u32,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let perms = 1u8..8;
    prop_oneof![
        3 => (perms.clone(), proptest::option::of(1u32..180))
            .prop_map(|(perms, expires_in)| Op::Issue { perms, expires_in }),
        2 => (any::<usize>(), 0u32..120)
            .prop_map(|(key, grace_minutes)| Op::Roll { key, grace_minutes }),
        2 => (any::<usize>(), perms).prop_map(|(key, perms)| Op::Update { key, perms }),
        1 => any::<usize>().prop_map(|key| Op::Revoke { key }),
        1 => any::<usize>().prop_map(|key| Op::Expose { key }),
        6 => (any::<usize>(), 0..PAIRS.len(), proptest::bool::weighted(0.2))
            .prop_map(|(key, pair, wrong)| Op::Verify { key, pair, wrong }),
        2 => (1u32..90).prop_map(|minutes| Op::Advance { minutes }),
        1 => Just(Op::Restart),
    ]
}

/// What a key is, by the model.
#[derive(Clone, Debug)]
struct ModelKey {
    id: KeyId,
    secret: String,
    perms: u8,
    expire: Option<Timestamp>,
    revoked: bool,
    rolled: bool,
}

impl ModelKey {
    fn expired(&self, now: Timestamp) -> bool {
        self.expire.is_some_and(|e| e <= now)
    }

    fn active(&self, now: Timestamp) -> bool {
        !self.revoked && !self.expired(now)
    }

    /// What Verify must answer for `pair`: `None` when valid.
    fn verdict(&self, now: Timestamp, pair: usize, wrong: bool) -> Option<Denial> {
        if wrong {
            Some(Denial::AuthenticationError)
        } else if self.revoked {
            Some(Denial::Revoked)
        } else if self.expired(now) {
            Some(Denial::Expired)
        } else if self.perms & (1 << pair) == 0 {
            Some(Denial::InsufficientPermissions)
        } else {
            None
        }
    }
}

#[derive(Default, Debug)]
struct Model {
    keys: Vec<ModelKey>,
    /// Every event the changes made, oldest first: (kind, key id).
    events: Vec<(EventKind, KeyId)>,
}

fn permissions(perms: u8) -> Permissions {
    Permissions::from_pairs(
        PAIRS
            .iter()
            .enumerate()
            .filter(|(i, _)| perms & (1 << i) != 0)
            .map(|(_, (r, a))| ((*r).to_owned(), (*a).to_owned())),
    )
}

fn wrong(secret: &str) -> String {
    let key = PresentedKey::parse(secret).expect("an issued key parses");
    PresentedKey::from_parts(key.environment(), key.lookup(), &"W".repeat(32))
        .expect("well formed")
        .expose()
        .to_owned()
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// Runs `ops` against a fresh authority and the model; the first disagreement fails the case.
async fn run(kind: StoreKind, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let Some(mut a) = testing::authority(kind).await else {
        return Ok(());
    };
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        apply(&mut a, &mut m, op)
            .await
            .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
    }
    audit_matches(&a, &m).await?;
    no_secret_stored(&a, &m).await
}

async fn apply(a: &mut TestAuthority, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let now = a.now();
    let pick = |key: usize| (!m.keys.is_empty()).then(|| key % m.keys.len());
    match *op {
        Op::Issue { perms, expires_in } => {
            let new = NewKey {
                application_id: ApplicationId::parse("app_model", "application_id").unwrap(),
                environment: Environment::Test,
                name: "model".into(),
                permissions: permissions(perms),
                metadata: Metadata::new(),
                expire_time: expires_in
                    .map(|m| now.saturating_add(Duration::from_secs(u64::from(m) * 60))),
            };
            let expire = new.expire_time;
            let issued = a.issue(new, &who(), None).await.map_err(fail)?;
            m.events.push((EventKind::Issued, issued.record.id.clone()));
            m.keys.push(ModelKey {
                id: issued.record.id.clone(),
                secret: issued.key.expose().to_owned(),
                perms,
                expire,
                revoked: false,
                rolled: false,
            });
        }
        Op::Roll { key, grace_minutes } => {
            let Some(i) = pick(key) else { return Ok(()) };
            let grace = Duration::from_secs(u64::from(grace_minutes) * 60);
            let result = a.roll(&m.keys[i].id, Some(grace), None, &who(), None).await;
            let old = m.keys[i].clone();
            if old.rolled || !old.active(now) {
                check(
                    matches!(result, Err(Error::FailedPrecondition { .. })),
                    || {
                        let got = result.as_ref().map(|(new, _)| &new.record.id);
                        format!("a roll of {old:?} must be refused, got {got:?}")
                    },
                )?;
                return Ok(());
            }
            let (new, previous) = result.map_err(fail)?;
            check(new.record.permissions == permissions(old.perms), || {
                format!(
                    "the successor carries {:?}, the model {:?}",
                    new.record.permissions,
                    permissions(old.perms)
                )
            })?;
            let grace_end = now.saturating_add(grace);
            let expire = Some(old.expire.map_or(grace_end, |e| e.min(grace_end)));
            check(previous.expire_time == expire, || {
                format!(
                    "old key expires {:?}, the model {expire:?}",
                    previous.expire_time
                )
            })?;
            m.events.push((EventKind::Rolled, old.id.clone()));
            m.keys[i].expire = expire;
            m.keys[i].rolled = true;
            m.keys.push(ModelKey {
                id: new.record.id.clone(),
                secret: new.key.expose().to_owned(),
                perms: old.perms,
                expire: old.expire,
                revoked: false,
                rolled: false,
            });
        }
        Op::Update { key, perms } => {
            let Some(i) = pick(key) else { return Ok(()) };
            let update = KeyUpdate {
                permissions: Some(permissions(perms)),
                ..KeyUpdate::default()
            };
            let result = a.update(&m.keys[i].id, &update, &who(), None).await;
            if m.keys[i].revoked {
                check(
                    matches!(result, Err(Error::FailedPrecondition { .. })),
                    || format!("an update of a revoked key must be refused, got {result:?}"),
                )?;
                return Ok(());
            }
            result.map_err(fail)?;
            m.events.push((EventKind::Updated, m.keys[i].id.clone()));
            m.keys[i].perms = perms;
        }
        Op::Revoke { key } => {
            let Some(i) = pick(key) else { return Ok(()) };
            let record = a
                .revoke(&m.keys[i].id, None, &who(), None)
                .await
                .map_err(fail)?;
            check(record.revoke_time.is_some(), || "revoked".into())?;
            if !m.keys[i].revoked {
                m.events.push((EventKind::Revoked, m.keys[i].id.clone()));
                m.keys[i].revoked = true;
            }
        }
        Op::Expose { key } => {
            let Some(i) = pick(key) else { return Ok(()) };
            let exposure = Exposure {
                source: "model",
                url: "",
            };
            let outcome = a
                .report_exposed(&[m.keys[i].secret.as_str()], exposure, &who())
                .await
                .map_err(fail)?;
            let was_revoked = m.keys[i].revoked;
            check(
                match outcome.first() {
                    Some(ExposureOutcome::Revoked(_)) => !was_revoked,
                    Some(ExposureOutcome::AlreadyRevoked(_)) => was_revoked,
                    _ => false,
                },
                || format!("exposing {:?}: {outcome:?}", m.keys[i]),
            )?;
            if !was_revoked {
                m.events.push((EventKind::Exposed, m.keys[i].id.clone()));
                m.keys[i].revoked = true;
            }
        }
        Op::Verify {
            key,
            pair,
            wrong: bad,
        } => {
            let Some(i) = pick(key) else { return Ok(()) };
            let k = &m.keys[i];
            let presented = if bad {
                wrong(&k.secret)
            } else {
                k.secret.clone()
            };
            let (resource, action) = PAIRS[pair];
            let required = [(resource.to_owned(), action.to_owned())];
            let verdict = a.verify(&presented, &required, None).await.map_err(fail)?;
            let want = k.verdict(now, pair, bad);
            check(verdict.denial == want, || {
                format!(
                    "Verify of {k:?} for {resource}:{action} (wrong secret: {bad}) at {now:?}: {:?}, the model {want:?}",
                    verdict.denial
                )
            })?;
        }
        Op::Advance { minutes } => a
            .clock
            .advance(Duration::from_secs(u64::from(minutes) * 60)),
        Op::Restart => a.restart().await,
    }
    Ok(())
}

fn fail(e: Error) -> TestCaseError {
    TestCaseError::fail(format!("the authority failed: {e}"))
}

/// The audit trail lists the model's events, in its order.
async fn audit_matches(a: &TestAuthority, m: &Model) -> Result<(), TestCaseError> {
    let query = EventQuery::of(EventFilter::All);
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = a
            .list_events(&query, 1000, &token, &Scope::everything())
            .await
            .map_err(fail)?;
        found.extend(page.into_iter().filter_map(|e| Some((e.kind, e.key_id?))));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    // Newest first on the wire.
    found.reverse();
    check(found == m.events, || {
        format!("audit trail {found:?}\nmodel      {:?}", m.events)
    })
}

/// No issued secret is anywhere in the store: the part after the key id, searched for in
/// every column of every row.
async fn no_secret_stored(a: &TestAuthority, m: &Model) -> Result<(), TestCaseError> {
    let dump = a.db.dump().await;
    for key in &m.keys {
        let parsed = PresentedKey::parse(&key.secret).expect("issued keys parse");
        let secret = String::from_utf8_lossy(parsed.secret()).into_owned();
        check(!dump.contains(&secret), || {
            format!("the secret of {} is in the store", parsed.id())
        })?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("KEYAUTH_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn run_model(kind: StoreKind) {
    let config = Config {
        cases: cases(),
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        runtime.block_on(run(kind, ops))
    });
    if let Err(e) = result {
        panic!("{kind:?}: the authority and its model disagree: {e}");
    }
}

#[test]
fn the_lifecycle_matches_its_model_on_sqlite() {
    run_model(StoreKind::Sqlite);
}

#[test]
fn the_lifecycle_matches_its_model_on_postgres() {
    run_model(StoreKind::Postgres);
}
