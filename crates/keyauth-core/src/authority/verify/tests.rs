//! Verify through the authority, on both stores: the order of its judgement, what memory
//! answers, invalidation before a change returns, and fail-closed staleness.

use std::time::Duration;

use crate::authority::Issued;
use crate::cache::CacheSettings;
use crate::error::Error;
use crate::model::{Denial, Permissions};
use crate::on_both_stores;
use crate::testing::{self, StoreKind, TestAuthority, new_key, who, wrong_secret};

on_both_stores!(
    the_secret_first_then_revoked_before_expired_then_permissions,
    memory_answers_a_proven_key_and_an_unknown_id_without_the_store,
    a_change_is_seen_by_the_next_verify,
    past_the_staleness_limit_memory_answers_nothing,
);

/// A key issued and verified once (proven, and in the cache).
async fn proven(a: &TestAuthority) -> Issued {
    let issued = a.issue(new_key("app_verify"), &who(), None).await.unwrap();
    let verdict = a.verify(issued.key.expose(), &[], None).await.unwrap();
    assert!(verdict.is_valid());
    issued
}

fn need(resource: &str, action: &str) -> Vec<(String, String)> {
    vec![(resource.to_owned(), action.to_owned())]
}

/// Each row: a key made as `make` says, presented (right or wrong secret), judged for
/// `required`: the denial expected (`None`: valid).
async fn the_secret_first_then_revoked_before_expired_then_permissions(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    struct Row {
        what: &'static str,
        expires: bool,
        revoked: bool,
        wrong_secret: bool,
        required: Vec<(String, String)>,
        denial: Option<Denial>,
    }
    let row = |what, expires, revoked, wrong_secret, required, denial| Row {
        what,
        expires,
        revoked,
        wrong_secret,
        required,
        denial,
    };
    let rows = [
        row(
            "wrong secret, revoked, expired",
            true,
            true,
            true,
            vec![],
            Some(Denial::AuthenticationError),
        ),
        row(
            "revoked and expired",
            true,
            true,
            false,
            vec![],
            Some(Denial::Revoked),
        ),
        row(
            "expired, lacking permission",
            true,
            false,
            false,
            need("keys", "write"),
            Some(Denial::Expired),
        ),
        row(
            "revoked, lacking permission",
            false,
            true,
            false,
            need("keys", "write"),
            Some(Denial::Revoked),
        ),
        row(
            "active, lacking permission",
            false,
            false,
            false,
            need("keys", "write"),
            Some(Denial::InsufficientPermissions),
        ),
        row(
            "active, permitted",
            false,
            false,
            false,
            need("keys", "read"),
            None,
        ),
    ];
    let mut made = Vec::new();
    for row in &rows {
        let mut request = new_key("app_verify");
        request.permissions = Permissions::from_pairs([("keys".into(), "read".into())]);
        request.expire_time = row
            .expires
            .then(|| a.now().saturating_add(Duration::from_secs(60)));
        let issued = a.issue(request, &who(), None).await.unwrap();
        if row.revoked {
            a.revoke(&issued.record.id, None, &who(), None)
                .await
                .unwrap();
        }
        made.push(issued);
    }
    a.clock.advance(Duration::from_secs(61));
    for (row, issued) in rows.iter().zip(&made) {
        let presented = match row.wrong_secret {
            true => wrong_secret(&issued.key),
            false => issued.key.expose().to_owned(),
        };
        let verdict = a.verify(&presented, &row.required, None).await.unwrap();
        assert_eq!(verdict.denial, row.denial, "{}", row.what);
        assert_eq!(
            verdict.record.is_some(),
            !row.wrong_secret,
            "{}: the key is shown only to its owner",
            row.what
        );
    }
}

async fn memory_answers_a_proven_key_and_an_unknown_id_without_the_store(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let issued = proven(&a).await;
    let key = issued.key.expose();
    let reads = a.store.key_reads();
    for _ in 0..3 {
        assert!(a.verify(key, &[], None).await.unwrap().is_valid());
    }
    let wrong = a
        .verify(&wrong_secret(&issued.key), &[], None)
        .await
        .unwrap();
    assert_eq!(wrong.denial, Some(Denial::AuthenticationError));
    assert_eq!(
        a.store.key_reads(),
        reads,
        "proven: answered from the cache"
    );

    let stranger = crate::key::PresentedKey::generate(crate::model::Environment::Test).unwrap();
    let unknown = a.verify(stranger.expose(), &[], None).await.unwrap();
    assert_eq!(unknown.denial, Some(Denial::AuthenticationError));
    let malformed = a.verify("not a key", &[], None).await.unwrap();
    assert_eq!(malformed.denial, Some(Denial::AuthenticationError));
    let reads = a.store.key_reads();
    a.clock.advance(CacheSettings::default().ttl);
    assert!(a.verify(key, &[], None).await.unwrap().is_valid());
    assert_eq!(a.store.key_reads(), reads + 1, "past the TTL: read again");
}

async fn a_change_is_seen_by_the_next_verify(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let issued = proven(&a).await;
    let key = issued.key.expose();
    let (new, _) = a
        .roll(&issued.record.id, Some(Duration::ZERO), None, &who(), None)
        .await
        .unwrap();
    let rolled = a.verify(key, &[], None).await.unwrap();
    assert_eq!(
        rolled.denial,
        Some(Denial::Expired),
        "no grace: expired at once"
    );
    assert!(
        a.verify(new.key.expose(), &[], None)
            .await
            .unwrap()
            .is_valid()
    );
    a.revoke(&new.record.id, None, &who(), None).await.unwrap();
    let revoked = a.verify(new.key.expose(), &[], None).await.unwrap();
    assert_eq!(revoked.denial, Some(Denial::Revoked));
}

async fn past_the_staleness_limit_memory_answers_nothing(kind: StoreKind) {
    let settings = CacheSettings {
        staleness_limit: Duration::from_millis(200),
        ..CacheSettings::default()
    };
    let Some(a) = testing::authority_with(kind, settings).await else {
        return;
    };
    let issued = a.issue(new_key("app_verify"), &who(), None).await.unwrap();
    let key = issued.key.expose();
    assert!(
        a.verify(key, &[], None).await.unwrap().is_valid(),
        "untracked: never cut off"
    );
    a.note_store_contact();
    // The staleness clock is monotonic, not the manual one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = a.verify(key, &[], None).await;
    assert!(matches!(stale, Err(Error::StoreUnreachable)), "{stale:?}");
    a.note_store_contact();
    assert!(
        a.verify(key, &[], None).await.unwrap().is_valid(),
        "heard from again"
    );
}
