//! Reads through the authority, on both stores: page sizes and tokens (bound to their
//! filters), state filters, the applications and the audit trail a page at a time.

use std::collections::HashSet;
use std::time::Duration;

use keyauth_contract::principal::Scope;

use super::page;
use crate::authority::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::error::Error;
use crate::model::{ApplicationId, Environment, KeyId, KeyState, KeyStates};
use crate::on_both_stores;
use crate::store::{EventFilter, EventKind, EventKinds, EventQuery, KeyFilters, KeyUpdate};
use crate::testing::{self, StoreKind, TestAuthority, new_key, who};

on_both_stores!(
    keys_come_newest_first_a_page_at_a_time,
    a_page_token_holds_for_its_own_filters_only,
    the_state_filter_judges_at_now,
    applications_come_a_page_at_a_time_with_their_counts,
    events_come_a_page_at_a_time_for_their_own_query,
);

/// (asked page size, items there are) → (the limit fetched, items on the page, more follow).
#[tokio::test]
async fn the_page_size_is_bounded_and_the_token_shows_a_next_page() {
    let default = DEFAULT_PAGE_SIZE as usize;
    let max = MAX_PAGE_SIZE as usize;
    let rows = [
        (0, 10, DEFAULT_PAGE_SIZE + 1, 10, false),
        (0, 80, DEFAULT_PAGE_SIZE + 1, default, true),
        (3, 3, 4, 3, false),
        (3, 4, 4, 3, true),
        (1, 0, 2, 0, false),
        (5000, 2000, MAX_PAGE_SIZE + 1, max, true),
    ];
    for (size, there, fetched, held, more) in rows {
        let mut asked = 0;
        let (items, token) = page(
            size,
            async |limit| {
                asked = limit;
                Ok((0..there.min(limit as usize)).collect::<Vec<usize>>())
            },
            |last| format!("after {last}"),
        )
        .await
        .unwrap();
        assert_eq!(
            (asked, items.len()),
            (fetched, held),
            "size {size} of {there}"
        );
        let expected = if more {
            format!("after {}", held - 1)
        } else {
            String::new()
        };
        assert_eq!(token, expected, "size {size} of {there}");
    }
}

fn app(name: &str) -> ApplicationId {
    ApplicationId::parse(name, "application_id").unwrap()
}

/// Issues `n` keys of `name`, a second apart; their ids, oldest first.
async fn issue_keys(a: &TestAuthority, name: &str, n: usize) -> Vec<KeyId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            a.issue(new_key(name), &who(), None)
                .await
                .unwrap()
                .record
                .id,
        );
        a.clock.advance(Duration::from_secs(1));
    }
    ids
}

async fn keys_come_newest_first_a_page_at_a_time(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let mut ids = issue_keys(&a, "app_pages", 5).await;
    issue_keys(&a, "app_elsewhere", 2).await;
    ids.reverse();
    let (mut seen, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let (keys, next) = a
            .list(
                &app("app_pages"),
                KeyFilters::of(None, KeyStates::ALL),
                2,
                &token,
            )
            .await
            .unwrap();
        sizes.push(keys.len());
        seen.extend(keys.into_iter().map(|k| k.id));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(seen, ids, "newest first, each once");
    let (all, next) = a
        .list(
            &app("app_pages"),
            KeyFilters::of(None, KeyStates::ALL),
            0,
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (all.len(), next.as_str()),
        (5, ""),
        "the default page holds them all"
    );
}

async fn a_page_token_holds_for_its_own_filters_only(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    issue_keys(&a, "app_tokens", 3).await;
    issue_keys(&a, "app_tokens_too", 1).await;
    let listing = app("app_tokens");
    let (_, token) = a
        .list(&listing, KeyFilters::of(None, KeyStates::ALL), 1, "")
        .await
        .unwrap();
    let (page, _) = a
        .list(&listing, KeyFilters::of(None, KeyStates::ALL), 1, &token)
        .await
        .unwrap();
    assert_eq!(page.len(), 1, "the token resumes its own listing");
    let active = KeyStates::of([KeyState::Active]);
    let others = [
        (app("app_other"), None, KeyStates::ALL, token.clone()),
        (
            listing.clone(),
            Some(Environment::Test),
            KeyStates::ALL,
            token.clone(),
        ),
        (listing.clone(), None, active, token.clone()),
        (listing.clone(), None, KeyStates::ALL, format!("{token}x")),
        (listing.clone(), None, KeyStates::ALL, "garbage".to_owned()),
    ];
    for (application, environment, states, token) in others {
        let refused = a
            .list(&application, KeyFilters::of(environment, states), 1, &token)
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidPageToken)),
            "{application:?} {environment:?} {states:?} {token}"
        );
    }
    let (_, apps_token) = a
        .list_applications(1, "", &Scope::everything())
        .await
        .unwrap();
    let crossed = a
        .list(
            &listing,
            KeyFilters::of(None, KeyStates::ALL),
            1,
            &apps_token,
        )
        .await;
    assert!(
        matches!(crossed, Err(Error::InvalidPageToken)),
        "another listing's token"
    );
}

