//! Who is acting (DESIGN §7): named principals from a principals file, their roles on every
//! kind of RPC, their scope on keys and applications, GetPrincipal, and the actor the audit
//! trail records.

use keyauth_proto as pb;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    roles_admit_and_refuse_each_kind_of_rpc,
    scope_limits_keys_and_applications_whether_or_not_they_exist,
    get_principal_and_the_audit_actor_name_who_acted,
    a_scoped_report_of_leaked_keys_revokes_only_keys_in_scope,
    denials_are_written_in_aggregate_one_row_per_principal,
);

/// ReportExposedKeys by a principal limited to `app_lab_*` (test): a key in scope is revoked;
/// one of another application, or of the live environment, is left alone and answered UNKNOWN
/// (as a key not ours), its secret right or not.
async fn a_scoped_report_of_leaked_keys_revokes_only_keys_in_scope(backend: Backend) {
    let Some(app) = spawn_with_principals(backend).await else {
        return;
    };
    let (_, mine) = app
        .issue(standard("app_lab_7", pb::Environment::Test))
        .await
        .unwrap();
    let (_, live) = app
        .issue(standard("app_lab_7", pb::Environment::Live))
        .await
        .unwrap();
    let (_, other) = app
        .issue(standard("app_billing", pb::Environment::Test))
        .await
        .unwrap();
    let answer = app
        .client
        .clone()
        .report_exposed_keys(as_(
            LAB,
            pb::ReportExposedKeysRequest {
                keys: vec![mine.clone(), live.clone(), other.clone()],
                source: "lab-scanner".into(),
                url: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<i32> = answer.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            pb::ExposureOutcome::Revoked as i32,
            pb::ExposureOutcome::Unknown as i32,
            pb::ExposureOutcome::Unknown as i32,
        ]
    );
    assert!(answer.results[1].application_id.is_empty());
    assert_eq!(
        error_code(&app.verify(&mine).await),
        Some("api_key_revoked")
    );
    assert!(
        app.verify(&live).await.valid,
        "another environment: left alone"
    );
    assert!(
        app.verify(&other).await.valid,
        "another application: left alone"
    );
    app.stop().await;
}

const READER: &str = "reader-token-of-the-principals-tests-0001";
const LAB: &str = "lab-portal-token-of-the-principals-tests-02";
const AUDITOR: &str = "auditor-token-of-the-principals-tests-0003";

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn principals_file() -> String {
    format!(
        r#"
[[principal]]
name = "app-a-reader"
token_sha256 = "{}"
roles = ["keys.read"]
applications = ["app_a"]

[[principal]]
name = "lab-portal"
token_sha256 = "{}"
roles = ["keys.read", "keys.issue", "keys.revoke"]
applications = ["app_lab_*"]
environments = ["test"]

[[principal]]
name = "auditor"
token_sha256 = "{}"
roles = ["keys.read"]
"#,
        sha(READER),
        sha(LAB),
        sha(AUDITOR)
    )
}

async fn spawn_with_principals(backend: Backend) -> Option<TestApp> {
    spawn_with(
        backend,
        Options {
            principals: Some(principals_file()),
            ..Options::default()
        },
    )
    .await
}

fn as_<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn reason(status: &Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn denied(result: Result<impl std::fmt::Debug, Status>, why: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), why, "{status:?}");
}

