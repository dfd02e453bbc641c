use std::time::Duration;

use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    roll_keeps_the_old_key_for_the_grace_period,
    roll_with_zero_grace_stops_the_old_key_now,
    roll_refuses_bad_grace_and_unrollable_keys,
    concurrent_rolls_of_one_key_have_one_winner,
    revoke_is_immediate_and_idempotent,
);

fn secs(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().unwrap().seconds
}

async fn roll_keeps_the_old_key_for_the_grace_period(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut request = standard("app_1", pb::Environment::Live);
    request.name = "checkout".into();
    request.permissions = vec![permission("patients", &["read"])];
    request.metadata.insert("owner".into(), "ops".into());
    let (old, old_secret) = app.issue(request).await.unwrap();
    assert!(app.verify(&old_secret).await.valid, "warm the cache");

    let rolled = app.roll(&old.id, None).await.unwrap();
    let new = rolled.key.unwrap();
    let previous = rolled.previous_key.unwrap();
    assert_ne!(rolled.secret, old_secret);
    assert!(rolled.secret.starts_with("sk_live_"));
    assert_eq!(previous.id, old.id);
    assert_eq!(previous.replaced_by_key_id, new.id);
    assert_eq!(previous.state, pb::KeyState::Active as i32);
    assert_eq!(
        secs(&previous.expire_time) - app.authority.now().as_micros() / 1_000_000,
        24 * 3600,
        "unset grace is 24 hours"
    );
    for (a, b) in [
        (&new.application_id, &old.application_id),
        (&new.name, &old.name),
    ] {
        assert_eq!(a, b);
    }
    assert_eq!(new.environment, old.environment);
    assert_eq!(new.permissions, old.permissions);
    assert_eq!(new.restricted, old.restricted);
    assert_eq!(new.metadata, old.metadata);
    assert!(new.expire_time.is_none());

    // Both keys work during the grace period.
    assert!(app.verify(&old_secret).await.valid);
    assert!(app.verify(&rolled.secret).await.valid);
    app.clock.advance(Duration::from_secs(24 * 3600 - 1));
    assert!(app.verify(&old_secret).await.valid);
    app.clock.advance(Duration::from_secs(1));
    let r = app.verify(&old_secret).await;
    assert_eq!(error_code(&r), Some("api_key_expired"));
    assert_eq!(r.key.unwrap().replaced_by_key_id, new.id);
    assert!(app.verify(&rolled.secret).await.valid);
    app.stop().await;
}

async fn roll_with_zero_grace_stops_the_old_key_now(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (old, old_secret) = app.issue_test_key().await;
    assert!(app.verify(&old_secret).await.valid);
    let rolled = app.roll(&old.id, Some(Duration::ZERO)).await.unwrap();
    assert_eq!(
        rolled.previous_key.unwrap().state,
        pb::KeyState::Expired as i32
    );
    assert_eq!(
        error_code(&app.verify(&old_secret).await),
        Some("api_key_expired")
    );
    assert!(app.verify(&rolled.secret).await.valid);

    let (other, _) = app.issue_test_key().await;
    let rolled = app
        .roll(&other.id, Some(Duration::from_secs(90)))
        .await
        .unwrap();
    let previous = rolled.previous_key.unwrap();
    assert_eq!(
        secs(&previous.expire_time) - app.authority.now().as_micros() / 1_000_000,
        90
    );
    app.stop().await;
}

