//! Rotation hygiene (DESIGN §7 "Usage, hygiene, events"): lifetime bounds on issue, roll and
//! update.

use std::time::Duration;

use keyauth_core::lifetime::LifetimeBounds;
use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(lifetime_bounds_hold_on_issue_roll_and_update,);

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
