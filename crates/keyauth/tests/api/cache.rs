//! The Verify hot path: what the cache answers, what reaches the store and argon2.

use std::time::Duration;

use keyauth_core::cache::CacheSettings;
use keyauth_core::key::PresentedKey;
use keyauth_core::model::Environment;
use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    warm_verifies_do_not_touch_the_store,
    a_cached_entry_expires_with_its_key,
    staleness_is_bounded_by_the_ttl,
    the_failure_limiter_spares_the_owner,
    unknown_ids_are_remembered_briefly,
    a_saturated_hash_pool_answers_unavailable,
    last_use_is_recorded_and_flushed_at_shutdown,
);

async fn warm_verifies_do_not_touch_the_store(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    assert!(app.verify(&secret).await.valid);
    let reads = app.key_reads();
    for _ in 0..50 {
        assert!(app.verify(&secret).await.valid);
        assert!(
            app.check(&secret, "patients", "read")
                .await
                .unwrap()
                .allowed
        );
    }
    assert_eq!(
        app.key_reads(),
        reads,
        "warm Verify and CheckPermission are answered from memory"
    );
    // A wrong secret for a cached id is refused from memory too.
    let real = PresentedKey::parse(&secret).unwrap();
    let wrong =
        PresentedKey::from_parts(Environment::Test, real.lookup(), &"q".repeat(32)).unwrap();
    assert_eq!(
        error_code(&app.verify(wrong.expose()).await),
        Some("authentication_error")
    );
    assert_eq!(app.key_reads(), reads);
    // Bad checksums never reach the store, cached or not.
    let mut bad = secret.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
    let bad = String::from_utf8(bad).unwrap();
    for _ in 0..20 {
        assert_eq!(
            error_code(&app.verify(&bad).await),
            Some("authentication_error")
        );
    }
    assert_eq!(app.key_reads(), reads);
    app.stop().await;
}

async fn a_cached_entry_expires_with_its_key(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut request = standard("app_1", pb::Environment::Test);
    request.expire_time = Some(prost_types::Timestamp {
        seconds: app.authority.now().as_micros() / 1_000_000 + 5,
        nanos: 0,
    });
    let (_, secret) = app.issue(request).await.unwrap();
    assert!(app.verify(&secret).await.valid);
    let reads = app.key_reads();
    app.clock.advance(Duration::from_secs(5));
    assert_eq!(
        error_code(&app.verify(&secret).await),
        Some("api_key_expired")
    );
    assert_eq!(
        app.key_reads(),
        reads,
        "judged from the cached record at the new time"
    );
    app.stop().await;
}

async fn staleness_is_bounded_by_the_ttl(backend: Backend) {
    let options = Options {
        cache: CacheSettings {
            ttl: Duration::from_secs(30),
            ..CacheSettings::default()
        },
        ..Options::default()
    };
    let Some(app) = spawn_with(backend, options).await else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;
    assert!(app.verify(&secret).await.valid);
    // Revoked behind every instance's back (a manual SQL edit: no key event, so no
    // notification): the cache may answer from its copy until the TTL, never after.
    revoke_with_raw_sql(&app.db, &key.id).await;
    app.clock.advance(Duration::from_secs(29));
    assert!(
        app.verify(&secret).await.valid,
        "within the TTL the cached answer stands"
    );
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(
        error_code(&app.verify(&secret).await),
        Some("api_key_revoked")
    );
    app.stop().await;
}

