//! Listings limited to a principal's scope, on both stores: ListApplications and ListKeyEvents
//! show only what is in scope (names exactly, prefixes by their characters, one environment),
//! in full pages, with page tokens bound to the scope.

use std::collections::BTreeSet;

use keyauth_contract::principal::Scope;

use crate::error::Error;
use crate::model::{ApplicationId, Environment, KeyId};
use crate::on_both_stores;
use crate::store::{ApplicationSummary, EventFilter, EventKind, EventQuery, KeyCounts};
use crate::testing::{self, StoreKind, TestAuthority, new_key, scope, who};

on_both_stores!(
    applications_are_listed_within_the_scope,
    events_are_listed_within_the_scope,
);

/// The keys of the tests, each issued and then revoked (two events each), interleaved so
/// that a scope's events are spread among the others': (application, environment).
const KEYS: [(&str, Environment); 6] = [
    ("app_billing", Environment::Test),
    ("app_lab_1", Environment::Test),
    ("app_other", Environment::Test),
    ("app_lab_2", Environment::Live),
    ("app_billing", Environment::Live),
    ("app_lab_", Environment::Test),
];

/// Issues then revokes [`KEYS`], and records a refused operator call (an event of no key).
async fn keys(a: &TestAuthority) -> Vec<KeyId> {
    let mut ids = Vec::new();
    for (app, environment) in KEYS {
        let new = crate::authority::NewKey {
            environment,
            ..new_key(app)
        };
        ids.push(a.issue(new, &who(), None).await.unwrap().record.id);
    }
    for id in &ids {
        a.revoke(id, None, &who(), None).await.unwrap();
    }
    a.note_auth_failure(
        Some("10.0.0.9"),
        Some("req-refused"),
        Error::InvalidPageToken,
    );
    assert_eq!(a.flush_auth_failures().await.unwrap(), 1);
    ids
}

/// Every page of a listing, asserting that each page but the last is full.
async fn all_pages<T>(
    size: usize,
    mut list: impl AsyncFnMut(String) -> Result<(Vec<T>, String), Error>,
) -> Vec<T> {
    let (mut items, mut token) = (Vec::new(), String::new());
    loop {
        let (page, next) = list(token).await.unwrap();
        let last = next.is_empty();
        assert!(
            last || page.len() == size,
            "a page that is not the last is full"
        );
        items.extend(page);
        if last {
            return items;
        }
        token = next;
    }
}

fn counts(revoked: u64) -> KeyCounts {
    KeyCounts {
        revoked,
        ..KeyCounts::default()
    }
}

async fn applications_are_listed_within_the_scope(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    keys(&a).await;
    let listed = async |scope: &Scope| -> Vec<(String, KeyCounts, KeyCounts)> {
        let apps: Vec<ApplicationSummary> =
            all_pages(1, async |token| a.list_applications(1, &token, scope).await).await;
        apps.into_iter()
            .map(|s| (s.application_id.as_str().to_owned(), s.test, s.live))
            .collect()
    };
    let row = |app: &str, test, live| (app.to_owned(), counts(test), counts(live));
    let rows = [
        (
            Scope::everything(),
            vec![
                row("app_billing", 1, 1),
                row("app_lab_", 1, 0),
                row("app_lab_1", 1, 0),
                row("app_lab_2", 0, 1),
                row("app_other", 1, 0),
            ],
        ),
        (scope(&["app_billing"], &[]), vec![row("app_billing", 1, 1)]),
        (scope(&["app_lab_"], &[]), vec![row("app_lab_", 1, 0)]),
        (
            scope(&["app_lab_*"], &[]),
            vec![
                row("app_lab_", 1, 0),
                row("app_lab_1", 1, 0),
                row("app_lab_2", 0, 1),
            ],
        ),
        (
            scope(&["app_lab_*"], &["live"]),
            vec![row("app_lab_2", 0, 1)],
        ),
        (
            scope(&["app_other", "app_billing"], &["test"]),
            vec![row("app_billing", 1, 0), row("app_other", 1, 0)],
        ),
        (
            scope(&[], &["live"]),
            vec![row("app_billing", 0, 1), row("app_lab_2", 0, 1)],
        ),
        // Exact characters: no case folding, no LIKE wildcards.
        (scope(&["APP_LAB_*", "App_billing"], &[]), vec![]),
        (scope(&["app%*", "app_lab__*", "app_____"], &[]), vec![]),
    ];
    for (scope, expected) in rows {
        assert_eq!(listed(&scope).await, expected, "{scope:?}");
    }

    let labs = scope(&["app_lab_*"], &[]);
    let (_, token) = a.list_applications(1, "", &labs).await.unwrap();
    let (next, _) = a.list_applications(1, &token, &labs).await.unwrap();
    assert_eq!(next[0].application_id.as_str(), "app_lab_1");
    for other in [Scope::everything(), scope(&["app_lab_*"], &["test"])] {
        let refused = a.list_applications(1, &token, &other).await;
        assert!(matches!(refused, Err(Error::InvalidPageToken)), "{other:?}");
    }
}

