//! Key management a portal can be built on: UpdateKey (AIP-134), GetCatalog, ListApplications,
//! ListKeyEvents over the whole authority, rolls that keep a key's lifetime, seal-key rotation.

use std::time::Duration;

use keyauth_core::catalog::Catalog;
use keyauth_core::sealing::SealKey;
use keyauth_proto as pb;
use tonic::{Code, Request};

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    update_changes_each_path,
    update_refuses_what_it_cannot_do,
    a_removed_permission_is_refused_at_once,
    an_update_is_idempotent_and_audited,
    the_catalog_in_force_is_served,
    applications_are_counted,
    events_of_the_whole_authority,
    a_rolled_key_keeps_its_lifetime,
    a_replay_opens_after_a_seal_key_rotation,
    watchers_hear_of_an_update,
);

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// `secs` seconds from the test clock's now, as a wire timestamp.
fn at(app: &TestApp, secs: i64) -> prost_types::Timestamp {
    let micros = app.authority.now().as_micros() + secs * 1_000_000;
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

async fn update(
    app: &TestApp,
    key: pb::ApiKey,
    paths: &[&str],
) -> Result<pb::ApiKey, tonic::Status> {
    Ok(app
        .client
        .clone()
        .update_key(op(pb::UpdateKeyRequest {
            key: Some(key),
            update_mask: mask(paths),
        }))
        .await?
        .into_inner()
        .key
        .unwrap())
}

/// One field of a key, for an UpdateKey of it alone.
enum Only {
    ExpireTime(Option<prost_types::Timestamp>),
    Permissions(Vec<pb::Permission>),
}

/// UpdateKey of `id`: this one field, and the mask naming it.
async fn update_only(app: &TestApp, id: &str, field: Only) -> Result<pb::ApiKey, tonic::Status> {
    let mut key = pb::ApiKey {
        id: id.into(),
        ..Default::default()
    };
    let path = match field {
        Only::ExpireTime(expire_time) => {
            key.expire_time = expire_time;
            "expire_time"
        }
        Only::Permissions(permissions) => {
            key.permissions = permissions;
            "permissions"
        }
    };
    update(app, key, &[path]).await
}

async fn events(app: &TestApp, request: pb::ListKeyEventsRequest) -> Vec<pb::KeyEvent> {
    app.client
        .clone()
        .list_key_events(op(request))
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn update_changes_each_path(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;

    // name: only the named field changes, whatever else the message holds.
    let renamed = update(
        &app,
        pb::ApiKey {
            id: key.id.clone(),
            name: "renamed".into(),
            application_id: "ignored".into(),
            metadata: [("ignored".to_string(), "x".to_string())].into(),
            ..Default::default()
        },
        &["name"],
    )
    .await
    .unwrap();
    assert_eq!(renamed.name, "renamed");
    assert_eq!(renamed.application_id, key.application_id);
    assert!(renamed.metadata.is_empty());
    assert_eq!(renamed.redacted, key.redacted);

    // metadata: the whole map is replaced.
    let tagged = update(
        &app,
        pb::ApiKey {
            id: key.id.clone(),
            metadata: [("team".to_string(), "portal".to_string())].into(),
            ..Default::default()
        },
        &["metadata"],
    )
    .await
    .unwrap();
    assert_eq!(
        tagged.metadata.get("team").map(String::as_str),
        Some("portal")
    );
    assert_eq!(tagged.name, "renamed");

    // permissions: a non-empty set restricts a standard key, an empty set makes it standard.
    let read_only = vec![permission("patients", &["read"])];
    let restricted = update_only(&app, &key.id, Only::Permissions(read_only))
        .await
        .unwrap();
    assert!(restricted.restricted);
    assert_eq!(
        restricted.permissions,
        vec![permission("patients", &["read"])]
    );
    assert!(
        !app.check(&secret, "patients", "write")
            .await
            .unwrap()
            .allowed
    );
    let standard_again = update_only(&app, &key.id, Only::Permissions(vec![]))
        .await
        .unwrap();
    assert!(!standard_again.restricted && standard_again.permissions.is_empty());
    assert!(
        app.check(&secret, "patients", "write")
            .await
            .unwrap()
            .allowed
    );

    // expire_time: set, move, clear.
    let expiring = update_only(&app, &key.id, Only::ExpireTime(Some(at(&app, 60))))
        .await
        .unwrap();
    assert_eq!(expiring.expire_time, Some(at(&app, 60)));
    let moved = update_only(&app, &key.id, Only::ExpireTime(Some(at(&app, 3600))))
        .await
        .unwrap();
    assert_eq!(moved.expire_time, Some(at(&app, 3600)));
    app.clock.advance(Duration::from_secs(120));
    assert!(app.verify(&secret).await.valid, "the moved expiry holds");
    let cleared = update_only(&app, &key.id, Only::ExpireTime(None))
        .await
        .unwrap();
    assert_eq!(cleared.expire_time, None);
    app.clock.advance(Duration::from_secs(7200));
    assert!(app.verify(&secret).await.valid);

    // Several paths at once.
    let both = update(
        &app,
        pb::ApiKey {
            id: key.id.clone(),
            name: "both".into(),
            permissions: vec![permission("encounters", &["read", "write"])],
            ..Default::default()
        },
        &["name", "permissions"],
    )
    .await
    .unwrap();
    assert_eq!(both.name, "both");
    assert!(both.restricted);
    let stored = app.get(&key.id).await.unwrap();
    assert!(stored.last_used_time.is_some(), "verified above");
    assert_eq!(
        pb::ApiKey {
            last_used_time: None,
            ..stored
        },
        both
    );
    app.stop().await;
}

async fn update_refuses_what_it_cannot_do(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, _) = app.issue_test_key().await;
    let id_only = || pb::ApiKey {
        id: key.id.clone(),
        name: "fine".into(),
        ..Default::default()
    };
    let empty = update(&app, id_only(), &[]).await;
    let status = assert_status(empty, Code::InvalidArgument, None);
    assert_eq!(violated_fields(&status), ["update_mask"]);
    for path in [
        "id",
        "environment",
        "application_id",
        "create_time",
        "revoke_time",
        "redacted",
        "state",
        "nonsense",
        "*",
    ] {
        let status = assert_status(
            update(&app, id_only(), &["name", path]).await,
            Code::InvalidArgument,
            None,
        );
        assert_eq!(violated_fields(&status), ["update_mask"], "{path}");
        if path != "*" {
            assert!(status.message().contains(path), "{path}: {status:?}");
        }
    }
    // Values are checked as in IssueKey.
    let bad_name = pb::ApiKey {
        id: key.id.clone(),
        ..Default::default()
    };
    let status = assert_status(
        update(&app, bad_name, &["name"]).await,
        Code::InvalidArgument,
        None,
    );
    assert_eq!(violated_fields(&status), ["key.name"]);
    let outside_catalog = vec![permission("spaceships", &["fly"])];
    let status = assert_status(
        update_only(&app, &key.id, Only::Permissions(outside_catalog)).await,
        Code::InvalidArgument,
        None,
    );
    assert!(
        violated_fields(&status)
            .iter()
            .all(|f| f.starts_with("key.permissions")),
        "{status:?}"
    );
    let status = assert_status(
        update_only(&app, &key.id, Only::ExpireTime(Some(at(&app, -1)))).await,
        Code::InvalidArgument,
        None,
    );
    assert_eq!(violated_fields(&status), ["key.expire_time"]);
    let status = assert_status(
        app.client
            .clone()
            .update_key(op(pb::UpdateKeyRequest {
                key: None,
                update_mask: mask(&["name"]),
            }))
            .await,
        Code::InvalidArgument,
        None,
    );
    assert_eq!(violated_fields(&status), ["key"]);
    let bad_id = pb::ApiKey {
        id: "sk_test_oops".into(),
        name: "x".into(),
        ..Default::default()
    };
    assert_status(
        update(&app, bad_id, &["name"]).await,
        Code::InvalidArgument,
        None,
    );
    let unknown = pb::ApiKey {
        id: "key_AAAAAAAAAAAA".into(),
        name: "x".into(),
        ..Default::default()
    };
    assert_status(update(&app, unknown, &["name"]).await, Code::NotFound, None);

    // A rolled key's expiry is its grace period.
    let rolled = app.roll(&key.id, None).await.unwrap();
    let status = assert_status(
        update_only(&app, &key.id, Only::ExpireTime(None)).await,
        Code::FailedPrecondition,
        Some("KEY_ALREADY_ROLLED"),
    );
    assert!(status.message().contains(&rolled.key.unwrap().id));
    // …its name may still change.
    update(&app, id_only(), &["name"]).await.unwrap();

    // A revoked key cannot be changed, nor made valid again.
    app.revoke(&key.id).await.unwrap();
    for paths in [&["name"][..], &["expire_time"], &["permissions"]] {
        assert_status(
            update(&app, id_only(), paths).await,
            Code::FailedPrecondition,
            Some("KEY_REVOKED"),
        );
    }
    let after = app.get(&key.id).await.unwrap();
    assert_eq!(after.state, pb::KeyState::Revoked as i32);
    assert_eq!(after.name, "fine");
    app.stop().await;
}

async fn a_removed_permission_is_refused_at_once(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app
        .issue(pb::IssueKeyRequest {
            permissions: vec![permission("patients", &["read", "write"])],
            ..standard("app_1", pb::Environment::Test)
        })
        .await
        .unwrap();
    // Proven and cached.
    assert!(
        app.check(&secret, "patients", "write")
            .await
            .unwrap()
            .allowed
    );
    let read_only = vec![permission("patients", &["read"])];
    update_only(&app, &key.id, Only::Permissions(read_only))
        .await
        .unwrap();
    let denied = app.check(&secret, "patients", "write").await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.error.unwrap().code, "insufficient_permissions");
    assert!(
        app.check(&secret, "patients", "read")
            .await
            .unwrap()
            .allowed
    );
    app.stop().await;
}

