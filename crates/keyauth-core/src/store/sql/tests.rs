//! The shared SQL on both stores, query family by family: what each statement reads, writes
//! and refuses.

use std::sync::Arc;

use crate::auth_failures::FailureRow;
use crate::error::Error;
use crate::model::{
    ApplicationId, Environment, KeyId, KeyRecord, KeyState, KeyStates, Metadata, Permissions,
};
use crate::on_both_stores;
use crate::store::{
    Changed, Cursor, EventFilter, EventKind, EventQuery, Exposed, Exposure, IdempotentWrite,
    KeyCounts, KeyListing, KeyUpdate, Rolled, Store, Successor, Updated,
};
use crate::testing::{StoreKind, TestDb, blank_record, secs, who};

on_both_stores!(
    a_roll_claims_only_an_active_unrolled_key,
    an_update_changes_the_named_fields_unless_refused,
    a_revocation_is_set_once,
    a_last_use_never_moves_backwards,
    keys_are_listed_by_state_environment_and_cursor,
    applications_are_counted_per_environment_and_state,
    events_are_found_by_key_application_kind_and_time,
    refused_operator_calls_are_recorded_and_purged,
    an_idempotency_record_is_live_once_and_replaced_after_expiry,
    the_first_setting_wins,
);

/// A fresh store of `kind`; `None` where PostgreSQL is skipped.
async fn store(kind: StoreKind) -> Option<(TestDb, Arc<dyn Store>)> {
    let db = TestDb::create(kind).await?;
    let store = db.store().await;
    Some((db, store))
}

/// Key number `n` of application `app`, made at second `made`.
fn key(n: u32, app: &str, made: i64) -> KeyRecord {
    KeyRecord {
        application_id: ApplicationId::from_store(app.into()),
        create_time: secs(made),
        ..blank_record(&format!("key_{n:012}"))
    }
}

/// Keys 1 to 5 of `apps`, key `n` made at second `n`: 1 live, 2 expiring at 10, 3 revoked at
/// 3, 4 and 5 active.
fn one_of_each(apps: [&str; 5]) -> [KeyRecord; 5] {
    let [one, two, three, four, five] = apps;
    [
        KeyRecord {
            environment: Environment::Live,
            ..key(1, one, 1)
        },
        KeyRecord {
            expire_time: Some(secs(10)),
            ..key(2, two, 2)
        },
        KeyRecord {
            revoke_time: Some(secs(3)),
            ..key(3, three, 3)
        },
        key(4, four, 4),
        key(5, five, 5),
    ]
}

async fn insert(store: &dyn Store, keys: &[KeyRecord]) {
    for k in keys {
        store.insert_key(k, &who(), None).await.unwrap();
    }
}

fn successor(n: u32, at: i64) -> Successor {
    Successor {
        id: KeyId::from_store(format!("key_{n:012}")),
        secret_hash: "hash".into(),
        redacted: "redacted".into(),
        create_time: secs(at),
        expire_time: None,
    }
}

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
        kinds: vec![EventKind::Updated],
        ..EventQuery::of(EventFilter::All)
    };
    let events = store.list_events(&query, i64::MAX, 10).await.unwrap();
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
        .list_events(&EventQuery::of(EventFilter::All), i64::MAX, 10)
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