async fn roll_refuses_bad_grace_and_unrollable_keys(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, _) = app.issue_test_key().await;
    let status = assert_status(
        app.roll(&key.id, Some(Duration::from_secs(7 * 24 * 3600 + 1)))
            .await,
        Code::InvalidArgument,
        None,
    );
    assert_eq!(violated_fields(&status), ["grace_period"]);
    assert!(status.message().contains("7 days"));
    let negative = app
        .client
        .clone()
        .roll_key(op(pb::RollKeyRequest {
            key_id: key.id.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            expire_time: None,
        }))
        .await;
    assert_status(negative, Code::InvalidArgument, None);
    assert!(
        app.roll(&key.id, Some(Duration::from_secs(7 * 24 * 3600)))
            .await
            .is_ok(),
        "7 days is allowed"
    );

    // Already rolled.
    assert_status(
        app.roll(&key.id, None).await,
        Code::FailedPrecondition,
        Some("KEY_ALREADY_ROLLED"),
    );
    // Revoked.
    let (revoked, _) = app.issue_test_key().await;
    app.revoke(&revoked.id).await.unwrap();
    assert_status(
        app.roll(&revoked.id, None).await,
        Code::FailedPrecondition,
        Some("KEY_REVOKED"),
    );
    // Expired.
    let mut request = standard("app_1", pb::Environment::Test);
    request.expire_time = Some(prost_types::Timestamp {
        seconds: app.authority.now().as_micros() / 1_000_000 + 10,
        nanos: 0,
    });
    let (expiring, _) = app.issue(request).await.unwrap();
    app.clock.advance(Duration::from_secs(11));
    assert_status(
        app.roll(&expiring.id, None).await,
        Code::FailedPrecondition,
        Some("KEY_EXPIRED"),
    );
    // Unknown and malformed ids.
    assert_status(
        app.roll("key_AAAAAAAAAAAA", None).await,
        Code::NotFound,
        Some("KEY_NOT_FOUND"),
    );
    let status = assert_status(
        app.roll("sk_test_oops", None).await,
        Code::InvalidArgument,
        None,
    );
    assert_eq!(violated_fields(&status), ["key_id"]);
    assert_status(app.roll("", None).await, Code::InvalidArgument, None);
    app.stop().await;
}

async fn concurrent_rolls_of_one_key_have_one_winner(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    for _round in 0..3 {
        let (key, _) = app
            .issue(standard("racing", pb::Environment::Test))
            .await
            .unwrap();
        let mut rolls = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let mut client = app.client.clone();
            let id = key.id.clone();
            rolls.spawn(async move { client.roll_key(op(roll_request(id))).await });
        }
        let results = rolls.join_all().await;
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "exactly one roll wins");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(r.code(), Code::FailedPrecondition, "{r:?}");
        }
        register_secret(&winners[0].get_ref().secret);
    }
    let list = app
        .client
        .clone()
        .list_keys(op(pb::ListKeysRequest {
            application_id: "racing".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.keys.len(),
        6,
        "three originals and three replacements, nothing more"
    );
    app.stop().await;
}

async fn revoke_is_immediate_and_idempotent(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;
    assert!(app.verify(&secret).await.valid, "cached now");
    let revoked = app.revoke(&key.id).await.unwrap();
    assert_eq!(revoked.state, pb::KeyState::Revoked as i32);
    assert_eq!(revoked.revoke_reason, "compromised");
    assert!(revoked.revoke_time.is_some());
    assert_eq!(
        error_code(&app.verify(&secret).await),
        Some("api_key_revoked"),
        "refused on the very next call"
    );

    app.clock.advance(Duration::from_secs(5));
    let again = app
        .client
        .clone()
        .revoke_key(op(pb::RevokeKeyRequest {
            key_id: key.id.clone(),
            reason: "second".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(
        again.revoke_time, revoked.revoke_time,
        "the first revocation stands"
    );
    assert_eq!(again.revoke_reason, "compromised");
    assert_status(app.revoke("key_AAAAAAAAAAAA").await, Code::NotFound, None);
    let long_reason = app
        .client
        .clone()
        .revoke_key(op(pb::RevokeKeyRequest {
            key_id: key.id.clone(),
            reason: "r".repeat(501),
        }))
        .await;
    let status = assert_status(long_reason, Code::InvalidArgument, None);
    assert_eq!(violated_fields(&status), ["reason"]);
    app.stop().await;
}
