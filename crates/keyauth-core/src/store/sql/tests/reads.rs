//! Reads: key and application listings, the audit trail.

use keyauth_contract::principal::Scope;

use crate::auth_failures::FailureRow;
use crate::model::{ApplicationId, Environment, KeyId, KeyState, KeyStates};
use crate::on_both_stores;
use crate::store::{
    Cursor, EventFilter, EventKind, EventKinds, EventQuery, KeyCounts, KeyFilters, KeyListing,
};
use crate::testing::{StoreKind, secs, who};

use super::{insert, key, one_of_each, store, successor};

on_both_stores!(
    keys_are_listed_by_state_environment_and_cursor,
    applications_are_counted_per_environment_and_state,
    events_are_found_by_key_application_kind_and_time,
    refused_operator_calls_are_recorded_and_purged,
);

/// An application's keys of one environment: active, expired, revoked.
fn counts(active: u64, expired: u64, revoked: u64) -> KeyCounts {
    KeyCounts {
        active,
        expired,
        revoked,
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
            filters: KeyFilters::of(environment, KeyStates::of(states.iter().copied())),
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
    let page = store
        .list_applications(None, 2, secs(10), &Scope::everything())
        .await
        .unwrap();
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
        .list_applications(Some(&after), 2, secs(10), &Scope::everything())
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
            kinds: EventKinds::of(kinds),
            actor: None,
            start: range.0.map(secs),
            end: range.1.map(secs),
        };
        let events = store
            .list_events(&query, &Scope::everything(), before, 10)
            .await
            .unwrap();
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
    let events = store
        .list_events(&query, &Scope::everything(), i64::MAX, 10)
        .await
        .unwrap();
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
        store
            .list_events(&query, &Scope::everything(), i64::MAX, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}
