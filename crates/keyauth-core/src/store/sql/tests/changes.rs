//! The key changes, each one transaction with its event and idempotency record; settings.

use keyauth_contract::principal::Scope;

use crate::error::Error;
use crate::model::{KeyId, KeyRecord, Metadata, Permissions};
use crate::on_both_stores;
use crate::store::{
    Changed, EventFilter, EventKind, EventKinds, EventQuery, Exposed, Exposure, IdempotentWrite,
    KeyUpdate, Rolled, Updated,
};
use crate::testing::{StoreKind, secs, who};

use super::{insert, key, store, successor};

on_both_stores!(
    a_roll_claims_only_an_active_unrolled_key,
    an_update_changes_the_named_fields_unless_refused,
    a_revocation_is_set_once,
    a_last_use_never_moves_backwards,
    an_idempotency_record_is_live_once_and_replaced_after_expiry,
    the_first_setting_wins,
);

async fn a_roll_claims_only_an_active_unrolled_key(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    let active = KeyRecord {
        name: "inherited".into(),
        restricted: true,
        permissions: Permissions::from_pairs([("keys".into(), "read".into())]),
        metadata: Metadata::from([("team".into(), "blue".into())]),
        expire_time: Some(secs(500)),
        ..key(1, "app", 0)
    };
    let revoked = KeyRecord {
        revoke_time: Some(secs(1)),
        ..key(2, "app", 0)
    };
    let expired = KeyRecord {
        expire_time: Some(secs(100)),
        ..key(3, "app", 0)
    };
    insert(&*store, &[active.clone(), revoked, expired]).await;
    let roll = async |old: u32, new: u32| {
        let old = KeyId::from_store(format!("key_{old:012}"));
        let grace_end = secs(400);
        (store.roll_key(
            &old,
            &successor(new, 100),
            grace_end,
            secs(100),
            &who(),
            None,
        ))
        .await
    };
    let Rolled::Done { new, previous } = roll(1, 11).await.unwrap() else {
        panic!("the active key rolls");
    };
    assert_eq!(previous.replaced_by.as_ref(), Some(&new.id));
    assert_eq!(
        previous.expire_time,
        Some(secs(400)),
        "the grace end, before its own"
    );
    let inherited = (&new.name, new.restricted, &new.permissions, &new.metadata);
    let of_old = (&active.name, true, &active.permissions, &active.metadata);
    assert_eq!(inherited, of_old);
    assert_eq!(
        new.expire_time,
        Some(secs(500)),
        "expires when the old key would have"
    );
    assert_eq!(store.get_key(&new.id).await.unwrap(), Some(new));
    for (old, why) in [(1, "already rolled"), (2, "revoked"), (3, "expired")] {
        assert!(
            matches!(roll(old, 12).await, Ok(Rolled::Refused(_))),
            "{why}"
        );
        assert_eq!(
            store
                .get_key(&KeyId::from_store(format!("key_{:012}", 12)))
                .await
                .unwrap(),
            None
        );
    }
    assert!(matches!(roll(9, 12).await, Ok(Rolled::NotFound)));
}

async fn an_update_changes_the_named_fields_unless_refused(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    let revoked = KeyRecord {
        revoke_time: Some(secs(1)),
        ..key(2, "app", 0)
    };
    insert(&*store, &[key(1, "app", 0), revoked, key(3, "app", 0)]).await;
    let rolled = KeyId::from_store(format!("key_{:012}", 3));
    store
        .roll_key(&rolled, &successor(4, 5), secs(50), secs(5), &who(), None)
        .await
        .unwrap();
    let name = KeyUpdate {
        name: Some("renamed".into()),
        ..KeyUpdate::default()
    };
    let scoped = KeyUpdate {
        permissions: Some(Permissions::from_pairs([("keys".into(), "read".into())])),
        expire_time: Some(Some(secs(90))),
        ..KeyUpdate::default()
    };
    let update = async |n: u32, update: &KeyUpdate| {
        let id = KeyId::from_store(format!("key_{n:012}"));
        store
            .update_key(&id, update, secs(10), &who(), None)
            .await
            .unwrap()
    };
    let Updated::Done(done) = update(1, &scoped).await else {
        panic!("an active key takes any change");
    };
    assert_eq!(
        (done.name.as_str(), done.restricted),
        ("n", true),
        "the name is left as it was"
    );
    assert_eq!(done.expire_time, Some(secs(90)));
    assert!(
        matches!(update(2, &name).await, Updated::Refused(_)),
        "revoked"
    );
    assert!(
        matches!(update(3, &scoped).await, Updated::Refused(_)),
        "a rolled key's expiry"
    );
    assert!(matches!(update(3, &name).await, Updated::Done(k) if k.name == "renamed"));
    assert!(matches!(update(9, &name).await, Updated::NotFound));
    let query = EventQuery {
        kinds: EventKinds::of([EventKind::Updated]),
        ..EventQuery::of(EventFilter::All)
    };
    let events = store
        .list_events(&query, &Scope::everything(), i64::MAX, 10)
        .await
        .unwrap();
    let paths: Vec<_> = events.iter().map(|e| e.changed_paths.join(",")).collect();
    assert_eq!(
        paths,
        ["name", "expire_time,permissions"],
        "one event per change, newest first"
    );
}

