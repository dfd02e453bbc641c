//! The audit trail's actor, on both stores: every change names who made it, ListKeyEvents
//! finds events by the actor's name or subject (its page tokens bound to that filter), and any
//! number of repeated event types is one filter (security finding F9).

use keyauth_contract::principal::Scope;

use crate::error::Error;
use crate::model::{ApplicationId, KeyId};
use crate::on_both_stores;
use crate::store::{
    Actor, AuditEvent, EventFilter, EventKind, EventKinds, EventQuery, Exposure, KeyUpdate,
    Provenance,
};
use crate::testing::{self, StoreKind, TestAuthority, actor, new_key, who};

on_both_stores!(
    every_change_names_its_actor,
    events_are_found_by_the_actor_name_or_subject,
    forty_thousand_repeated_types_are_one_filter,
);

/// A static token's principal: a name, no subject, no issuer.
fn portal() -> Actor {
    Actor {
        name: "portal-backend".into(),
        subject: String::new(),
        issuer: String::new(),
    }
}

fn by(actor: Option<Actor>) -> Provenance {
    Provenance { actor, ..who() }
}

/// Every event of `app`, newest first.
async fn events_of(a: &TestAuthority, app: &str, actor: Option<&str>) -> Vec<AuditEvent> {
    let query = EventQuery {
        actor: actor.map(str::to_owned),
        ..EventQuery::of(EventFilter::Application(
            ApplicationId::parse(app, "application_id").unwrap(),
        ))
    };
    let (events, next) = a
        .list_events(&query, 0, "", &Scope::everything())
        .await
        .unwrap();
    assert_eq!(next, "");
    events
}

/// The changes of the tests: issued and updated by [`actor`], rolled and revoked by
/// [`portal`], a second key issued by no principal and exposed by [`actor`]. Their ids.
async fn changes(a: &TestAuthority, app: &str) -> (KeyId, KeyId, KeyId) {
    let (jwt, token) = (by(Some(actor())), by(Some(portal())));
    let first = a.issue(new_key(app), &jwt, None).await.unwrap();
    let update = KeyUpdate {
        name: Some("renamed".into()),
        ..KeyUpdate::default()
    };
    a.update(&first.record.id, &update, &jwt, None)
        .await
        .unwrap();
    let (rolled, _) = a
        .roll(&first.record.id, None, None, &token, None)
        .await
        .unwrap();
    a.revoke(&rolled.record.id, None, &token, None)
        .await
        .unwrap();
    let leaked = a.issue(new_key(app), &by(None), None).await.unwrap();
    let found = Exposure {
        source: "test",
        url: "",
    };
    a.report_exposed(&[leaked.key.expose()], found, &jwt)
        .await
        .unwrap();
    (first.record.id, rolled.record.id, leaked.record.id)
}

async fn every_change_names_its_actor(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let (first, rolled, leaked) = changes(&a, "app_actors").await;
    let seen: Vec<(EventKind, Option<KeyId>, Option<Actor>)> = events_of(&a, "app_actors", None)
        .await
        .into_iter()
        .map(|e| (e.kind, e.key_id, e.actor))
        .collect();
    let expected = [
        (EventKind::Exposed, Some(leaked.clone()), Some(actor())),
        (EventKind::Issued, Some(leaked), None),
        (EventKind::Revoked, Some(rolled), Some(portal())),
        (EventKind::Rolled, Some(first.clone()), Some(portal())),
        (EventKind::Updated, Some(first.clone()), Some(actor())),
        (EventKind::Issued, Some(first), Some(actor())),
    ];
    assert_eq!(seen, expected, "newest first");
}

async fn events_are_found_by_the_actor_name_or_subject(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    changes(&a, "app_actors").await;
    let kinds = async |actor: &str| -> Vec<EventKind> {
        let events = events_of(&a, "app_actors", Some(actor)).await;
        events.into_iter().map(|e| e.kind).collect()
    };
    use EventKind::{Exposed, Issued, Revoked, Rolled, Updated};
    let jwt = [Exposed, Updated, Issued];
    assert_eq!(kinds(&actor().name).await, jwt, "by name");
    assert_eq!(kinds(&actor().subject).await, jwt, "by subject");
    assert_eq!(kinds("portal-backend").await, [Revoked, Rolled]);
    assert_eq!(kinds(&actor().issuer).await, [], "not by issuer");
    assert_eq!(kinds("").await, [], "no actor has an empty name or subject");
    assert_eq!(kinds("nobody").await, []);

    let all = Scope::everything();
    let query = |actor: Option<&str>| EventQuery {
        actor: actor.map(str::to_owned),
        ..EventQuery::of(EventFilter::All)
    };
    let (page, token) = a
        .list_events(&query(Some(&actor().name)), 2, "", &all)
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    let (rest, _) = a
        .list_events(&query(Some(&actor().name)), 2, &token, &all)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1, "the token resumes its own actor's events");
    let (_, unfiltered) = a.list_events(&query(None), 2, "", &all).await.unwrap();
    let crossed = [
        (query(Some(&actor().subject)), token.clone()),
        (query(Some("portal-backend")), token.clone()),
        (query(None), token.clone()),
        (query(Some(&actor().name)), unfiltered),
    ];
    for (other, token) in crossed {
        let refused = a.list_events(&other, 2, &token, &all).await;
        assert!(matches!(refused, Err(Error::InvalidPageToken)), "{other:?}");
    }
}

/// F9: a ListKeyEvents with 40,000 repeated types is answered (it was a store error, "too
/// many SQL variables"), and its token holds for the same set of types however repeated.
async fn forty_thousand_repeated_types_are_one_filter(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    changes(&a, "app_actors").await;
    let all = Scope::everything();
    let repeated = EventQuery {
        kinds: [EventKind::Revoked, EventKind::Issued]
            .into_iter()
            .cycle()
            .take(40_000)
            .collect(),
        ..EventQuery::of(EventFilter::All)
    };
    let (page, token) = a.list_events(&repeated, 2, "", &all).await.unwrap();
    let kinds: Vec<EventKind> = page.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Issued, EventKind::Revoked]);
    let once = EventQuery {
        kinds: EventKinds::of([EventKind::Issued, EventKind::Revoked]),
        ..EventQuery::of(EventFilter::All)
    };
    let (rest, end) = a.list_events(&once, 2, &token, &all).await.unwrap();
    let kinds: Vec<EventKind> = rest.iter().map(|e| e.kind).collect();
    assert_eq!((kinds, end.as_str()), (vec![EventKind::Issued], ""));
    let other = EventQuery {
        kinds: EventKinds::of([EventKind::Issued]),
        ..once
    };
    let refused = a.list_events(&other, 2, &token, &all).await;
    assert!(matches!(refused, Err(Error::InvalidPageToken)));
}
