//! Verifying in the caller: the WatchKeyChanges stream, the in-process `Verifier` of
//! keyauth-client, and its tower layer in front of an axum app — all against the real server.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use keyauth_client::routes::Permission;
use keyauth_client::{Client, Denial, KeyAuthLayer, VerifiedKey, Verifier, VerifierOptions};
use keyauth_proto as pb;
use keyauth_proto::watch_key_changes_response::Event;
use tonic::Code;
use tower::ServiceExt;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    the_stream_tells_every_change_and_resumes_by_revision,
    the_verifier_answers_from_memory_and_hears_revocations,
    the_layer_protects_an_app_with_the_seeds_bodies,
);

async fn client(app: &TestApp) -> Client {
    Client::builder(format!("http://{}", app.addr))
        .operator_token(ADMIN_TOKEN)
        .connect()
        .await
        .expect("client connects")
}

async fn next_event(stream: &mut tonic::Streaming<pb::WatchKeyChangesResponse>) -> (i64, Event) {
    let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a message within 5 s")
        .expect("stream ok")
        .expect("stream open");
    (message.revision, message.event.expect("an event"))
}

/// The next change, skipping heartbeats.
async fn next_change(
    stream: &mut tonic::Streaming<pb::WatchKeyChangesResponse>,
) -> (i64, pb::KeyChange) {
    loop {
        match next_event(stream).await {
            (revision, Event::Change(change)) => return (revision, change),
            (_, Event::Heartbeat(_)) => {}
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
}

async fn the_stream_tells_every_change_and_resumes_by_revision(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let client = client(&app).await;
    let mut stream = client.watch_key_changes(None).await.unwrap();
    let (start, first) = next_event(&mut stream).await;
    assert!(matches!(first, Event::Started(_)), "{first:?}");

    let (key, _) = app.issue_test_key().await;
    let (_, issued) = next_change(&mut stream).await;
    assert_eq!(issued.key_id, key.id);
    assert_eq!(issued.r#type, pb::KeyEventType::Issued as i32);

    let rolled = app
        .roll(&key.id, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let new_id = rolled.key.unwrap().id;
    let (_, roll) = next_change(&mut stream).await;
    assert_eq!(roll.r#type, pb::KeyEventType::Rolled as i32);
    assert_eq!(roll.key_id, key.id);
    assert_eq!(roll.related_key_id, new_id);
    assert_eq!(
        roll.expire_time,
        rolled.previous_key.unwrap().expire_time,
        "the old key's new expiry travels with the change"
    );

    let started = Instant::now();
    app.revoke(&new_id).await.unwrap();
    let (after_revoke, revoked) = next_change(&mut stream).await;
    let seen_after = started.elapsed();
    assert_eq!(revoked.key_id, new_id);
    assert_eq!(revoked.r#type, pb::KeyEventType::Revoked as i32);
    assert!(after_revoke > start, "revisions move forward");
    eprintln!("revocation seen on the stream {seen_after:?} after RevokeKey was sent");

    // Resume from the first revision: every change since is replayed, in order.
    let mut resumed = client.watch_key_changes(Some(start)).await.unwrap();
    let mut replayed = Vec::new();
    loop {
        let (revision, event) = next_event(&mut resumed).await;
        match event {
            Event::Change(c) => replayed.push(c.r#type),
            Event::Heartbeat(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        if revision >= after_revoke {
            break;
        }
    }
    assert_eq!(
        replayed,
        [
            pb::KeyEventType::Issued as i32,
            pb::KeyEventType::Rolled as i32,
            pb::KeyEventType::Revoked as i32
        ]
    );

    // A revision this store never reached: reset, then the end of the stream.
    let mut future = client
        .watch_key_changes(Some(after_revoke + 1_000))
        .await
        .unwrap();
    let (_, event) = next_event(&mut future).await;
    assert!(
        matches!(event, Event::Reset(ref r) if r.reason == "revision_not_kept"),
        "{event:?}"
    );
    assert!(
        future.message().await.unwrap().is_none(),
        "the stream ends after a reset"
    );

    let negative = client.watch_key_changes(Some(-1)).await;
    assert_eq!(negative.unwrap_err().code(), Code::InvalidArgument);
    app.stop().await;
}

/// This machine's address on its first non-loopback interface, if it has one.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    // A UDP "connection" sends nothing: it only picks the route's source address. Any
    // address off this machine will do (not a broadcast one, which needs SO_BROADCAST).
    ["10.255.255.254:9", "192.0.2.1:9", "172.31.255.254:9"]
        .into_iter()
        .find_map(|target| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            socket.connect(target).ok()?;
            Some(socket.local_addr().ok()?.ip())
        })
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// The security review's F4: without a verifier credential configured, WatchKeyChanges (every
/// key id of every application) answers a caller on loopback only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_verifier_credential_streams_answer_loopback_only() {
    let Some(ip) = non_loopback_address() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: this machine has no non-loopback address"
        );
        eprintln!("skipped: this machine has no non-loopback address");
        return;
    };
    let options = Options {
        listen: Some("0.0.0.0:0".parse().unwrap()),
        ..Options::default()
    };
    let app = spawn_with(Backend::Sqlite, options).await.unwrap();
    let local = Client::builder(format!("http://127.0.0.1:{}", app.addr.port()))
        .connect()
        .await
        .unwrap();
    assert!(
        local.watch_key_changes(None).await.is_ok(),
        "loopback: open"
    );
    let remote = Client::builder(format!(
        "http://{}",
        std::net::SocketAddr::new(ip, app.addr.port())
    ))
    .connect()
    .await
    .unwrap();
    let refused = remote.watch_key_changes(None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("keys.verify"), "{refused:?}");
    // Verify itself stays open to every caller while no verifier credential is configured.
    let (_, secret) = app.issue_test_key().await;
    let verdict = remote
        .verify(keyauth_proto::VerifyRequest {
            key: secret,
            required_permissions: vec![],
        })
        .await
        .unwrap();
    assert!(verdict.valid);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_limited_and_need_the_verifier_token() {
    let options = Options {
        verifier_token: Some("watch-verifier-token-of-the-caller-tests".into()),
        watch: keyauth_server::service::WatchOptions {
            heartbeat: Duration::from_millis(200),
            max_streams: 2,
        },
        ..Options::default()
    };
    let app = spawn_with(Backend::Sqlite, options).await.unwrap();
    let anonymous = client(&app).await;
    let refused = anonymous.watch_key_changes(None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let verifier = Client::builder(format!("http://{}", app.addr))
        .verifier_token("watch-verifier-token-of-the-caller-tests")
        .connect()
        .await
        .unwrap();
    let _a = verifier.watch_key_changes(None).await.unwrap();
    let _b = verifier.watch_key_changes(None).await.unwrap();
    let third = verifier.watch_key_changes(None).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    drop(_a);
    // The slot frees once the server sees the stream gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match verifier.watch_key_changes(None).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline && e.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_reset_not_buffered() {
    // Cheap hashes: thousands of keys are issued.
    let options = Options {
        hash: keyauth_core::hashing::HashParams {
            m_cost: 8,
            t_cost: 1,
            p_cost: 1,
        },
        watch_backlog: 16,
        ..Options::default()
    };
    let app = spawn_with(Backend::Sqlite, options).await.unwrap();
    let client = Client::builder(format!("http://{}", app.addr))
        .operator_token(ADMIN_TOKEN)
        .idempotency(false)
        .connect()
        .await
        .unwrap();
    // A connection of its own: unread data of one HTTP/2 stream holds its connection's window,
    // which would stall the issuing calls too.
    // A small HTTP/2 window, so that little is held in flight.
    let watcher = Client::builder(format!("http://{}", app.addr))
        .http2_window(1024)
        .connect()
        .await
        .unwrap();
    let mut slow = watcher.watch_key_changes(None).await.unwrap();
    let _ = next_event(&mut slow).await;
    // More changes than the hub keeps (16 here), the stream's buffer (64) and HTTP/2's window
    // (1 KiB here, about twenty small messages) hold together.
    let issuers: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..60 {
                    let issued = client
                        .issue_key(pb::IssueKeyRequest {
                            application_id: "flood".into(),
                            environment: pb::Environment::Test.into(),
                            name: "flood".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    register_secret(&issued.secret);
                }
            })
        })
        .collect();
    for issuer in issuers {
        issuer.await.unwrap();
    }
    // Now read: what was buffered, then a reset, then the end. Never all 240 changes.
    let mut changes = 0;
    let mut reset = false;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), slow.message())
        .await
        .expect("the stream answers")
        .expect("stream ok")
    {
        match message.event {
            Some(Event::Change(_)) => changes += 1,
            Some(Event::Reset(r)) => {
                assert_eq!(r.reason, "consumer_too_slow");
                reset = true;
            }
            _ => {}
        }
    }
    assert!(
        reset,
        "the slow consumer was reset ({changes} changes before)"
    );
    assert!(changes < 240, "{changes}");
    app.stop().await;
}

async fn verifier_for(app: &TestApp) -> Verifier {
    verifier_with(app, Duration::from_secs(1)).await
}

async fn verifier_with(app: &TestApp, staleness_limit: Duration) -> Verifier {
    let client = Client::builder(format!("http://{}", app.addr))
        .connect_lazy()
        .unwrap();
    let verifier = Verifier::new(
        client,
        VerifierOptions {
            staleness_limit,
            ..VerifierOptions::default()
        },
    );
    wait_until(|| verifier.is_fresh(), "the verifier hears the stream").await;
    verifier
}

async fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn the_verifier_answers_from_memory_and_hears_revocations(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    // Long enough to outlast stopping the server (which scans its logs) under a busy machine.
    let verifier = verifier_with(&app, Duration::from_secs(4)).await;
    let (key, secret) = app
        .issue(pb::IssueKeyRequest {
            permissions: vec![permission("patients", &["read"])],
            ..standard("app_caller", pb::Environment::Live)
        })
        .await
        .unwrap();
    let read = [Permission::new("patients", "read")];
    let write = [Permission::new("patients", "write")];

    // Garbage never reaches keyauth.
    for garbage in [
        "",
        "Bearer",
        "Bearer sk_live_short",
        "ключ",
        &"x".repeat(100_000),
    ] {
        let v = verifier.verify(garbage, &[]).await.unwrap();
        assert_eq!(v.denial, Some(Denial::AuthenticationError));
    }

    // First sight: the RPC, then in memory.
    let first = verifier
        .verify(&format!("Bearer {secret}"), &read)
        .await
        .unwrap();
    assert!(first.is_valid(), "{first:?}");
    assert_eq!(first.key.as_ref().unwrap().id, key.id);
    assert_eq!(verifier.cached(), 1);
    let denied = verifier.verify(&secret, &write).await.unwrap();
    assert_eq!(denied.denial, Some(Denial::InsufficientPermissions));

    // Answered in-process: timing a batch of warm calls.
    let started = Instant::now();
    for _ in 0..10_000 {
        assert!(verifier.verify(&secret, &read).await.unwrap().is_valid());
    }
    eprintln!(
        "warm in-process verify: {:?} a call",
        started.elapsed() / 10_000
    );

    // A wrong secret for the cached id is refused from memory.
    let wrong = keyauth_core::key::PresentedKey::from_parts(
        keyauth_core::model::Environment::Live,
        key.id.strip_prefix("key_").unwrap(),
        &"A".repeat(32),
    )
    .unwrap();
    let v = verifier.verify(wrong.expose(), &read).await.unwrap();
    assert_eq!(v.denial, Some(Denial::AuthenticationError));

    // A revocation reaches the verifier through the stream.
    let started = Instant::now();
    app.revoke(&key.id).await.unwrap();
    wait_until(
        || verifier.cached() == 0,
        "the revoked key leaves the cache",
    )
    .await;
    eprintln!("revocation reached the verifier in {:?}", started.elapsed());
    let v = verifier.verify(&secret, &read).await.unwrap();
    assert_eq!(v.denial, Some(Denial::Revoked));

    // keyauth stopped: cached answers continue until the staleness limit, then Unavailable.
    let (other, other_secret) = app.issue_test_key().await;
    assert!(
        verifier
            .verify(&other_secret, &[])
            .await
            .unwrap()
            .is_valid()
    );
    wait_until(|| verifier.cached() >= 1, "the second key is cached").await;
    let listen = app.addr;
    let db = app.stop_only().await;
    assert!(
        verifier
            .verify(&other_secret, &[])
            .await
            .unwrap()
            .is_valid(),
        "a cached key is answered while the stream is fresh"
    );
    wait_until(|| !verifier.is_fresh(), "the stream goes stale").await;
    let unknown = verifier.verify(&other_secret, &[]).await;
    assert!(unknown.is_err(), "never a guessed valid: {unknown:?}");

    // keyauth back (same address, same store): answers again.
    let app = spawn_on(
        db,
        Options {
            listen: Some(listen),
            ..Options::default()
        },
    )
    .await;
    wait_until(|| verifier.is_fresh(), "the verifier reconnects").await;
    let again = verifier.verify(&other_secret, &[]).await.unwrap();
    assert!(again.is_valid(), "{again:?}");
    assert_eq!(again.key.unwrap().id, other.id);
    app.stop().await;
}

/// The app of the tests: one route that shows the verified key.
fn app_behind(verifier: Verifier) -> Router {
    Router::new()
        .route(
            "/api/v1/patients",
            get(
                |axum::Extension(key): axum::Extension<std::sync::Arc<VerifiedKey>>| async move {
                    key.id.clone()
                },
            ),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(KeyAuthLayer::new(verifier))
}

async fn call(
    app: &Router,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, String, axum::http::HeaderMap) {
    let mut request = Request::get(path).header("x-request-id", "req-layer-1");
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), headers)
}

const UNAUTHENTICATED: &str = r#"{"error":{"code":"authentication_error","message":"Invalid API key provided","type":"invalid_request_error"}}"#;

async fn the_layer_protects_an_app_with_the_seeds_bodies(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let verifier = verifier_for(&app).await;
    let router = app_behind(verifier);
    let (key, secret) = app.issue_test_key().await;
    let (status, body, headers) = call(
        &router,
        "/api/v1/patients",
        Some(&format!("Bearer {secret}")),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, key.id.as_str()));
    assert_eq!(headers["x-request-id"], "req-layer-1");

    let huge = format!("Bearer {}", "k".repeat(100_000));
    for bad in [
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer sk_test_trunc"),
        Some("Bearer ключ"),
        Some(huge.as_str()),
        Some(&secret[..40]),
    ] {
        let (status, body, headers) = call(&router, "/api/v1/patients", bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(body, UNAUTHENTICATED);
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(headers["content-type"], "application/json");
    }

    // A restricted key: refused where its permission is missing, and on unmapped routes.
    let (_, restricted) = app
        .issue(pb::IssueKeyRequest {
            permissions: vec![permission("encounters", &["read"])],
            ..standard("app_1", pb::Environment::Test)
        })
        .await
        .unwrap();
    for path in ["/api/v1/patients", "/health"] {
        let (status, body, headers) =
            call(&router, path, Some(&format!("Bearer {restricted}"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            body,
            r#"{"error":{"code":"insufficient_permissions","message":"This API key does not have the permissions required for this request","type":"invalid_request_error"}}"#
        );
        assert!(headers.get("www-authenticate").is_none());
    }
    // …while a standard key passes on an unmapped route.
    let (status, _, _) = call(&router, "/health", Some(&format!("Bearer {secret}"))).await;
    assert_eq!(status, StatusCode::OK);

    app.revoke(&key.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, _) = call(
            &router,
            "/api/v1/patients",
            Some(&format!("Bearer {secret}")),
        )
        .await;
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                body,
                r#"{"error":{"code":"api_key_revoked","message":"This API key has been revoked","type":"invalid_request_error"}}"#
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation never reached the layer"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyauth_down_at_first_sight_is_503() {
    // A port nobody listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Client::builder(format!("http://{addr}"))
        .retries(0)
        .connect_lazy()
        .unwrap();
    let router = app_behind(Verifier::new(client, VerifierOptions::default()));
    let key =
        keyauth_core::key::PresentedKey::generate(keyauth_core::model::Environment::Test).unwrap();
    let (status, body, headers) = call(
        &router,
        "/api/v1/patients",
        Some(&format!("Bearer {}", key.expose())),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, keyauth_client::error_body::unavailable_body());
    assert_eq!(headers["content-type"], "application/json");
}

/// A store restored from an older backup: the verifier's revision is unknown there, the server
/// says reset, and the verifier drops what it cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_drops_the_verifiers_cache() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let verifier = verifier_for(&app).await;
    for _ in 0..3 {
        app.issue_test_key().await;
    }
    let (_, secret) = app.issue_test_key().await;
    assert!(verifier.verify(&secret, &[]).await.unwrap().is_valid());
    wait_until(|| verifier.cached() == 1, "cached").await;
    let listen = app.addr;
    app.stop().await;
    // Another, empty store behind the same address.
    let fresh = TestDb::create(Backend::Sqlite).await.unwrap();
    let app = spawn_on(
        fresh,
        Options {
            listen: Some(listen),
            ..Options::default()
        },
    )
    .await;
    wait_until(|| verifier.cached() == 0, "the reset empties the cache").await;
    app.stop().await;
}
