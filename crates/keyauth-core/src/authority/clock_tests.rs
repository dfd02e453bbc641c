//! The wall clock set forward or back under a running authority (the review's "clock jumps"),
//! on both stores, with a manual clock: `Clock::jump` sets the wall clock, `advance` lets time
//! pass. Each test failed before the steady clock and the held `now` (see `clock`).

use std::time::Duration;

use crate::authority::Idempotency;
use crate::key::PresentedKey;
use crate::model::{Denial, Environment};
use crate::on_both_stores;
use crate::sealing::IdempotencyKey;
use crate::store::Changed;
use crate::testing::{self, StoreKind, new_key, who};

on_both_stores!(
    a_forward_jump_past_the_idempotency_ttl_still_replays,
    a_backward_jump_never_revives_an_expired_key,
    a_corrected_jump_leaves_the_probe_budget_refilling,
);

const HOUR_MICROS: i64 = 3600 * 1_000_000;

fn respond(changed: &Changed<'_>) -> Vec<u8> {
    match changed {
        Changed::Issued(r) => r.id.as_str().as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// A retry after the wall clock jumped a day forward (past the 24 h TTL) replays the first
/// call: it does not issue a second key.
async fn a_forward_jump_past_the_idempotency_ttl_still_replays(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let key = IdempotencyKey::parse(b"jump-retry").unwrap();
    let idem = Idempotency {
        operator: "op",
        key: &key,
        fingerprint: "issue app_jump".to_owned(),
        respond: &respond,
    };
    let issued = a
        .issue(new_key("app_jump"), &who(), Some(&idem))
        .await
        .unwrap();
    a.clock.jump(25 * HOUR_MICROS);
    let replay = a
        .replay(&idem)
        .await
        .unwrap()
        .expect("still replayed after the jump");
    assert_eq!(replay.response, issued.record.id.as_str().as_bytes());
    // The housekeeping purge does not age it out either.
    a.purge_idempotency().await.unwrap();
    assert!(a.replay(&idem).await.unwrap().is_some());
    // A day of real time later it is gone, as it should be.
    a.clock.advance(Duration::from_secs(25 * 3600));
    assert!(a.replay(&idem).await.unwrap().is_none());
}

/// A key that expired stays expired when the wall clock is set back past its expiry, on a
/// cache miss too (the store's record judged again).
async fn a_backward_jump_never_revives_an_expired_key(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let mut new = new_key("app_jump");
    new.expire_time = Some(a.now().saturating_add(Duration::from_secs(3600)));
    let issued = a.issue(new, &who(), None).await.unwrap();
    assert!(
        a.verify(issued.key.expose(), &[], None)
            .await
            .unwrap()
            .is_valid()
    );
    a.clock.advance(Duration::from_secs(2 * 3600));
    let expired = a.verify(issued.key.expose(), &[], None).await.unwrap();
    assert_eq!(expired.denial, Some(Denial::Expired));
    a.clock.jump(-3 * HOUR_MICROS);
    a.cache().forget(&issued.record.id);
    let after = a.verify(issued.key.expose(), &[], None).await.unwrap();
    assert_eq!(after.denial, Some(Denial::Expired), "not revived");
}

/// Ids absent from the key filter are read from the store at a few a second. A jump forward
/// and its correction leave that budget refilling at once (before, it stopped for the size of
/// the jump).
async fn a_corrected_jump_leaves_the_probe_budget_refilling(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let unknown = || PresentedKey::generate(Environment::Test).unwrap();
    let reads_for = |n: usize| {
        let a = &a;
        async move {
            let before = a.store().key_reads();
            for _ in 0..n {
                let key = unknown();
                assert!(!a.verify(key.expose(), &[], None).await.unwrap().is_valid());
            }
            a.store().key_reads() - before
        }
    };
    // The burst is spent.
    reads_for(20).await;
    assert_eq!(reads_for(5).await, 0, "the budget is spent");
    a.clock.jump(HOUR_MICROS);
    reads_for(1).await;
    a.clock.jump(-HOUR_MICROS);
    reads_for(20).await;
    assert_eq!(reads_for(5).await, 0, "spent again");
    a.clock.advance(Duration::from_secs(1));
    assert!(reads_for(5).await > 0, "a second later it has refilled");
}
