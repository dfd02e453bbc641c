use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    issues_standard_keys,
    issues_restricted_keys,
    refuses_bad_issue_requests_and_writes_nothing,
    operator_rpcs_need_the_operator_token,
    without_an_operator_token_only_verify_works,
);

async fn issues_standard_keys(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    for (env, prefix) in [
        (pb::Environment::Test, "sk_test_"),
        (pb::Environment::Live, "sk_live_"),
    ] {
        let mut request = standard("app_1", env);
        request.metadata.insert("team".into(), "billing".into());
        let (key, secret) = app.issue(request).await.unwrap();
        assert!(secret.starts_with(prefix), "{secret}");
        assert_eq!(secret.len(), 58);
        assert!(key.id.starts_with("key_") && secret.contains(&key.id[4..]));
        assert_eq!(key.environment, env as i32);
        assert!(!key.restricted && key.permissions.is_empty());
        assert_eq!(key.state, pb::KeyState::Active as i32);
        assert_eq!(key.metadata["team"], "billing");
        assert!(key.redacted.starts_with(prefix) && key.redacted.contains("..."));
        assert!(key.redacted.ends_with(&secret[secret.len() - 4..]));
        assert!(key.create_time.is_some() && key.expire_time.is_none());

        let fetched = app.get(&key.id).await.unwrap();
        assert_eq!(
            fetched, key,
            "GetKey shows what IssueKey returned, without the secret"
        );
        let valid = app.verify(&secret).await;
        assert!(valid.valid && valid.http_status == 200 && valid.error.is_none());
        assert_eq!(valid.key.unwrap().id, key.id);
    }
    app.stop().await;
}

async fn issues_restricted_keys(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut request = standard("app_1", pb::Environment::Live);
    request.name = "Read-only Patient Access".into();
    request.permissions = vec![
        permission("patients", &["read"]),
        permission("encounters", &["read"]),
        permission("observations", &["read"]),
        permission("patients", &["read"]),
    ];
    let (key, secret) = app.issue(request).await.unwrap();
    assert!(key.restricted);
    assert_eq!(
        key.permissions,
        vec![
            permission("encounters", &["read"]),
            permission("observations", &["read"]),
            permission("patients", &["read"]),
        ]
    );
    assert!(
        app.check(&secret, "patients", "read")
            .await
            .unwrap()
            .allowed
    );
    let denied = app.check(&secret, "patients", "write").await.unwrap();
    assert!(!denied.allowed && denied.http_status == 403);
    assert_eq!(denied.error.unwrap().code, "insufficient_permissions");
    app.stop().await;
}