async fn roles_admit_and_refuse_each_kind_of_rpc(backend: Backend) {
    let Some(app) = spawn_with_principals(backend).await else {
        return;
    };
    let (key, _) = app
        .issue(standard("app_a", pb::Environment::Test))
        .await
        .unwrap();
    let mut client = app.client.clone();
    // keys.read reads…
    let got = client
        .get_key(as_(
            READER,
            pb::GetKeyRequest {
                key_id: key.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(got.into_inner().key.unwrap().id, key.id);
    // …and may not issue, revoke or update: PERMISSION_DENIED naming the role.
    let status = client
        .issue_key(as_(READER, standard("app_a", pb::Environment::Test)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "PRINCIPAL_LACKS_ROLE");
    use tonic_types::StatusExt;
    assert_eq!(
        status.get_error_details().error_info().unwrap().metadata["role"],
        "keys.issue"
    );
    denied(
        client
            .revoke_key(as_(
                READER,
                pb::RevokeKeyRequest {
                    key_id: key.id.clone(),
                    reason: String::new(),
                },
            ))
            .await,
        "PRINCIPAL_LACKS_ROLE",
    );
    // An unknown token is not a principal: UNAUTHENTICATED.
    let status = client
        .list_keys(as_(
            "not-a-token-of-this-server-at-all-0000",
            pb::ListKeysRequest {
                application_id: "app_a".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // The admin token is the principal `admin`: everything.
    assert!(app.get(&key.id).await.is_ok());
    // Verify stays open: no credential is given keys.verify.
    let (_, secret) = app.issue_test_key().await;
    assert!(app.verify(&secret).await.valid);
    // No principal's token in any log line or table.
    let db = app.stop().await;
    let (logs, tables) = (captured_logs(), db.dump().await);
    for token in [READER, LAB, AUDITOR] {
        let found = |hay: &[u8]| hay.windows(token.len()).any(|w| w == token.as_bytes());
        assert!(
            !found(&logs) && !found(&tables),
            "a principal's token was written"
        );
    }
}

async fn scope_limits_keys_and_applications_whether_or_not_they_exist(backend: Backend) {
    let Some(app) = spawn_with_principals(backend).await else {
        return;
    };
    let (in_scope, _) = app
        .issue(standard("app_lab_7", pb::Environment::Test))
        .await
        .unwrap();
    let (live, _) = app
        .issue(standard("app_lab_7", pb::Environment::Live))
        .await
        .unwrap();
    let (other, _) = app
        .issue(standard("app_billing", pb::Environment::Test))
        .await
        .unwrap();
    let mut client = app.client.clone();
    let get = |id: &str| as_(LAB, pb::GetKeyRequest { key_id: id.into() });
    assert!(client.get_key(get(&in_scope.id)).await.is_ok());
    denied(
        client.get_key(get(&live.id)).await,
        "OUTSIDE_PRINCIPAL_SCOPE",
    );
    denied(
        client.get_key(get(&other.id)).await,
        "OUTSIDE_PRINCIPAL_SCOPE",
    );
    // An id no key has is outside a limited scope too: a limited principal learns nothing.
    denied(
        client.get_key(get("key_AAAAAAAAAAAA")).await,
        "OUTSIDE_PRINCIPAL_SCOPE",
    );
    // A principal whose scope is everything gets NOT_FOUND.
    let status = client
        .get_key(as_(
            AUDITOR,
            pb::GetKeyRequest {
                key_id: "key_AAAAAAAAAAAA".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Issue and revoke: in scope only.
    let issued = client
        .issue_key(as_(LAB, standard("app_lab_9", pb::Environment::Test)))
        .await
        .unwrap()
        .into_inner();
    register_secret(&issued.secret);
    denied(
        client
            .issue_key(as_(LAB, standard("app_lab_9", pb::Environment::Live)))
            .await,
        "OUTSIDE_PRINCIPAL_SCOPE",
    );
    denied(
        client
            .revoke_key(as_(
                LAB,
                pb::RevokeKeyRequest {
                    key_id: other.id.clone(),
                    reason: String::new(),
                },
            ))
            .await,
        "OUTSIDE_PRINCIPAL_SCOPE",
    );
    assert_eq!(
        app.get(&other.id).await.unwrap().state,
        pb::KeyState::Active as i32,
        "a refused revoke changed nothing"
    );
    // Listings: ListKeys of an application outside the scope is refused; one inside lists
    // only the environment the scope allows; ListApplications lists only what is in scope.
    denied(
        client
            .list_keys(as_(
                LAB,
                pb::ListKeysRequest {
                    application_id: "app_billing".into(),
                    ..Default::default()
                },
            ))
            .await,
        "OUTSIDE_PRINCIPAL_SCOPE",
    );
    let keys = client
        .list_keys(as_(
            LAB,
            pb::ListKeysRequest {
                application_id: "app_lab_7".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let ids: Vec<_> = keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, [in_scope.id.as_str()]);
    let apps = client
        .list_applications(as_(LAB, pb::ListApplicationsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .applications;
    let names: Vec<_> = apps.iter().map(|a| a.application_id.as_str()).collect();
    assert_eq!(names, ["app_lab_7", "app_lab_9"]);
    assert_eq!(
        apps[0].live.unwrap_or_default().active,
        0,
        "live is outside"
    );
    let all = client
        .list_applications(as_(AUDITOR, pb::ListApplicationsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert_eq!(all.len(), 3);
    app.stop().await;
}

async fn get_principal_and_the_audit_actor_name_who_acted(backend: Backend) {
    let Some(app) = spawn_with_principals(backend).await else {
        return;
    };
    let mut client = app.client.clone();
    let me = client
        .get_principal(as_(LAB, pb::GetPrincipalRequest {}))
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(me.name, "lab-portal");
    assert_eq!(me.roles, ["keys.read", "keys.issue", "keys.revoke"]);
    assert_eq!(me.applications, ["app_lab_*"]);
    assert_eq!(me.environments, [pb::Environment::Test as i32]);
    let admin = client
        .get_principal(op(pb::GetPrincipalRequest {}))
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(
        (admin.name.as_str(), admin.roles.as_slice()),
        ("admin", &["admin".to_owned()][..])
    );
    let status = client
        .get_principal(Request::new(pb::GetPrincipalRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let issued = client
        .issue_key(as_(LAB, standard("app_lab_1", pb::Environment::Test)))
        .await
        .unwrap()
        .into_inner();
    register_secret(&issued.secret);
    let id = issued.key.unwrap().id;
    client
        .revoke_key(op(pb::RevokeKeyRequest {
            key_id: id.clone(),
            reason: String::new(),
        }))
        .await
        .unwrap();
    let events = |actor: &str| pb::ListKeyEventsRequest {
        key_id: id.clone(),
        actor: actor.into(),
        ..Default::default()
    };
    let all = client
        .list_key_events(op(events("")))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actors: Vec<_> = all
        .iter()
        .map(|e| e.actor.as_ref().map(|a| a.name.as_str()).unwrap_or("-"))
        .collect();
    assert_eq!(actors, ["admin", "lab-portal"], "newest first");
    assert!(all.iter().all(|e| e.operator_id.starts_with("op_")));
    let by_lab = client
        .list_key_events(op(events("lab-portal")))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(by_lab.len(), 1);
    assert_eq!(by_lab[0].r#type, pb::KeyEventType::Issued as i32);
    app.stop().await;
}

/// Calls refused PERMISSION_DENIED (a missing role, a key outside the scope) write nothing
/// themselves; the housekeeping flush writes one `permission_denied` row per principal with the
/// count, naming the principal. Only `admin` sees them (they belong to no key), and they do
/// not count towards the limit of failed authentications.
async fn denials_are_written_in_aggregate_one_row_per_principal(backend: Backend) {
    let Some(app) = spawn_with_principals(backend).await else {
        return;
    };
    let (other, _) = app
        .issue(standard("app_b", pb::Environment::Test))
        .await
        .unwrap();
    let mut client = app.client.clone();
    let denied_types = || pb::ListKeyEventsRequest {
        types: vec![pb::KeyEventType::PermissionDenied.into()],
        ..Default::default()
    };
    for _ in 0..3 {
        denied(
            client
                .issue_key(as_(READER, standard("app_a", pb::Environment::Test)))
                .await,
            "PRINCIPAL_LACKS_ROLE",
        );
    }
    for _ in 0..2 {
        denied(
            client
                .get_key(as_(
                    READER,
                    pb::GetKeyRequest {
                        key_id: other.id.clone(),
                    },
                ))
                .await,
            "OUTSIDE_PRINCIPAL_SCOPE",
        );
    }
    denied(
        client
            .revoke_key(as_(
                LAB,
                pb::RevokeKeyRequest {
                    key_id: other.id.clone(),
                    reason: String::new(),
                },
            ))
            .await,
        "OUTSIDE_PRINCIPAL_SCOPE",
    );
    // Nothing written per call.
    let listed = |client: &mut pb::key_authority_service_client::KeyAuthorityServiceClient<_>| {
        let mut client = client.clone();
        async move {
            client
                .list_key_events(op(denied_types()))
                .await
                .unwrap()
                .into_inner()
                .events
        }
    };
    assert!(listed(&mut client).await.is_empty());
    assert_eq!(app.authority.flush_denials().await.unwrap(), 6);
    assert_eq!(app.authority.flush_denials().await.unwrap(), 0);
    let mut rows: Vec<(String, u64)> = listed(&mut client)
        .await
        .iter()
        .map(|e| {
            assert!(e.key_id.is_empty() && !e.request_id.is_empty(), "{e:?}");
            (e.actor.as_ref().unwrap().name.clone(), e.count)
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [("app-a-reader".to_owned(), 5), ("lab-portal".to_owned(), 1)]
    );
    // A scoped principal sees no event that belongs to no key.
    let seen = client
        .list_key_events(as_(READER, denied_types()))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(seen.is_empty(), "{seen:?}");
    // Denials are no guesses: far past --operator-failure-limit, READER still gets in.
    for _ in 0..30 {
        let _ = client
            .issue_key(as_(READER, standard("app_a", pb::Environment::Test)))
            .await;
    }
    assert!(
        client
            .list_keys(as_(
                READER,
                pb::ListKeysRequest {
                    application_id: "app_a".into(),
                    ..Default::default()
                },
            ))
            .await
            .is_ok()
    );
    app.stop().await;
}