async fn a_revocation_is_set_once(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    insert(&*store, &[key(1, "app", 0), key(2, "app", 0)]).await;
    let (one, two) = (key(1, "app", 0).id, key(2, "app", 0).id);
    let first = store
        .revoke_key(&one, secs(5), Some("first"), &who(), None)
        .await;
    let again = store
        .revoke_key(&one, secs(6), Some("again"), &who(), None)
        .await;
    let (first, again) = (first.unwrap().unwrap(), again.unwrap().unwrap());
    assert_eq!(first, again, "the first revocation stands");
    assert_eq!(
        (first.revoke_time, first.revoke_reason.as_deref()),
        (Some(secs(5)), Some("first"))
    );
    let missing = KeyId::from_store("key_missing".into());
    assert_eq!(
        store
            .revoke_key(&missing, secs(5), None, &who(), None)
            .await
            .unwrap(),
        None
    );

    let found = Exposure {
        source: "scanner",
        url: "https://example.com/leak",
    };
    let expose = async |id: &KeyId| {
        store
            .expose_key(id, secs(7), "leaked", found, &who())
            .await
            .unwrap()
    };
    assert!(matches!(expose(&one).await, Exposed::AlreadyRevoked(_)));
    assert!(
        matches!(expose(&two).await, Exposed::Revoked(k) if k.revoke_reason.as_deref() == Some("leaked"))
    );
    assert!(matches!(expose(&missing).await, Exposed::NotFound));
    let events = store
        .list_events(
            &EventQuery::of(EventFilter::All),
            &Scope::everything(),
            i64::MAX,
            10,
        )
        .await
        .unwrap();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.source.as_deref()))
        .collect();
    let issued = (EventKind::Issued, None);
    let expected = [
        (EventKind::Exposed, Some("scanner")),
        (EventKind::Revoked, None),
        issued,
        issued,
    ];
    assert_eq!(kinds, expected);
}

async fn a_last_use_never_moves_backwards(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    let k = key(1, "app", 0);
    insert(&*store, std::slice::from_ref(&k)).await;
    for (at, kept) in [(20, 20), (10, 20), (30, 30)] {
        store
            .record_last_used(&[(k.id.clone(), secs(at))])
            .await
            .unwrap();
        let read = store.get_key(&k.id).await.unwrap().unwrap();
        assert_eq!(read.last_used_time, Some(secs(kept)), "after a use at {at}");
    }
}

async fn an_idempotency_record_is_live_once_and_replaced_after_expiry(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    let respond = |changed: &Changed<'_>| match changed {
        Changed::Issued(k) => k.id.as_str().as_bytes().to_vec(),
        _ => Vec::new(),
    };
    let write = |at: i64| IdempotentWrite {
        operator: "op",
        key: "retry",
        fingerprint: "issue",
        sealed_secret: Some("sealed".into()),
        create_time: secs(at),
        expire_time: secs(at + 10),
        respond: &respond,
    };
    let issue = async |n: u32, at: i64| {
        (store.insert_key(&key(n, "app", at), &who(), Some(&write(at)))).await
    };
    issue(1, 0).await.unwrap();
    let record = store
        .idempotency_record("op", "retry", secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.response, record.sealed_secret),
        (
            key(1, "app", 0).id.as_str().as_bytes().to_vec(),
            Some("sealed".into())
        )
    );
    assert!(
        matches!(issue(2, 5).await, Err(Error::IdempotencyRace)),
        "still live"
    );
    assert_eq!(
        store.count_keys().await.unwrap(),
        1,
        "the change went with it"
    );
    assert!(
        store
            .idempotency_record("op", "retry", secs(10))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    assert!(
        store
            .idempotency_record("op2", "retry", secs(5))
            .await
            .unwrap()
            .is_none()
    );
    issue(3, 10).await.expect("an expired record is replaced");
    assert_eq!(store.purge_idempotency(secs(19)).await.unwrap(), 0);
    assert_eq!(store.purge_idempotency(secs(20)).await.unwrap(), 1);
}

async fn the_first_setting_wins(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    assert_eq!(
        store.setting_or_insert("name", "first").await.unwrap(),
        "first"
    );
    assert_eq!(
        store.setting_or_insert("name", "second").await.unwrap(),
        "first"
    );
    assert_eq!(
        store.setting_or_insert("other", "second").await.unwrap(),
        "second"
    );
}
