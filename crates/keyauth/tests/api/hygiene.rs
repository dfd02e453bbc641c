//! Rotation hygiene (DESIGN §7 "Usage, hygiene, events"): lifetime bounds on issue, roll and
//! update; stale keys listed by their last use; one `expiring` event per key.

use std::time::Duration;

use keyauth_core::lifetime::LifetimeBounds;
use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    lifetime_bounds_hold_on_issue_roll_and_update,
    stale_keys_are_listed_by_last_use,
    a_key_entering_the_warning_window_gets_one_expiring_event,
);

const DAY: i64 = 86_400;

/// `secs` seconds from the test clock's now (the server's clock is frozen), as a wire time.
fn at(app: &TestApp, secs: i64) -> prost_types::Timestamp {
    let micros = app.authority.now().as_micros() + secs * 1_000_000;
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Live keys live 30 days at most, test keys are unbounded: a key issued, rolled or updated
/// without an expiry gets now + 30 days; a later one is INVALID_ARGUMENT naming the field; an
/// earlier one stays.
async fn lifetime_bounds_hold_on_issue_roll_and_update(backend: Backend) {
    let Some(app) = spawn_with(
        backend,
        Options {
            lifetimes: LifetimeBounds {
                live: Some(Duration::from_secs(30 * DAY as u64)),
                test: None,
            },
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let bound = Some(at(&app, 30 * DAY));
    let live = |expire_time| pb::IssueKeyRequest {
        expire_time,
        ..standard("app_1", pb::Environment::Live)
    };
    // Issue: none asked → the bound; within → as asked; later → refused.
    let (key, _) = app.issue(live(None)).await.unwrap();
    assert_eq!(key.expire_time, bound);
    let (soon, _) = app.issue(live(Some(at(&app, DAY)))).await.unwrap();
    assert_eq!(soon.expire_time, Some(at(&app, DAY)));
    let status = assert_status(
        app.issue(live(Some(at(&app, 31 * DAY)))).await,
        Code::InvalidArgument,
        None,
    );
    assert_eq!(violated_fields(&status), ["expire_time"]);
    assert!(
        status.message().contains("--max-live-key-lifetime"),
        "{status:?}"
    );
    // Test keys: unbounded.
    let (test, _) = app.issue_test_key().await;
    assert_eq!(test.expire_time, None);

    // Roll: the new key inherits an expiry within the bound, never more than the bound.
    let rolled = app.roll(&soon.id, None).await.unwrap();
    register_secret(&rolled.secret);
    assert_eq!(rolled.key.unwrap().expire_time, Some(at(&app, DAY)));
    let mut client = app.client.clone();
    let status = client
        .roll_key(op(pb::RollKeyRequest {
            key_id: key.id.clone(),
            grace_period: None,
            expire_time: Some(at(&app, 40 * DAY)),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["expire_time"]);

    // Update: clearing the expiry gives the bound; a later one is refused; an earlier one stays.
    let update = |expire_time| pb::UpdateKeyRequest {
        key: Some(pb::ApiKey {
            id: key.id.clone(),
            expire_time,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["expire_time".into()],
        }),
    };
    let updated = client
        .update_key(op(update(None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.key.unwrap().expire_time, bound);
    let status = client
        .update_key(op(update(Some(at(&app, 60 * DAY)))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["key.expire_time"]);
    let updated = client
        .update_key(op(update(Some(at(&app, 2 * DAY)))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.key.unwrap().expire_time, Some(at(&app, 2 * DAY)));
    app.stop().await;
}

/// `ListKeys.last_used_before`: keys not used since then, never-used ones included; a use not
/// flushed yet counts; the page token holds for the same filter only.
async fn stale_keys_are_listed_by_last_use(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    // A second apart: newest first is a known order.
    let (old, old_secret) = app.issue_test_key().await;
    app.clock.advance(Duration::from_secs(1));
    let (never, _) = app.issue_test_key().await;
    app.clock.advance(Duration::from_secs(1));
    let (recent, recent_secret) = app.issue_test_key().await;
    // `old` used, flushed; an hour later `recent` used, not flushed yet.
    assert!(app.verify(&old_secret).await.valid);
    app.authority.write_last_use().await.unwrap();
    let cutoff = at(&app, 60);
    app.clock.advance(Duration::from_secs(3600));
    assert!(app.verify(&recent_secret).await.valid);
    let mut client = app.client.clone();
    let list = |before, page_size, page_token: String| pb::ListKeysRequest {
        application_id: "app_1".into(),
        last_used_before: before,
        page_size,
        page_token,
        ..Default::default()
    };
    let listed = |request| {
        let mut client = client.clone();
        async move {
            let page = client.list_keys(op(request)).await.unwrap().into_inner();
            let ids: Vec<String> = page.keys.into_iter().map(|k| k.id).collect();
            (ids, page.next_page_token)
        }
    };
    // Not used in the last 59 minutes: `old` (used before), `never`.
    let (stale, _) = listed(list(Some(cutoff), 0, String::new())).await;
    assert_eq!(stale, [never.id.clone(), old.id.clone()], "newest first");
    // Not used since before `old`'s use: `never` alone.
    let (unused, _) = listed(list(Some(at(&app, -7200)), 0, String::new())).await;
    assert_eq!(unused, [never.id.as_str()]);
    // Unfiltered: every key.
    let (all, _) = listed(list(None, 0, String::new())).await;
    assert_eq!(all.len(), 3);
    assert!(all.contains(&recent.id));
    // A page token of the filtered listing is refused for another filter.
    let (first, token) = listed(list(Some(cutoff), 1, String::new())).await;
    assert_eq!(first, [never.id.as_str()]);
    let (second, _) = listed(list(Some(cutoff), 1, token.clone())).await;
    assert_eq!(second, [old.id.as_str()]);
    let status = client
        .list_keys(op(list(None, 1, token)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

/// The keys whose `expire_time` enters `--expiry-warning` (7 days) get one `expiring` event
/// each, whoever sweeps and however often; revoked and rolled keys none; a changed expiry is
/// warned of again; the gauge's count follows.
async fn a_key_entering_the_warning_window_gets_one_expiring_event(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let expiring = |days| pb::IssueKeyRequest {
        expire_time: Some(at(&app, days * DAY)),
        ..standard("app_1", pb::Environment::Test)
    };
    let (later, _) = app.issue(expiring(30)).await.unwrap();
    let (soon, _) = app.issue(expiring(3)).await.unwrap();
    let (revoked, _) = app.issue(expiring(3)).await.unwrap();
    app.revoke(&revoked.id).await.unwrap();
    let (rolled, _) = app.issue(expiring(3)).await.unwrap();
    let successor = app.roll(&rolled.id, None).await.unwrap();
    register_secret(&successor.secret);
    let successor = successor.key.unwrap();
    let (_forever, _) = app.issue_test_key().await;

    let expiring_events = || {
        let mut client = app.client.clone();
        async move {
            let events = client
                .list_key_events(op(pb::ListKeyEventsRequest {
                    types: vec![pb::KeyEventType::Expiring.into()],
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .events;
            let mut ids: Vec<String> = events.into_iter().map(|e| e.key_id).collect();
            ids.sort();
            ids
        }
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    // Two sweeps at once (two instances on PostgreSQL): one event per key.
    let (a, b) = tokio::join!(app.authority.warn_expiring(), app.authority.warn_expiring());
    assert_eq!(a.unwrap() + b.unwrap(), 2);
    assert_eq!(
        expiring_events().await,
        sorted(vec![soon.id.clone(), successor.id.clone()])
    );
    assert_eq!(app.authority.warn_expiring().await.unwrap(), 0);
    let counts = app.authority.count_expiring().await.unwrap();
    assert_eq!(counts.map(|(_, n)| n), [2, 0], "test, live");

    // 24 days on, `later` enters the window (the others have expired meanwhile).
    app.clock.advance(Duration::from_secs(24 * DAY as u64));
    assert_eq!(app.authority.warn_expiring().await.unwrap(), 1);
    assert_eq!(app.authority.warn_expiring().await.unwrap(), 0);
    // Its expiry changed (still within the window): warned of again, once.
    let mut client = app.client.clone();
    client
        .update_key(op(pb::UpdateKeyRequest {
            key: Some(pb::ApiKey {
                id: later.id.clone(),
                expire_time: Some(at(&app, 5 * DAY)),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["expire_time".into()],
            }),
        }))
        .await
        .unwrap();
    assert_eq!(app.authority.warn_expiring().await.unwrap(), 1);
    assert_eq!(app.authority.warn_expiring().await.unwrap(), 0);
    let events = expiring_events().await;
    assert_eq!(events.iter().filter(|id| **id == later.id).count(), 2);
    assert_eq!(events.len(), 4);
    app.stop().await;
}