async fn keys_are_listed_by_state_environment_and_cursor(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    insert(&*store, &one_of_each(["app", "app", "app", "app", "other"])).await;
    let app = ApplicationId::from_store("app".into());
    let list = async |environment, states: &[KeyState], cursor: Option<(i64, u32)>| {
        let listing = KeyListing {
            environment,
            states: KeyStates::of(states.iter().copied()),
            now: secs(10),
        };
        let cursor = cursor.map(|(at, n)| Cursor {
            create_time: secs(at),
            id: KeyId::from_store(format!("key_{n:012}")),
        });
        let keys = store
            .list_keys(&app, &listing, cursor.as_ref(), 10)
            .await
            .unwrap();
        keys.iter()
            .map(|k| k.id.as_str()[4..].parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    use KeyState::{Active, Expired, Revoked};
    assert_eq!(
        list(None, &[], None).await,
        [4, 3, 2, 1],
        "newest first, one application"
    );
    assert_eq!(list(None, &[Active], None).await, [4, 1]);
    assert_eq!(
        list(None, &[Expired], None).await,
        [2],
        "expired at its expire_time exactly"
    );
    assert_eq!(list(None, &[Revoked, Expired], None).await, [3, 2]);
    assert_eq!(list(Some(Environment::Live), &[], None).await, [1]);
    assert_eq!(
        list(None, &[], Some((3, 3))).await,
        [2, 1],
        "strictly after the cursor"
    );

    assert_eq!(store.count_keys().await.unwrap(), 5);
    let first = store.key_ids(None, 3).await.unwrap();
    let rest = store.key_ids(first.last(), 3).await.unwrap();
    assert_eq!(
        (first.len(), rest.len()),
        (3, 2),
        "every key id, in id order"
    );
}

async fn applications_are_counted_per_environment_and_state(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    insert(
        &*store,
        &one_of_each(["app_a", "app_a", "app_b", "app_a", "app_c"]),
    )
    .await;
    let page = store.list_applications(None, 2, secs(10)).await.unwrap();
    let counts = |active, expired, revoked| KeyCounts {
        active,
        expired,
        revoked,
    };
    let summary: Vec<_> = page
        .iter()
        .map(|s| (s.application_id.as_str(), s.test, s.live))
        .collect();
    let expected = [
        ("app_a", counts(1, 1, 0), counts(1, 0, 0)),
        ("app_b", counts(0, 0, 1), counts(0, 0, 0)),
    ];
    assert_eq!(summary, expected);
    let after = ApplicationId::from_store("app_b".into());
    let rest = store
        .list_applications(Some(&after), 2, secs(10))
        .await
        .unwrap();
    assert_eq!(
        rest.iter()
            .map(|s| s.application_id.as_str())
            .collect::<Vec<_>>(),
        ["app_c"]
    );
}

async fn events_are_found_by_key_application_kind_and_time(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    insert(&*store, &[key(1, "app_a", 1), key(2, "app_b", 2)]).await;
    let old = key(1, "app_a", 1).id;
    store
        .roll_key(&old, &successor(3, 3), secs(4), secs(3), &who(), None)
        .await
        .unwrap();
    let new = KeyId::from_store(format!("key_{:012}", 3));
    let find = async |filter: EventFilter,
                      kinds: Vec<EventKind>,
                      range: (Option<i64>, Option<i64>),
                      before| {
        let query = EventQuery {
            filter,
            kinds,
            start: range.0.map(secs),
            end: range.1.map(secs),
        };
        let events = store.list_events(&query, before, 10).await.unwrap();
        events.iter().map(|e| e.kind).collect::<Vec<_>>()
    };
    use EventKind::{Issued, Rolled};
    let latest = store.latest_event().await.unwrap();
    let app_a = || EventFilter::Application(ApplicationId::from_store("app_a".into()));
    let (all, max) = ((None, None), i64::MAX);
    let rows = [
        (
            EventFilter::All,
            vec![],
            all,
            max,
            vec![Rolled, Issued, Issued],
        ),
        (
            EventFilter::Key(old),
            vec![],
            all,
            max,
            vec![Rolled, Issued],
        ),
        (EventFilter::Key(new), vec![], all, max, vec![Rolled]),
        (app_a(), vec![Issued], all, max, vec![Issued]),
        (app_a(), vec![], (Some(2), Some(3)), max, vec![]),
        (app_a(), vec![], (Some(1), Some(3)), max, vec![Issued]),
        (EventFilter::All, vec![], all, latest, vec![Issued, Issued]),
    ];
    for (filter, kinds, range, before, expected) in rows {
        let what = format!("{filter:?} {kinds:?} {range:?} below {before}");
        assert_eq!(find(filter, kinds, range, before).await, expected, "{what}");
    }
    let after = store.events_after(latest - 2, 10).await.unwrap();
    let changes: Vec<_> = after.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(
        changes,
        [(latest - 1, Some(Issued)), (latest, Some(Rolled))],
        "oldest first"
    );
}

async fn refused_operator_calls_are_recorded_and_purged(kind: StoreKind) {
    let Some((_db, store)) = store(kind).await else {
        return;
    };
    let row = |peer: &str, count, at| FailureRow {
        peer: peer.into(),
        count,
        last_request_id: None,
        at: secs(at),
    };
    store
        .record_auth_failures(&[row("10.0.0.1", 3, 1), row("10.0.0.2", 1, 5)])
        .await
        .unwrap();
    let query = EventQuery::of(EventFilter::All);
    let events = store.list_events(&query, i64::MAX, 10).await.unwrap();
    let counted: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.peer.as_deref(), e.count))
        .collect();
    let failed = EventKind::OperatorAuthFailed;
    assert_eq!(
        counted,
        [(failed, Some("10.0.0.2"), 1), (failed, Some("10.0.0.1"), 3)]
    );
    assert_eq!(
        store.purge_auth_failures(secs(5)).await.unwrap(),
        1,
        "older than `before`"
    );
    assert_eq!(
        store.list_events(&query, i64::MAX, 10).await.unwrap().len(),
        1
    );
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
