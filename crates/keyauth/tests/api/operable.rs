//! Operable in production: TLS and mTLS, the verifier token, Prometheus metrics, and the limits
//! (request size, header list, request timeout) refusing one call without disturbing others.

use std::time::Duration;

use keyauth_proto as pb;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};

use crate::helpers::pki::{Pki, sqlite_url};
use crate::helpers::process::{ServerProcess, keyauth, log_lines, wait_for_line};
use crate::helpers::{Backend, assert_status, error_code, issue_over, op, spawn};

/// One Verify of a garbage key over TLS: Ok(code of the denial) or the error, whether it
/// happened at connect or at the call.
pub(crate) async fn verify_over_tls(addr: &str, tls: ClientTlsConfig) -> Result<String, String> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("tls config: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let answer = KeyAuthorityServiceClient::new(channel)
        .verify(pb::VerifyRequest {
            key: "sk_test_not_a_key".into(),
            required_permissions: vec![],
        })
        .await
        .map_err(|e| format!("call: {e:?}"))?
        .into_inner();
    Ok(error_code(&answer).unwrap_or("valid").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_callers_that_trust_the_ca() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.serve(&dir, false);
    assert_eq!(
        verify_over_tls(&server.addr, pki.client_tls(None)).await,
        Ok("authentication_error".to_owned())
    );
    // A plaintext client gets nothing from a TLS server.
    let plaintext = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .timeout(Duration::from_secs(5));
    let refused = match plaintext.connect().await {
        Err(_) => true,
        Ok(channel) => KeyAuthorityServiceClient::new(channel)
            .verify(pb::VerifyRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext call to a TLS server must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.serve(&dir, true);
    let without = verify_over_tls(&server.addr, pki.client_tls(None)).await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let stranger = verify_over_tls(&server.addr, pki.client_tls(Some(&pki.stranger))).await;
    assert!(stranger.is_err(), "certificate of another CA: {stranger:?}");
    assert_eq!(
        verify_over_tls(&server.addr, pki.client_tls(Some(&pki.client))).await,
        Ok("authentication_error".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_public_address_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = keyauth()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--http-listen",
            "0.0.0.0:0",
            "--database",
            &sqlite_url(&dir),
        ])
        .env("RUST_LOG", "keyauth=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = log_lines(&mut child);
    // Each listener says so, by name (F3: the console sends the operator token on every call).
    // (In either order: the two listeners start side by side.)
    let (mut grpc, mut http) = (None, None);
    while grpc.is_none() || http.is_none() {
        let line = wait_for_line(&lines, "serving plaintext on a non-loopback");
        if line.contains("gRPC listener") {
            grpc = Some(line);
        } else if line.contains("HTTP listener") {
            http = Some(line);
        }
    }
    assert!(grpc.unwrap().contains("--tls-cert"));
    assert!(http.unwrap().contains("operator's token"));
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// The verifier token.

const VERIFIER_TOKEN: &str = "verifier-token-used-by-the-tests";

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_requires_the_verifier_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&sqlite_url(&dir), &["--verifier-token", VERIFIER_TOKEN]);
    let mut client = server.client().await;
    let issued = issue_over(&mut client, "app_1", pb::Environment::Test).await;
    let verify = || pb::VerifyRequest {
        key: issued.secret.clone(),
        required_permissions: vec![],
    };
    let check = || pb::CheckPermissionRequest {
        key: issued.secret.clone(),
        resource: "patients".into(),
        action: "read".into(),
    };

    let reason = Some("VERIFIER_UNAUTHENTICATED");
    assert_status(client.verify(verify()).await, Code::Unauthenticated, reason);
    assert_status(
        client.verify(bearer(verify(), "not-the-token")).await,
        Code::Unauthenticated,
        reason,
    );
    // The operator token is the principal `admin`, which holds every role (DESIGN §7),
    // keys.verify included.
    assert!(
        client
            .verify(op(verify()))
            .await
            .unwrap()
            .into_inner()
            .valid
    );
    assert_status(
        client.check_permission(check()).await,
        Code::Unauthenticated,
        reason,
    );

    let answer = client
        .verify(bearer(verify(), VERIFIER_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.valid);
    let answer = client
        .check_permission(bearer(check(), VERIFIER_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed);
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// A port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET /metrics over plain HTTP/1.1; returns the body.
pub(crate) async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the metrics listener answers")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample of `name` whose labels include every one of `labels`
/// (`key="value"`), if there is one.
pub(crate) fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            (series == name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|label| series.contains(label))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_rpc_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start(&sqlite_url(&dir), &["--metrics-listen", &metrics]);
    let mut client = server.client().await;
    let issued = issue_over(&mut client, "app_1", pb::Environment::Test).await;
    let verify = |key: &str| pb::VerifyRequest {
        key: key.into(),
        required_permissions: vec![],
    };
    let verifier = client.clone();
    let verified = async |key: &str| {
        let answer = verifier.clone().verify(verify(key)).await;
        answer.unwrap().into_inner()
    };
    for _ in 0..2 {
        assert!(verified(&issued.secret).await.valid);
    }
    verified("garbage").await;
    assert_status(
        client
            .get_key(op(pb::GetKeyRequest {
                key_id: "key_AAAAAAAAAAAA".into(),
            }))
            .await,
        Code::NotFound,
        None,
    );

    let text = scrape(&metrics).await;
    let calls = "keyauth_calls_total";
    let valid = [r#"rpc="Verify""#, r#"outcome="valid""#];
    assert_eq!(sample(&text, calls, &valid), Some(2.0), "{text}");
    assert_eq!(
        sample(
            &text,
            calls,
            &[r#"rpc="Verify""#, r#"outcome="authentication_error""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, calls, &[r#"rpc="IssueKey""#, r#"outcome="ok""#]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, calls, &[r#"rpc="GetKey""#, r#"outcome="NOT_FOUND""#]),
        Some(1.0),
        "{text}"
    );
    let buckets = "keyauth_call_duration_seconds_bucket";
    assert_eq!(
        sample(&text, buckets, &[r#"rpc="Verify""#, r#"le="+Inf""#]),
        Some(3.0),
        "{text}"
    );
    // The first Verify proved the key (a miss), the second was answered from memory.
    let lookups = "keyauth_cache_lookups_total";
    assert!(
        sample(&text, lookups, &[r#"result="hit""#]) >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, lookups, &[r#"result="miss""#]) >= Some(1.0),
        "{text}"
    );
    for gauge in [
        "keyauth_hash_queue_waiting",
        "keyauth_hash_workers_busy",
        "keyauth_store_pool_connections",
        "keyauth_store_pool_idle",
        "keyauth_cache_entries",
    ] {
        assert!(sample(&text, gauge, &[]).is_some(), "{gauge}: {text}");
    }

    // The counter moves.
    assert!(verified(&issued.secret).await.valid);
    let text = scrape(&metrics).await;
    assert_eq!(sample(&text, calls, &valid), Some(3.0), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Limits.

async fn garbage_verify_answers(client: &mut KeyAuthorityServiceClient<Channel>) {
    let answer = client
        .verify(pb::VerifyRequest {
            key: "garbage".into(),
            required_permissions: vec![],
        })
        .await
        .expect("a normal call on the same channel still works")
        .into_inner();
    assert_eq!(error_code(&answer), Some("authentication_error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_alone() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let mut client = app.client.clone();
    let limit = keyauth_server::limits::Limits::DEFAULT_MAX_REQUEST_BYTES;
    let refused = client
        .verify(pb::VerifyRequest {
            key: "x".repeat(limit + 1),
            required_permissions: vec![],
        })
        .await;
    assert_status(refused, Code::ResourceExhausted, Some("REQUEST_TOO_LARGE"));
    garbage_verify_answers(&mut client).await;

    // Metadata past the header list limit: refused, the connection survives.
    let mut request = Request::new(pb::VerifyRequest::default());
    let padding =
        "p".repeat(keyauth_server::limits::Limits::DEFAULT_MAX_HEADER_LIST_BYTES as usize);
    request
        .metadata_mut()
        .insert("x-padding", padding.parse().unwrap());
    let refused = client.verify(request).await;
    assert_status(refused, Code::ResourceExhausted, Some("HEADERS_TOO_LARGE"));
    garbage_verify_answers(&mut client).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_request_timeout_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    // Issue a key whose hash is slow to check: 64 MiB, 24 passes, hundreds of milliseconds.
    let slow = ["--argon2-m-cost", "65536", "--argon2-t-cost", "24"];
    let secret = {
        let server = ServerProcess::start(&db, &slow);
        let mut client = server.client().await;
        let issued = issue_over(&mut client, "app_1", pb::Environment::Test).await;
        issued.secret
    };
    // A timeout well below one check of that hash (and well above a cheap call); no cache,
    // so every Verify checks the hash.
    let server = ServerProcess::start(
        &db,
        &["--request-timeout", "50ms", "--cache-max-bytes", "0"],
    );
    let mut client = server.client().await;
    let mut verifier = client.clone();
    let slow_call = tokio::spawn(async move {
        verifier
            .verify(pb::VerifyRequest {
                key: secret,
                required_permissions: vec![],
            })
            .await
    });
    garbage_verify_answers(&mut client).await;
    assert_status(
        slow_call.await.unwrap(),
        Code::DeadlineExceeded,
        Some("REQUEST_TIMEOUT"),
    );
    garbage_verify_answers(&mut client).await;
}
