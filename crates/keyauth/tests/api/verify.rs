use std::time::Duration;

use keyauth_core::key::PresentedKey;
use keyauth_core::model::Environment;
use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    accepts_raw_keys_and_bearer_headers,
    refuses_anything_that_is_not_a_key,
    proves_the_secret_before_revealing_state,
    reports_expiry_and_revocation_in_order,
    checks_required_permissions_last,
    check_permission_answers_and_refuses_caller_bugs,
);

async fn accepts_raw_keys_and_bearer_headers(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;
    for presented in [
        secret.clone(),
        format!("Bearer {secret}"),
        format!("bearer {secret}"),
        format!("  Bearer   {secret}  "),
    ] {
        let r = app.verify(&presented).await;
        assert!(r.valid, "{presented:?}");
        assert_eq!(r.http_status, 200);
        assert_eq!(r.key.as_ref().unwrap().id, key.id);
        assert_eq!(r.key.unwrap().state, pb::KeyState::Active as i32);
    }
    app.stop().await;
}

async fn refuses_anything_that_is_not_a_key(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    let mut flipped = secret.clone().into_bytes();
    flipped[30] = if flipped[30] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    let inputs = [
        String::new(),
        "Bearer ".into(),
        "Bearer".into(),
        "sk_test_".into(),
        "\0\0\0\0".into(),
        format!("{}\0", &secret[..secret.len() - 1]),
        "ключ-ключ-ключ".into(),
        "🔑".repeat(20),
        "x".repeat(60_000),
        secret[..secret.len() - 1].to_owned(),
        format!("{secret}0"),
        secret.replacen("sk_test_", "sk_live_", 1),
        flipped,
        "Basic dXNlcjpwYXNz".into(),
    ];
    let reads_before = app.key_reads();
    for input in &inputs {
        let r = app.verify(input).await;
        assert!(!r.valid);
        assert_eq!(r.http_status, 401);
        assert!(r.key.is_none(), "no metadata without a proven secret");
        let error = r.error.unwrap();
        assert_eq!(error.code, "authentication_error");
        assert_eq!(error.message, "Invalid API key provided");
        assert_eq!(error.r#type, "invalid_request_error");
    }
    assert_eq!(
        app.key_reads(),
        reads_before,
        "malformed keys never reach the store"
    );

    // Well-formed keys that are unknown, or have a wrong secret, are refused the same way.
    let unknown = PresentedKey::generate(Environment::Test).unwrap();
    assert_eq!(
        error_code(&app.verify(unknown.expose()).await),
        Some("authentication_error")
    );
    let real = PresentedKey::parse(&secret).unwrap();
    let wrong =
        PresentedKey::from_parts(Environment::Test, real.lookup(), &"W".repeat(32)).unwrap();
    let r = app.verify(wrong.expose()).await;
    assert_eq!(error_code(&r), Some("authentication_error"));
    assert!(r.key.is_none());
    app.stop().await;
}

async fn proves_the_secret_before_revealing_state(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;
    app.revoke(&key.id).await.unwrap();
    let real = PresentedKey::parse(&secret).unwrap();
    let wrong =
        PresentedKey::from_parts(Environment::Test, real.lookup(), &"Z".repeat(32)).unwrap();
    let r = app.verify(wrong.expose()).await;
    assert_eq!(
        error_code(&r),
        Some("authentication_error"),
        "a wrong secret learns nothing"
    );
    assert!(r.key.is_none());
    let r = app.verify(&secret).await;
    assert_eq!(error_code(&r), Some("api_key_revoked"));
    assert_eq!(r.http_status, 401);
    assert_eq!(r.key.unwrap().state, pb::KeyState::Revoked as i32);
    app.stop().await;
}

async fn reports_expiry_and_revocation_in_order(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let in_an_hour = prost_types::Timestamp {
        seconds: app.authority.now().as_micros() / 1_000_000 + 3600,
        nanos: 0,
    };
    let mut request = standard("app_1", pb::Environment::Live);
    request.expire_time = Some(in_an_hour);
    let (expiring, expiring_secret) = app.issue(request.clone()).await.unwrap();
    let (both, both_secret) = app.issue(request).await.unwrap();
    assert_eq!(expiring.expire_time, Some(in_an_hour));
    assert!(app.verify(&expiring_secret).await.valid);

    app.clock.advance(Duration::from_secs(3600));
    let r = app.verify(&expiring_secret).await;
    assert_eq!(error_code(&r), Some("api_key_expired"));
    assert_eq!(r.http_status, 401);
    assert_eq!(r.key.unwrap().state, pb::KeyState::Expired as i32);
    assert_eq!(
        app.get(&expiring.id).await.unwrap().state,
        pb::KeyState::Expired as i32
    );

    // Revoked wins over expired.
    app.revoke(&both.id).await.unwrap();
    assert_eq!(
        error_code(&app.verify(&both_secret).await),
        Some("api_key_revoked")
    );
    app.stop().await;
}

async fn checks_required_permissions_last(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut request = standard("app_1", pb::Environment::Test);
    request.permissions = vec![
        permission("patients", &["read"]),
        permission("ai", &["write"]),
    ];
    let (_, restricted) = app.issue(request).await.unwrap();
    let (_, full) = app.issue_test_key().await;

    let ok = app
        .verify_with(
            &restricted,
            vec![
                permission("patients", &["read"]),
                permission("ai", &["write"]),
            ],
        )
        .await
        .unwrap();
    assert!(ok.valid);
    let denied = app
        .verify_with(
            &restricted,
            vec![permission("patients", &["read", "write"])],
        )
        .await
        .unwrap();
    assert_eq!(error_code(&denied), Some("insufficient_permissions"));
    assert_eq!(denied.http_status, 403);
    assert!(
        denied.key.unwrap().restricted,
        "the proven key is described"
    );
    // write does not imply read.
    let denied = app
        .verify_with(&restricted, vec![permission("ai", &["read"])])
        .await
        .unwrap();
    assert_eq!(error_code(&denied), Some("insufficient_permissions"));
    // A standard key holds every permission of the catalog.
    let everything = vec![
        permission("patients", &["read", "write", "delete"]),
        permission("appointments", &["delete"]),
        permission("ai", &["read", "write"]),
    ];
    assert!(app.verify_with(&full, everything).await.unwrap().valid);
    // A permission outside the catalog is the caller's bug.
    let status = assert_status(
        app.verify_with(&full, vec![permission("billing", &["read"])])
            .await,
        Code::InvalidArgument,
        None,
    );
    assert_eq!(
        violated_fields(&status),
        ["required_permissions[0].resource"]
    );
    app.stop().await;
}

async fn check_permission_answers_and_refuses_caller_bugs(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut request = standard("app_1", pb::Environment::Test);
    request.permissions = vec![permission("appointments", &["read", "delete"])];
    let (key, secret) = app.issue(request).await.unwrap();

    let allowed = app
        .check(&format!("Bearer {secret}"), "appointments", "delete")
        .await
        .unwrap();
    assert!(allowed.allowed && allowed.http_status == 200 && allowed.error.is_none());
    assert_eq!(allowed.key.unwrap().id, key.id);
    let denied = app.check(&secret, "appointments", "write").await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.http_status, 403);
    assert_eq!(denied.error.unwrap().code, "insufficient_permissions");
    let garbage = app
        .check("sk_live_garbage", "patients", "read")
        .await
        .unwrap();
    assert_eq!(garbage.error.unwrap().code, "authentication_error");
    assert_eq!(garbage.http_status, 401);

    for (resource, action, field) in [
        ("billing", "read", "resource"),
        ("encounters", "delete", "action"),
        ("", "read", "resource"),
        ("patients", "", "action"),
    ] {
        let status = assert_status(
            app.check(&secret, resource, action).await,
            Code::InvalidArgument,
            None,
        );
        assert_eq!(violated_fields(&status), [field], "{resource}/{action}");
    }
    app.revoke(&key.id).await.unwrap();
    let revoked = app.check(&secret, "appointments", "read").await.unwrap();
    assert_eq!(revoked.error.unwrap().code, "api_key_revoked");
    assert_eq!(revoked.http_status, 401);
    app.stop().await;
}