async fn events_are_listed_within_the_scope(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let ids = keys(&a).await;
    let listed = async |filter: EventFilter, scope: &Scope| -> (BTreeSet<KeyId>, usize) {
        let query = EventQuery::of(filter);
        let events = all_pages(2, async |token| {
            a.list_events(&query, 2, &token, scope).await
        })
        .await;
        let refused = events
            .iter()
            .filter(|e| e.kind == EventKind::OperatorAuthFailed)
            .count();
        let keys = events.into_iter().filter_map(|e| e.key_id).collect();
        (keys, refused)
    };
    let of = |which: &[usize]| {
        which
            .iter()
            .map(|&i| ids[i].clone())
            .collect::<BTreeSet<_>>()
    };
    let app = |name: &str| EventFilter::Application(ApplicationId::parse(name, "a").unwrap());
    let rows = [
        (
            EventFilter::All,
            Scope::everything(),
            of(&[0, 1, 2, 3, 4, 5]),
            1,
        ),
        (
            EventFilter::All,
            scope(&["app_lab_*"], &[]),
            of(&[1, 3, 5]),
            0,
        ),
        (EventFilter::All, scope(&["app_lab_"], &[]), of(&[5]), 0),
        (EventFilter::All, scope(&[], &["live"]), of(&[3, 4]), 0),
        (
            EventFilter::All,
            scope(&[], &["test"]),
            of(&[0, 1, 2, 5]),
            0,
        ),
        (
            EventFilter::All,
            scope(&["app_billing"], &["live"]),
            of(&[4]),
            0,
        ),
        (
            EventFilter::All,
            scope(&["APP_LAB_*", "app%*"], &[]),
            of(&[]),
            0,
        ),
        (
            app("app_billing"),
            scope(&["app_billing"], &[]),
            of(&[0, 4]),
            0,
        ),
        (app("app_other"), scope(&["app_lab_*"], &[]), of(&[]), 0),
        (
            EventFilter::Key(ids[2].clone()),
            scope(&["app_lab_*"], &[]),
            of(&[]),
            0,
        ),
        (
            EventFilter::Key(ids[3].clone()),
            scope(&["app_lab_*"], &[]),
            of(&[3]),
            0,
        ),
    ];
    for (filter, scope, keys, refused) in rows {
        let label = format!("{filter:?} {scope:?}");
        assert_eq!(listed(filter, &scope).await, (keys, refused), "{label}");
    }

    let labs = scope(&["app_lab_*"], &[]);
    let everything = EventQuery::of(EventFilter::All);
    let (first, token) = a.list_events(&everything, 2, "", &labs).await.unwrap();
    let (next, _) = a.list_events(&everything, 2, &token, &labs).await.unwrap();
    assert_eq!((first.len(), next.len()), (2, 2), "full pages");
    for other in [Scope::everything(), scope(&["app_lab_*"], &["live"])] {
        let refused = a.list_events(&everything, 2, &token, &other).await;
        assert!(matches!(refused, Err(Error::InvalidPageToken)), "{other:?}");
    }
}
