//! Safe retries (idempotency keys on the operator RPCs) and the audit trail.

use std::time::Duration;

use keyauth_core::sealing::SealKey;
use keyauth_proto as pb;
use sqlx::Connection;
use tonic::{Code, Request};

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    a_retry_replays_the_identical_response,
    a_reused_key_with_another_request_is_refused,
    malformed_idempotency_keys_are_refused,
    without_a_seal_key_secret_replays_are_refused,
    concurrent_duplicates_execute_once,
    records_expire_and_are_purged,
    every_change_is_in_the_audit_trail,
    a_failed_audit_write_stops_the_change,
);

fn sealed() -> Options {
    Options {
        seal_key: Some(SealKey::generate_hex().unwrap()),
        ..Options::default()
    }
}

fn with_id<T>(mut request: Request<T>, id: &str) -> Request<T> {
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

async fn a_retry_replays_the_identical_response(backend: Backend) {
    let Some(app) = spawn_with(backend, sealed()).await else {
        return;
    };
    let mut client = app.client.clone();
    let request = pb::IssueKeyRequest {
        metadata: [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into(),
        ..standard("idem", pb::Environment::Live)
    };
    let first = client
        .issue_key(with_key(request.clone(), "issue-1"))
        .await
        .unwrap()
        .into_inner();
    register_secret(&first.secret);
    let again = client
        .issue_key(with_key(request.clone(), "issue-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.secret, first.secret,
        "the lost secret can be learnt again"
    );
    assert_eq!(again.key, first.key);
    assert!(app.verify(&again.secret).await.valid);

    let key_id = first.key.unwrap().id;
    let roll = roll_request(key_id.clone());
    let rolled = client
        .roll_key(with_key(roll.clone(), "roll-1"))
        .await
        .unwrap()
        .into_inner();
    register_secret(&rolled.secret);
    let rolled_again = client
        .roll_key(with_key(roll, "roll-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled_again.secret, rolled.secret);
    assert_eq!(rolled_again.key, rolled.key);
    assert_eq!(rolled_again.previous_key, rolled.previous_key);

    let revoke = pb::RevokeKeyRequest {
        key_id: key_id.clone(),
        reason: "retry".into(),
    };
    let revoked = client
        .revoke_key(with_key(revoke.clone(), "revoke-1"))
        .await
        .unwrap()
        .into_inner();
    app.clock.advance(Duration::from_secs(1));
    let revoked_again = client
        .revoke_key(with_key(revoke, "revoke-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked_again, revoked);

    let keys = client
        .list_keys(op(pb::ListKeysRequest {
            application_id: "idem".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(
        keys.len(),
        2,
        "one issue and one roll, whatever the retries"
    );
    app.stop().await;
}

async fn a_reused_key_with_another_request_is_refused(backend: Backend) {
    let Some(app) = spawn_with(backend, sealed()).await else {
        return;
    };
    let mut client = app.client.clone();
    let first = client
        .issue_key(with_key(standard("idem", pb::Environment::Test), "same"))
        .await
        .unwrap()
        .into_inner();
    register_secret(&first.secret);
    let other_body = client
        .issue_key(with_key(standard("idem", pb::Environment::Live), "same"))
        .await;
    let status = assert_status(
        other_body,
        Code::InvalidArgument,
        Some("idempotency_key_reused"),
    );
    assert_eq!(violated_fields(&status), ["idempotency-key"]);
    let other_method = client
        .revoke_key(with_key(
            pb::RevokeKeyRequest {
                key_id: first.key.unwrap().id,
                reason: String::new(),
            },
            "same",
        ))
        .await;
    assert_status(
        other_method,
        Code::InvalidArgument,
        Some("idempotency_key_reused"),
    );
    // Another operator token would have its own scope; the same key without the header is a
    // plain call.
    let plain = app
        .issue(standard("idem", pb::Environment::Test))
        .await
        .unwrap();
    assert_ne!(plain.1, first.secret);
    app.stop().await;
}

async fn malformed_idempotency_keys_are_refused(backend: Backend) {
    let Some(app) = spawn_with(backend, sealed()).await else {
        return;
    };
    let mut client = app.client.clone();
    for bad in [String::new(), "k".repeat(256)] {
        let status = assert_status(
            client
                .issue_key(with_key(standard("idem", pb::Environment::Test), &bad))
                .await,
            Code::InvalidArgument,
            None,
        );
        assert_eq!(violated_fields(&status), ["idempotency-key"], "{bad:?}");
    }
    let ok = client
        .issue_key(with_key(
            standard("idem", pb::Environment::Test),
            &"k".repeat(255),
        ))
        .await
        .unwrap()
        .into_inner();
    register_secret(&ok.secret);
    app.stop().await;
}

async fn without_a_seal_key_secret_replays_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = app.client.clone();
    let status = assert_status(
        client
            .issue_key(with_key(standard("idem", pb::Environment::Test), "no-seal"))
            .await,
        Code::FailedPrecondition,
        Some("SEAL_KEY_MISSING"),
    );
    assert!(status.message().contains("KEYAUTH_SEAL_KEY"), "{status:?}");
    let (key, _) = app.issue_test_key().await;
    let roll = client
        .roll_key(with_key(roll_request(key.id.clone()), "no-seal-roll"))
        .await;
    assert_status(roll, Code::FailedPrecondition, Some("SEAL_KEY_MISSING"));
    assert_eq!(
        app.get(&key.id).await.unwrap().replaced_by_key_id,
        "",
        "nothing was rolled"
    );
    // Revoking carries no secret: idempotent without a seal key.
    let revoke = pb::RevokeKeyRequest {
        key_id: key.id.clone(),
        reason: String::new(),
    };
    let first = client
        .revoke_key(with_key(revoke.clone(), "no-seal-revoke"))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .revoke_key(with_key(revoke, "no-seal-revoke"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    app.stop().await;
}

async fn concurrent_duplicates_execute_once(backend: Backend) {
    let Some(app) = spawn_with(backend, sealed()).await else {
        return;
    };
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .issue_key(with_key(standard("dup", pb::Environment::Test), "together"))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => answers.push(r.into_inner()),
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert!(!answers.is_empty());
    for a in &answers {
        register_secret(&a.secret);
        assert_eq!(
            a.secret, answers[0].secret,
            "every answer is the one execution's"
        );
    }
    let keys = app
        .client
        .clone()
        .list_keys(op(pb::ListKeysRequest {
            application_id: "dup".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1, "executed once");
    app.stop().await;
}

async fn records_expire_and_are_purged(backend: Backend) {
    let options = Options {
        idempotency_ttl: Duration::from_secs(3600),
        ..sealed()
    };
    let Some(app) = spawn_with(backend, options).await else {
        return;
    };
    let mut client = app.client.clone();
    let request = standard("ttl", pb::Environment::Test);
    let first = client
        .issue_key(with_key(request.clone(), "ttl"))
        .await
        .unwrap()
        .into_inner();
    register_secret(&first.secret);
    let other = client
        .issue_key(with_key(request.clone(), "ttl-2"))
        .await
        .unwrap()
        .into_inner();
    register_secret(&other.secret);
    assert_eq!(
        app.authority.purge_idempotency().await.unwrap(),
        0,
        "nothing expired yet"
    );
    app.clock.advance(Duration::from_secs(3600));
    // An expired record is not replayed (even before it is purged).
    let later = client
        .issue_key(with_key(request, "ttl"))
        .await
        .unwrap()
        .into_inner();
    register_secret(&later.secret);
    assert_ne!(later.key.unwrap().id, first.key.unwrap().id);
    assert_eq!(
        app.authority.purge_idempotency().await.unwrap(),
        1,
        "ttl-2's record is purged"
    );
    app.stop().await;
}

async fn every_change_is_in_the_audit_trail(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = app.client.clone();
    let issued = client
        .issue_key(with_id(
            op(standard("audited", pb::Environment::Live)),
            "req-issue",
        ))
        .await
        .unwrap()
        .into_inner();
    register_secret(&issued.secret);
    let id = issued.key.unwrap().id;
    let rolled = client
        .roll_key(with_id(op(roll_request(id.clone())), "req-roll"))
        .await
        .unwrap()
        .into_inner();
    register_secret(&rolled.secret);
    let new_id = rolled.key.unwrap().id;
    client
        .revoke_key(with_id(
            op(pb::RevokeKeyRequest {
                key_id: new_id.clone(),
                reason: String::new(),
            }),
            "req-revoke",
        ))
        .await
        .unwrap();
    // A refused operator call is recorded too.
    let mut bad = Request::new(pb::GetKeyRequest { key_id: id.clone() });
    bad.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    bad.metadata_mut()
        .insert("x-request-id", "req-intruder".parse().unwrap());
    assert!(client.get_key(bad).await.is_err());

    let events = |filter: pb::ListKeyEventsRequest| {
        let mut client = app.client.clone();
        async move {
            client
                .list_key_events(op(filter))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let by_app = events(pb::ListKeyEventsRequest {
        application_id: "audited".into(),
        ..Default::default()
    })
    .await;
    let kinds: Vec<_> = by_app
        .events
        .iter()
        .map(|e| (e.r#type, e.request_id.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (pb::KeyEventType::Revoked as i32, "req-revoke"),
            (pb::KeyEventType::Rolled as i32, "req-roll"),
            (pb::KeyEventType::Issued as i32, "req-issue"),
        ],
        "newest first"
    );
    for e in &by_app.events {
        assert!(
            e.operator_id.starts_with("op_") && e.operator_id.len() == 15,
            "{e:?}"
        );
        assert!(e.peer.starts_with("127.0.0.1:"), "{e:?}");
        assert!(e.event_time.is_some() && e.sequence > 0);
    }
    assert_eq!(by_app.events[1].key_id, id);
    assert_eq!(by_app.events[1].related_key_id, new_id);

    // By key: the old key's issue and roll; the roll also shows under the new key.
    let by_key = events(pb::ListKeyEventsRequest {
        key_id: new_id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_key.events.len(), 2, "{by_key:?}");
    // Paging.
    let page = events(pb::ListKeyEventsRequest {
        application_id: "audited".into(),
        page_size: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(page.events.len(), 2);
    let rest = events(pb::ListKeyEventsRequest {
        application_id: "audited".into(),
        page_size: 2,
        page_token: page.next_page_token.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(rest.events.len(), 1);
    assert!(rest.next_page_token.is_empty());
    let wrong_filter = app
        .client
        .clone()
        .list_key_events(op(pb::ListKeyEventsRequest {
            key_id: id.clone(),
            page_token: page.next_page_token,
            ..Default::default()
        }))
        .await;
    assert_status(
        wrong_filter,
        Code::InvalidArgument,
        Some("INVALID_PAGE_TOKEN"),
    );
    // Neither filter: every event of the authority; both: refused.
    let neither = app
        .client
        .clone()
        .list_key_events(op(pb::ListKeyEventsRequest::default()))
        .await;
    assert!(!neither.unwrap().into_inner().events.is_empty());
    let both = app
        .client
        .clone()
        .list_key_events(op(pb::ListKeyEventsRequest {
            key_id: "key_AAAAAAAAAAAA".into(),
            application_id: "app".into(),
            ..Default::default()
        }))
        .await;
    assert_status(both, Code::InvalidArgument, None);

    // Written in aggregate by the housekeeping task (run here at once).
    assert_eq!(app.authority.flush_auth_failures().await.unwrap(), 1);
    let dump = String::from_utf8_lossy(&app.db.dump().await).into_owned();
    assert!(dump.contains("operator_auth_failed") && dump.contains("req-intruder"));
    assert!(!dump.contains(ADMIN_TOKEN), "no operator token at rest");
    assert!(!dump.contains("Bearer wrong") && !dump.contains("wrong\n"));
    app.stop().await;
}

async fn a_failed_audit_write_stops_the_change(backend: Backend) {
    let Some(app) = spawn_with(backend, sealed()).await else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;
    assert!(app.verify(&secret).await.valid);
    // The audit trail refuses every write.
    match &app.db {
        TestDb::Sqlite { .. } => {
            let mut conn = sqlx::SqliteConnection::connect(&app.db.url())
                .await
                .unwrap();
            sqlx::raw_sql(
                "CREATE TRIGGER audit_down BEFORE INSERT ON key_events \
                 BEGIN SELECT RAISE(ABORT, 'audit trail unavailable'); END;",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        }
        TestDb::Postgres { .. } => {
            let mut conn = sqlx::PgConnection::connect(&app.db.url()).await.unwrap();
            sqlx::raw_sql(
                "CREATE FUNCTION audit_down() RETURNS trigger AS $$ BEGIN \
                 RAISE EXCEPTION 'audit trail unavailable'; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER audit_down BEFORE INSERT ON key_events \
                 FOR EACH ROW EXECUTE FUNCTION audit_down();",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    assert_status(
        app.revoke(&key.id).await,
        Code::Unavailable,
        Some("AUDIT_UNAVAILABLE"),
    );
    assert_status(
        app.roll(&key.id, None).await,
        Code::Unavailable,
        Some("AUDIT_UNAVAILABLE"),
    );
    assert_status(
        app.issue(standard("app_1", pb::Environment::Test)).await,
        Code::Unavailable,
        Some("AUDIT_UNAVAILABLE"),
    );
    // With idempotency: neither the change nor its record was kept.
    let mut client = app.client.clone();
    assert_status(
        client
            .issue_key(with_key(standard("app_1", pb::Environment::Test), "audit"))
            .await,
        Code::Unavailable,
        None,
    );
    let unchanged = app.get(&key.id).await.unwrap();
    assert_eq!(unchanged.state, pb::KeyState::Active as i32);
    assert!(unchanged.replaced_by_key_id.is_empty() && unchanged.revoke_time.is_none());
    assert!(app.verify(&secret).await.valid, "the key still works");
    let keys = client
        .list_keys(op(pb::ListKeysRequest {
            application_id: "app_1".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1, "no key was issued");
    app.stop().await;
}