async fn revoke_with_raw_sql(db: &TestDb, key_id: &str) {
    use sqlx::Connection;
    const SQL: &str = "UPDATE api_keys SET revoke_time = 1 WHERE id = $1";
    match db {
        TestDb::Sqlite { .. } => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.unwrap();
            sqlx::query(SQL)
                .bind(key_id)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        TestDb::Postgres { .. } => {
            let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
            sqlx::query(SQL)
                .bind(key_id)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// `n` wrong secrets (valid checksums) for the key id of `target`.
fn wrong_secrets(target: &str, n: usize) -> Vec<String> {
    let real = PresentedKey::parse(target).unwrap();
    (0..n)
        .map(|i| {
            PresentedKey::from_parts(Environment::Test, real.lookup(), &format!("{i:0>32}"))
                .unwrap()
                .expose()
                .to_owned()
        })
        .collect()
}

/// F2/F7: a wrong secret is refused by the key's check value, without argon2 and without
/// counting against the key id, so however many come, the owner is proven at the first try.
/// Keys from before check values are rationed per id as before, until their first proof gives
/// them one.
async fn the_failure_limiter_spares_the_owner(backend: Backend) {
    let options = Options {
        cache: CacheSettings {
            failure_limit: 3,
            ..CacheSettings::default()
        },
        ..Options::default()
    };
    let Some(app) = spawn_with(backend, options).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    let (_, cold_secret) = app.issue_test_key().await;
    let (legacy, legacy_secret) = app.issue_test_key().await;
    app.db
        .execute(&format!(
            "UPDATE api_keys SET secret_check = NULL WHERE id = '{}'",
            legacy.id
        ))
        .await;
    assert!(
        app.verify(&secret).await.valid,
        "the owner's key is proven and cached"
    );

    // A flood on the cached key and on the cold one: each refused as invalid, never "retry";
    // no argon2, and the cold key's row read once (its check value is then in memory).
    let (argon2, reads) = (app.argon2_checks(), app.key_reads());
    for target in [&secret, &cold_secret] {
        for wrong in wrong_secrets(target, 20) {
            let r = app
                .verify_with(&wrong, vec![])
                .await
                .expect("never throttled");
            assert_eq!(error_code(&r), Some("authentication_error"));
        }
    }
    assert_eq!(
        app.argon2_checks(),
        argon2,
        "a wrong secret costs no argon2"
    );
    assert_eq!(app.key_reads(), reads + 1, "one read of the cold key");
    assert!(app.verify(&secret).await.valid);
    assert!(
        app.verify(&cold_secret).await.valid,
        "the cold owner is proven at the first try"
    );

    // A key without a check value: argon2 is rationed after the limit, so this second's one
    // try went to the attacker and the owner is told to retry (never "invalid"), without a
    // store read.
    for wrong in wrong_secrets(&legacy_secret, 10) {
        match app.verify_with(&wrong, vec![]).await {
            Ok(r) => assert_eq!(error_code(&r), Some("authentication_error")),
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
    }
    let reads = app.key_reads();
    let throttled = assert_status(
        app.verify_with(&legacy_secret, vec![]).await,
        Code::Unavailable,
        Some("KEY_ID_THROTTLED"),
    );
    use tonic_types::StatusExt;
    assert!(throttled.get_error_details().retry_info().is_some());
    assert_eq!(
        app.key_reads(),
        reads,
        "throttled ids skip the store and argon2"
    );
    // A second later the owner's try runs argon2: valid, and the proof gave the key its
    // check value, which refuses wrong secrets from then on.
    app.clock.advance(Duration::from_secs(1));
    assert!(app.verify(&legacy_secret).await.valid);
    let argon2 = app.argon2_checks();
    for wrong in wrong_secrets(&legacy_secret, 5) {
        let r = app
            .verify_with(&wrong, vec![])
            .await
            .expect("never throttled");
        assert_eq!(error_code(&r), Some("authentication_error"));
    }
    assert_eq!(app.argon2_checks(), argon2, "its check value refuses them");
    app.stop().await;
}

async fn unknown_ids_are_remembered_briefly(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let unknown = PresentedKey::generate(Environment::Live).unwrap();
    let reads = app.key_reads();
    for _ in 0..10 {
        assert_eq!(
            error_code(&app.verify(unknown.expose()).await),
            Some("authentication_error")
        );
    }
    assert_eq!(
        app.key_reads(),
        reads + 1,
        "one store lookup, then the negative cache"
    );
    app.stop().await;
}

async fn a_saturated_hash_pool_answers_unavailable(backend: Backend) {
    // One slow worker, nobody may wait, no cache: concurrent cold Verify calls overflow.
    let mut options = slow_and_uncached();
    options.hash_workers = 1;
    options.hash_queue = 0;
    assert_a_cold_rush_is_refused(backend, options, None).await;
}

async fn last_use_is_recorded_and_flushed_at_shutdown(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;
    assert!(app.get(&key.id).await.unwrap().last_used_time.is_none());
    app.clock.advance(Duration::from_secs(10));
    assert!(app.verify(&secret).await.valid);
    let used_at = app.authority.now().as_micros() / 1_000_000;
    let shown = app
        .get(&key.id)
        .await
        .unwrap()
        .last_used_time
        .expect("GetKey shows the pending use");
    assert_eq!(shown.seconds, used_at);

    // Stopping writes the pending use; a new server on the same store reads it back.
    let db = app.stop().await;
    let app = spawn_on(db, Options::default()).await;
    let stored = app
        .get(&key.id)
        .await
        .unwrap()
        .last_used_time
        .expect("flushed at shutdown");
    assert_eq!(stored.seconds, used_at);
    assert!(app.verify(&secret).await.valid, "keys survive a restart");
    app.stop().await;
}