async fn refuses_bad_issue_requests_and_writes_nothing(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let past = prost_types::Timestamp {
        seconds: app.authority.now().as_micros() / 1_000_000 - 60,
        nanos: 0,
    };
    let many: std::collections::BTreeMap<String, String> = (0..51)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let cases: Vec<(pb::IssueKeyRequest, &[&str])> = vec![
        (
            pb::IssueKeyRequest {
                application_id: "".into(),
                ..standard("x", pb::Environment::Test)
            },
            &["application_id"],
        ),
        (
            pb::IssueKeyRequest {
                application_id: "white space".into(),
                ..standard("x", pb::Environment::Test)
            },
            &["application_id"],
        ),
        (
            pb::IssueKeyRequest {
                environment: 0,
                ..standard("a", pb::Environment::Test)
            },
            &["environment"],
        ),
        (
            pb::IssueKeyRequest {
                environment: 9,
                ..standard("a", pb::Environment::Test)
            },
            &["environment"],
        ),
        (
            pb::IssueKeyRequest {
                name: "".into(),
                ..standard("a", pb::Environment::Test)
            },
            &["name"],
        ),
        (
            pb::IssueKeyRequest {
                name: "n".repeat(201),
                ..standard("a", pb::Environment::Test)
            },
            &["name"],
        ),
        (
            pb::IssueKeyRequest {
                name: "tab\tname".into(),
                ..standard("a", pb::Environment::Test)
            },
            &["name"],
        ),
        (
            pb::IssueKeyRequest {
                permissions: vec![
                    permission("patients", &["read"]),
                    permission("billing", &["read"]),
                ],
                ..standard("a", pb::Environment::Test)
            },
            &["permissions[1].resource"],
        ),
        (
            pb::IssueKeyRequest {
                permissions: vec![permission("encounters", &["delete"])],
                ..standard("a", pb::Environment::Test)
            },
            &["permissions[0].actions[0]"],
        ),
        (
            pb::IssueKeyRequest {
                metadata: many,
                ..standard("a", pb::Environment::Test)
            },
            &["metadata"],
        ),
        (
            pb::IssueKeyRequest {
                metadata: [("k".repeat(41), "v".into())].into(),
                ..standard("a", pb::Environment::Test)
            },
            &[],
        ),
        (
            pb::IssueKeyRequest {
                expire_time: Some(past),
                ..standard("a", pb::Environment::Test)
            },
            &["expire_time"],
        ),
        (
            pb::IssueKeyRequest {
                expire_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -4,
                }),
                ..standard("a", pb::Environment::Test)
            },
            &["expire_time"],
        ),
        // Every problem is named at once.
        (
            pb::IssueKeyRequest {
                application_id: "".into(),
                environment: 0,
                name: "".into(),
                ..Default::default()
            },
            &["application_id", "environment", "name"],
        ),
    ];
    for (request, fields) in cases {
        let status = assert_status(
            app.issue(request.clone()).await,
            Code::InvalidArgument,
            Some("INVALID_ARGUMENT"),
        );
        let got = violated_fields(&status);
        if fields.is_empty() {
            assert_eq!(got.len(), 1, "{request:?}: {status:?}");
        } else {
            assert_eq!(got, fields, "{request:?}: {status:?}");
        }
        assert!(!status.message().is_empty());
    }
    // Nothing was written.
    for app_id in ["a", "x"] {
        let list = app
            .client
            .clone()
            .list_keys(op(pb::ListKeysRequest {
                application_id: app_id.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(list.keys.is_empty());
    }
    app.stop().await;
}

async fn operator_rpcs_need_the_operator_token(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;
    let mut client = app.client.clone();
    let unauth = assert_status(
        client.issue_key(standard("a", pb::Environment::Test)).await,
        Code::Unauthenticated,
        Some("OPERATOR_UNAUTHENTICATED"),
    );
    assert!(unauth.message().contains("authorization"));
    let mut wrong = tonic::Request::new(pb::GetKeyRequest {
        key_id: key.id.clone(),
    });
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-token".parse().unwrap());
    assert_status(client.get_key(wrong).await, Code::Unauthenticated, None);
    // An API key is not an operator token.
    let mut api_key = tonic::Request::new(pb::RevokeKeyRequest {
        key_id: key.id.clone(),
        reason: String::new(),
    });
    api_key
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    assert_status(
        client.revoke_key(api_key).await,
        Code::Unauthenticated,
        None,
    );
    assert_status(
        client.roll_key(roll_request(key.id.clone())).await,
        Code::Unauthenticated,
        None,
    );
    assert_status(
        client
            .list_keys(pb::ListKeysRequest {
                application_id: "app_1".into(),
                ..Default::default()
            })
            .await,
        Code::Unauthenticated,
        None,
    );
    // Verify and CheckPermission need no operator token; the key is untouched.
    assert!(app.verify(&secret).await.valid);
    assert!(app.check(&secret, "ai", "write").await.unwrap().allowed);
    app.stop().await;
}

async fn without_an_operator_token_only_verify_works(backend: Backend) {
    let options = Options {
        admin_token: None,
        ..Options::default()
    };
    let Some(app) = spawn_with(backend, options).await else {
        return;
    };
    let status = assert_status(
        app.issue_test_key_result().await,
        Code::Unauthenticated,
        None,
    );
    assert!(
        status.message().contains("KEYAUTH_ADMIN_TOKEN"),
        "{status:?}"
    );
    let garbage = app.verify("sk_test_nothing").await;
    assert_eq!(error_code(&garbage), Some("authentication_error"));
    app.stop().await;
}

impl TestApp {
    async fn issue_test_key_result(&self) -> Result<(pb::ApiKey, String), tonic::Status> {
        self.issue(standard("app_1", pb::Environment::Test)).await
    }
}
