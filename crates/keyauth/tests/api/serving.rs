//! Health, reflection, request ids, and secrets at rest.

use keyauth_proto as pb;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    health_reports_serving_for_both_names,
    reflection_lists_the_service_in_v1_and_v1alpha,
    request_ids_round_trip,
    no_secret_reaches_logs_or_the_store,
);

async fn health_reports_serving_for_both_names(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "keyauth.v1.KeyAuthorityService"] {
        // The first probe runs right after start; wait for it without sleeping blindly.
        let mut watch = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        loop {
            let status = watch.next().await.unwrap().unwrap().status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
        }
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    app.stop().await;
}

async fn reflection_lists_the_service_in_v1_and_v1alpha(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    use tonic_reflection::pb::{v1, v1alpha};
    let mut v1_client =
        v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v1_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["keyauth.v1.KeyAuthorityService", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{names:?}");
    }

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "keyauth.v1.KeyAuthorityService".into(),
            ),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("no descriptor")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    app.stop().await;
}

async fn request_ids_round_trip(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut request = tonic::Request::new(pb::VerifyRequest {
        key: "nonsense".into(),
        required_permissions: vec![],
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-12345-abc".parse().unwrap());
    let response = app.client.clone().verify(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "req-12345-abc"
    );
    // One is made when the caller sends none, and errors carry it too.
    let response = app
        .client
        .clone()
        .verify(pb::VerifyRequest {
            key: "x".into(),
            required_permissions: vec![],
        })
        .await
        .unwrap();
    assert!(!response.metadata().get("x-request-id").unwrap().is_empty());
    let mut bad = tonic::Request::new(pb::GetKeyRequest {
        key_id: "bad".into(),
    });
    bad.metadata_mut()
        .insert("x-request-id", "req-for-error".parse().unwrap());
    let status = app.client.clone().get_key(bad).await.unwrap_err();
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        "req-for-error"
    );
    let logs = String::from_utf8_lossy(&captured_logs()).into_owned();
    assert!(
        logs.contains("req-12345-abc"),
        "the request id is in the call's log lines"
    );
    app.stop().await;
}

async fn no_secret_reaches_logs_or_the_store(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    // Exercise every path that handles a full key: issue, verify (cold, warm, wrong, revoked),
    // roll, a Debug print of the wire messages, and failing calls.
    let (key, secret) = app.issue_test_key().await;
    assert!(app.verify(&secret).await.valid);
    assert!(app.verify(&format!("Bearer {secret}")).await.valid);
    let rolled = app.roll(&key.id, None).await.unwrap();
    assert!(
        !format!("{rolled:?}").contains(&rolled.secret[20..52]),
        "Debug redacts RollKeyResponse"
    );
    let request = pb::VerifyRequest {
        key: secret.clone(),
        required_permissions: vec![],
    };
    assert!(
        !format!("{request:?}").contains(&secret[20..52]),
        "Debug redacts VerifyRequest"
    );
    tracing::info!(?request, ?rolled, "a careless log line of wire messages");
    let _ = app.check(&secret, "billing", "read").await;
    app.revoke(&rolled.key.unwrap().id).await.unwrap();
    let _ = app.verify(&rolled.secret).await;
    // The leak checks run inside stop(): logs of the whole run so far, and every row.
    let db = app.stop().await;
    assert_no_secret_in("the store after shutdown", &db.dump().await);
}