async fn the_state_filter_judges_at_now(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let name = "app_states";
    let [active, expired, revoked]: [KeyId; 3] = issue_keys(&a, name, 3).await.try_into().unwrap();
    let soon = KeyUpdate {
        expire_time: Some(Some(a.now().saturating_add(Duration::from_secs(10)))),
        ..KeyUpdate::default()
    };
    a.update(&expired, &soon, &who(), None).await.unwrap();
    a.revoke(&revoked, None, &who(), None).await.unwrap();
    let listed = async |states: KeyStates| -> HashSet<KeyId> {
        let (keys, _) = a
            .list(&app(name), KeyFilters::of(None, states), 0, "")
            .await
            .unwrap();
        keys.into_iter().map(|k| k.id).collect()
    };
    let set = |ids: &[&KeyId]| ids.iter().map(|&id| id.clone()).collect::<HashSet<_>>();
    let only = |s: KeyState| KeyStates::of([s]);
    assert_eq!(
        listed(only(KeyState::Expired)).await,
        set(&[]),
        "not expired yet"
    );
    a.clock.advance(Duration::from_secs(10));
    let rows = [
        (KeyStates::ALL, set(&[&active, &expired, &revoked])),
        (only(KeyState::Active), set(&[&active])),
        (only(KeyState::Expired), set(&[&expired])),
        (only(KeyState::Revoked), set(&[&revoked])),
        (
            KeyStates::of([KeyState::Active, KeyState::Revoked]),
            set(&[&active, &revoked]),
        ),
    ];
    for (states, expected) in rows {
        assert_eq!(listed(states).await, expected, "{states:?}");
    }
}

async fn applications_come_a_page_at_a_time_with_their_counts(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    for (name, n) in [("app_a", 1), ("app_b", 2), ("app_c", 3)] {
        issue_keys(&a, name, n).await;
    }
    let (first, token) = a
        .list_applications(2, "", &Scope::everything())
        .await
        .unwrap();
    let (rest, end) = a
        .list_applications(2, &token, &Scope::everything())
        .await
        .unwrap();
    let names: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|s| s.application_id.as_str())
        .collect();
    assert_eq!(names, ["app_a", "app_b", "app_c"]);
    assert_eq!((first.len(), end.as_str()), (2, ""));
    let active: Vec<u64> = first.iter().chain(&rest).map(|s| s.test.active).collect();
    assert_eq!(active, [1, 2, 3]);
}

async fn events_come_a_page_at_a_time_for_their_own_query(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let ids = issue_keys(&a, "app_events", 3).await;
    for id in &ids {
        a.revoke(id, None, &who(), None).await.unwrap();
    }
    let app_events = EventQuery::of(EventFilter::Application(app("app_events")));
    let (first, token) = a
        .list_events(&app_events, 4, "", &Scope::everything())
        .await
        .unwrap();
    let (rest, end) = a
        .list_events(&app_events, 4, &token, &Scope::everything())
        .await
        .unwrap();
    assert_eq!((first.len(), rest.len(), end.as_str()), (4, 2, ""));
    let seqs: Vec<i64> = first.iter().chain(&rest).map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    let revokes = EventQuery {
        kinds: EventKinds::of([EventKind::Revoked]),
        ..app_events.clone()
    };
    let (revoked, _) = a
        .list_events(&revokes, 0, "", &Scope::everything())
        .await
        .unwrap();
    assert_eq!(revoked.len(), 3);
    let elsewhere = [
        revokes,
        EventQuery::of(EventFilter::All),
        EventQuery::of(EventFilter::Key(ids[0].clone())),
        EventQuery {
            start: Some(a.now()),
            ..app_events.clone()
        },
    ];
    for query in elsewhere {
        let refused = a.list_events(&query, 4, &token, &Scope::everything()).await;
        assert!(matches!(refused, Err(Error::InvalidPageToken)), "{query:?}");
    }
    let backwards = EventQuery {
        start: Some(a.now()),
        end: Some(a.now()),
        ..app_events
    };
    let refused = a.list_events(&backwards, 0, "", &Scope::everything()).await;
    assert!(matches!(refused, Err(Error::InvalidArgument(_))));
}