async fn an_update_is_idempotent_and_audited(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, _) = app.issue_test_key().await;
    let request = pb::UpdateKeyRequest {
        key: Some(pb::ApiKey {
            id: key.id.clone(),
            name: "once".into(),
            metadata: [("a".to_string(), "1".to_string())].into(),
            ..Default::default()
        }),
        update_mask: mask(&["name", "metadata"]),
    };
    let mut client = app.client.clone();
    let first = client
        .update_key(with_key(request.clone(), "update-1"))
        .await
        .unwrap()
        .into_inner();
    // Something else changes the key meanwhile; the retry still answers what the first call did.
    update(
        &app,
        pb::ApiKey {
            id: key.id.clone(),
            name: "later".into(),
            ..Default::default()
        },
        &["name"],
    )
    .await
    .unwrap();
    let again = client
        .update_key(with_key(request.clone(), "update-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(app.get(&key.id).await.unwrap().name, "later", "ran once");
    let mut other = request.clone();
    other.update_mask = mask(&["name"]);
    assert_status(
        client.update_key(with_key(other, "update-1")).await,
        Code::InvalidArgument,
        None,
    );

    let trail = events(
        &app,
        pb::ListKeyEventsRequest {
            key_id: key.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let updated: Vec<_> = trail
        .iter()
        .filter(|e| e.r#type == pb::KeyEventType::Updated as i32)
        .collect();
    assert_eq!(updated.len(), 2, "{trail:?}");
    assert_eq!(updated[0].changed_paths, ["name"]);
    assert_eq!(updated[1].changed_paths, ["metadata", "name"]);
    assert_eq!(updated[1].application_id, key.application_id);
    assert!(updated[1].operator_id.starts_with("op_"));
    app.stop().await;
}

async fn the_catalog_in_force_is_served(backend: Backend) {
    let catalog = Catalog::from_toml(
        "[resources]\nspaceships = [\"launch\", \"fly\", \"dock\"]\ncrew = [\"read\"]\n",
    )
    .unwrap();
    let Some(app) = spawn_with(
        backend,
        Options {
            catalog,
            verifier_token: Some("verifier-secret-token-of-the-portal-tests".into()),
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let expected = pb::GetCatalogResponse {
        resources: vec![
            pb::CatalogResource {
                name: "crew".into(),
                actions: vec!["read".into()],
            },
            pb::CatalogResource {
                name: "spaceships".into(),
                actions: vec!["dock".into(), "fly".into(), "launch".into()],
            },
        ],
    };
    let mut client = app.client.clone();
    // The operator token…
    let by_operator = client
        .get_catalog(op(pb::GetCatalogRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_operator, expected);
    // …or the verifier token.
    let mut request = Request::new(pb::GetCatalogRequest {});
    request.metadata_mut().insert(
        "authorization",
        "Bearer verifier-secret-token-of-the-portal-tests"
            .parse()
            .unwrap(),
    );
    assert_eq!(
        client.get_catalog(request).await.unwrap().into_inner(),
        expected
    );
    // Neither: refused.
    assert_status(
        client.get_catalog(pb::GetCatalogRequest {}).await,
        Code::Unauthenticated,
        None,
    );
    let mut wrong = Request::new(pb::GetCatalogRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_status(client.get_catalog(wrong).await, Code::Unauthenticated, None);
    app.stop().await;

    // Without a verifier token, anyone may read it (as anyone may Verify).
    let Some(open) = spawn(backend).await else {
        return;
    };
    let built_in = open
        .client
        .clone()
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    let patients = built_in
        .resources
        .iter()
        .find(|r| r.name == "patients")
        .unwrap();
    assert_eq!(patients.actions, ["delete", "read", "write"]);
    open.stop().await;
}

fn counts(active: u64, expired: u64, revoked: u64) -> Option<pb::KeyCounts> {
    Some(pb::KeyCounts {
        active,
        expired,
        revoked,
    })
}

async fn applications_are_counted(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let list = |size: i32, token: String| {
        let mut client = app.client.clone();
        async move {
            client
                .list_applications(op(pb::ListApplicationsRequest {
                    page_size: size,
                    page_token: token,
                }))
                .await
                .map(|r| r.into_inner())
        }
    };
    assert!(
        list(0, String::new())
            .await
            .unwrap()
            .applications
            .is_empty()
    );

    let (a1, _) = app
        .issue(standard("app_b", pb::Environment::Test))
        .await
        .unwrap();
    let (a2, _) = app
        .issue(standard("app_b", pb::Environment::Test))
        .await
        .unwrap();
    app.issue(standard("app_b", pb::Environment::Live))
        .await
        .unwrap();
    app.issue(standard("app_a", pb::Environment::Live))
        .await
        .unwrap();
    let (c, _) = app
        .issue(standard("app_c", pb::Environment::Test))
        .await
        .unwrap();

    let all = list(0, String::new()).await.unwrap();
    let ids: Vec<_> = all
        .applications
        .iter()
        .map(|a| a.application_id.as_str())
        .collect();
    assert_eq!(ids, ["app_a", "app_b", "app_c"]);
    assert!(all.next_page_token.is_empty());
    let b = &all.applications[1];
    assert_eq!(b.test, counts(2, 0, 0));
    assert_eq!(b.live, counts(1, 0, 0));
    assert_eq!(all.applications[0].test, counts(0, 0, 0));

    // A roll with no grace: the old key is expired at once, the new one active.
    app.roll(&a1.id, Some(Duration::ZERO)).await.unwrap();
    app.revoke(&a2.id).await.unwrap();
    app.revoke(&c.id).await.unwrap();
    let all = list(0, String::new()).await.unwrap();
    assert_eq!(all.applications[1].test, counts(1, 1, 1));
    assert_eq!(all.applications[1].live, counts(1, 0, 0));
    assert_eq!(all.applications[2].test, counts(0, 0, 1));

    // Paged, one at a time.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(1, token).await.unwrap();
        assert_eq!(page.applications.len(), 1);
        seen.push(page.applications[0].application_id.clone());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["app_a", "app_b", "app_c"]);
    assert_status(
        list(1, "garbage".into()).await,
        Code::InvalidArgument,
        Some("INVALID_PAGE_TOKEN"),
    );
    assert_status(list(-1, String::new()).await, Code::InvalidArgument, None);
    let mut anonymous = app.client.clone();
    assert_status(
        anonymous
            .list_applications(pb::ListApplicationsRequest::default())
            .await,
        Code::Unauthenticated,
        None,
    );
    app.stop().await;
}

async fn events_of_the_whole_authority(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let before_any = at(&app, 0);
    let (k1, _) = app
        .issue(standard("app_1", pb::Environment::Test))
        .await
        .unwrap();
    app.clock.advance(Duration::from_secs(10));
    let middle = at(&app, 0);
    let (k2, _) = app
        .issue(standard("app_2", pb::Environment::Live))
        .await
        .unwrap();
    app.revoke(&k1.id).await.unwrap();
    // A refused operator call: counted, then written by the housekeeping task (run here).
    let mut intruder = Request::new(pb::GetKeyRequest {
        key_id: k1.id.clone(),
    });
    intruder
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_status(
        app.client.clone().get_key(intruder).await,
        Code::Unauthenticated,
        None,
    );
    assert_eq!(app.authority.flush_auth_failures().await.unwrap(), 1);

    let everything = events(&app, pb::ListKeyEventsRequest::default()).await;
    let types: Vec<i32> = everything.iter().map(|e| e.r#type).collect();
    assert_eq!(
        types,
        [
            pb::KeyEventType::OperatorAuthFailed as i32,
            pb::KeyEventType::Revoked as i32,
            pb::KeyEventType::Issued as i32,
            pb::KeyEventType::Issued as i32,
        ],
        "every event, newest first: {everything:?}"
    );
    assert!(everything.windows(2).all(|w| w[0].sequence > w[1].sequence));
    assert_eq!(everything[2].key_id, k2.id);

    let failed = events(
        &app,
        pb::ListKeyEventsRequest {
            types: vec![pb::KeyEventType::OperatorAuthFailed.into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].count, 1);
    assert!(failed[0].key_id.is_empty());
    let changes = events(
        &app,
        pb::ListKeyEventsRequest {
            types: vec![
                pb::KeyEventType::Revoked.into(),
                pb::KeyEventType::OperatorAuthFailed.into(),
            ],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(changes.len(), 2);

    // A time range: [start, end).
    let early = events(
        &app,
        pb::ListKeyEventsRequest {
            start_time: Some(before_any),
            end_time: Some(middle),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].key_id, k1.id);
    let late = events(
        &app,
        pb::ListKeyEventsRequest {
            start_time: Some(middle),
            types: vec![pb::KeyEventType::Issued.into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].key_id, k2.id);

    // Paged, the token bound to the filters.
    let page = app
        .client
        .clone()
        .list_key_events(op(pb::ListKeyEventsRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events, everything[..1]);
    let next = app
        .client
        .clone()
        .list_key_events(op(pb::ListKeyEventsRequest {
            page_size: 3,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.events, everything[1..]);
    assert_status(
        app.client
            .clone()
            .list_key_events(op(pb::ListKeyEventsRequest {
                page_size: 1,
                page_token: page.next_page_token,
                types: vec![pb::KeyEventType::Issued.into()],
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
        Some("INVALID_PAGE_TOKEN"),
    );
    for bad in [
        pb::ListKeyEventsRequest {
            types: vec![0],
            ..Default::default()
        },
        pb::ListKeyEventsRequest {
            types: vec![99],
            ..Default::default()
        },
        pb::ListKeyEventsRequest {
            start_time: Some(middle),
            end_time: Some(before_any),
            ..Default::default()
        },
        pb::ListKeyEventsRequest {
            key_id: k1.id.clone(),
            application_id: "app_1".into(),
            ..Default::default()
        },
    ] {
        assert_status(
            app.client.clone().list_key_events(op(bad)).await,
            Code::InvalidArgument,
            None,
        );
    }
    app.stop().await;
}

async fn a_rolled_key_keeps_its_lifetime(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let expiry = at(&app, 30 * 24 * 3600);
    let (temporary, _) = app
        .issue(pb::IssueKeyRequest {
            expire_time: Some(expiry),
            ..standard("app_1", pb::Environment::Test)
        })
        .await
        .unwrap();
    let rolled = app.roll(&temporary.id, None).await.unwrap();
    assert_eq!(rolled.key.unwrap().expire_time, Some(expiry));

    // Without an expiry the new key has none either.
    let (forever, _) = app.issue_test_key().await;
    let rolled = app.roll(&forever.id, None).await.unwrap();
    assert_eq!(rolled.key.unwrap().expire_time, None);

    // An explicit expiry for the new key.
    let (other, _) = app.issue_test_key().await;
    let roll = |expire_time| {
        let mut client = app.client.clone();
        let key_id = other.id.clone();
        async move {
            client
                .roll_key(op(pb::RollKeyRequest {
                    key_id,
                    grace_period: None,
                    expire_time,
                }))
                .await
                .map(|r| r.into_inner())
        }
    };
    let status = assert_status(roll(Some(at(&app, -5))).await, Code::InvalidArgument, None);
    assert_eq!(violated_fields(&status), ["expire_time"]);
    let chosen = at(&app, 3600);
    let rolled = roll(Some(chosen)).await.unwrap();
    register_secret(&rolled.secret);
    assert_eq!(rolled.key.unwrap().expire_time, Some(chosen));
    app.stop().await;
}

async fn a_replay_opens_after_a_seal_key_rotation(backend: Backend) {
    let old = SealKey::generate_hex().unwrap();
    let Some(app) = spawn_with(
        backend,
        Options {
            seal_key: Some(old.clone()),
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let request = standard("rotation", pb::Environment::Live);
    let first = issue_once(&app, &request, "before-rotation").await.unwrap();
    register_secret(&first.secret);
    let db = app.stop().await;

    // Restarted with a new seal key and the old one as the previous key.
    let new = SealKey::generate_hex().unwrap();
    let rotated = spawn_on(
        db,
        Options {
            seal_key: Some(new.clone()),
            seal_key_previous: Some(old.clone()),
            ..Options::default()
        },
    )
    .await;
    let again = issue_once(&rotated, &request, "before-rotation")
        .await
        .unwrap();
    assert_eq!(again.secret, first.secret);
    assert_eq!(again.key, first.key);
    // Sealed now: under the new key.
    let fresh = issue_once(&rotated, &request, "after-rotation")
        .await
        .unwrap();
    register_secret(&fresh.secret);
    let db = rotated.stop().await;

    // Without the previous key, the old replay no longer opens; the new one does.
    let dropped = spawn_on(
        db,
        Options {
            seal_key: Some(new),
            ..Options::default()
        },
    )
    .await;
    let replay = issue_once(&dropped, &request, "after-rotation")
        .await
        .unwrap();
    assert_eq!(replay.secret, fresh.secret);
    assert!(
        issue_once(&dropped, &request, "before-rotation")
            .await
            .is_err()
    );
    dropped.stop().await;
}

/// IssueKey of `request` under the idempotency key `key`.
async fn issue_once(
    app: &TestApp,
    request: &pb::IssueKeyRequest,
    key: &str,
) -> Result<pb::IssueKeyResponse, tonic::Status> {
    let mut client = app.client.clone();
    Ok(client
        .issue_key(with_key(request.clone(), key))
        .await?
        .into_inner())
}

async fn watchers_hear_of_an_update(backend: Backend) {
    use keyauth_client::routes::Permission;
    use keyauth_client::{Client, Denial, Verifier, VerifierOptions};
    use keyauth_proto::watch_key_changes_response::Event;

    let Some(app) = spawn(backend).await else {
        return;
    };
    let client = Client::builder(format!("http://{}", app.addr))
        .connect_lazy()
        .unwrap();
    let mut stream = client.watch_key_changes(None).await.unwrap();
    let verifier = Verifier::new(
        client,
        VerifierOptions {
            staleness_limit: Duration::from_secs(4),
            ..VerifierOptions::default()
        },
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !verifier.is_fresh() {
        assert!(
            std::time::Instant::now() < deadline,
            "the verifier hears the stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (key, secret) = app
        .issue(pb::IssueKeyRequest {
            permissions: vec![permission("patients", &["read", "write"])],
            ..standard("app_watch", pb::Environment::Live)
        })
        .await
        .unwrap();
    let write = [Permission::new("patients", "write")];
    assert!(verifier.verify(&secret, &write).await.unwrap().is_valid());
    assert_eq!(verifier.cached(), 1);

    let read_only = vec![permission("patients", &["read"])];
    update_only(&app, &key.id, Only::Permissions(read_only))
        .await
        .unwrap();
    // The stream tells the change…
    let change = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a message within 5 s")
            .unwrap()
            .unwrap();
        if let Some(Event::Change(change)) = message.event
            && change.r#type == pb::KeyEventType::Updated as i32
        {
            break change;
        }
    };
    assert_eq!(change.key_id, key.id);
    // …and the in-process verifier drops the key: the removed permission is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = verifier.verify(&secret, &write).await.unwrap();
        if v.denial == Some(Denial::InsufficientPermissions) {
            break;
        }
        assert!(v.is_valid());
        assert!(
            std::time::Instant::now() < deadline,
            "the verifier still allows the removed permission"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(verifier);
    app.stop().await;
}
