//! Leaked keys revoke themselves: ReportExposedKeys (operators) and the GitHub secret-scanning
//! webhook on the HTTP listener, both answered by one `Authority` method.

use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use keyauth_core::key::{Environment, PresentedKey};
use keyauth_proto as pb;
use keyauth_server::http::{GITHUB_PATH, KEY_ID_HEADER, MAX_BODY_BYTES, SIGNATURE_HEADER};
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use p256::elliptic_curve::Generate;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::{Code, Request};

use crate::both_stores;
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_speaks_tls_with_the_grpc_certificate() {
    let github = Github::new();
    let pki = crate::helpers::pki::Pki::new();
    let options = Options {
        http_tls: Some((pki.server_cert.clone(), pki.server_key.clone())),
        ..github.options()
    };
    let Some(app) = spawn_with(Backend::Sqlite, options).await else {
        return;
    };
    let (secret, body) = leaked_to_github(&app).await;

    let response = https(&app, &pki, None, github.signed_request(body))
        .await
        .expect("the TLS handshake with the gRPC port's certificate");
    assert_eq!(response.status().as_u16(), 200);
    let feedback: Vec<Value> =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(feedback[0]["label"], "true_positive");
    assert_eq!(
        error_code(&app.verify(&secret).await),
        Some("api_key_revoked")
    );

    // Plaintext is not answered on a TLS listener.
    let plaintext =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>()
            .request(
                hyper::Request::post(format!("http://{}{GITHUB_PATH}", app.http_addr.unwrap()))
                    .body(Full::new(Bytes::from_static(b"[]")))
                    .unwrap(),
            )
            .await;
    assert!(plaintext.is_err(), "{plaintext:?}");
    app.stop().await;
}

/// One request over a new TLS connection to `app`'s HTTP listener, trusting `pki`'s CA and
/// presenting `identity` (a certificate and its key, PEM) if given. `Err`: the handshake failed.
async fn https(
    app: &TestApp,
    pki: &crate::helpers::pki::Pki,
    identity: Option<&(String, String)>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let tcp = tokio::net::TcpStream::connect(app.http_addr.unwrap())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// F3: with a client CA, a connection without a certificate signed by it is served the
/// GitHub webhook only (GitHub presents none; its alerts are signed): not the console, not
/// gRPC-Web. A certificate of another CA fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_the_webhook_is_served_without_a_certificate() {
    let github = Github::new();
    let (pki, stranger) = (
        crate::helpers::pki::Pki::new(),
        crate::helpers::pki::Pki::new(),
    );
    let options = Options {
        http_tls: Some((pki.server_cert.clone(), pki.server_key.clone())),
        http_client_ca: Some(pki.ca.clone()),
        console: true,
        ..github.options()
    };
    let Some(app) = spawn_with(Backend::Sqlite, options).await else {
        return;
    };
    let get = |path: &str| {
        hyper::Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // gRPC-Web: a GetCatalog (no body needed to be refused or answered).
    let grpc_web = || {
        hyper::Request::post("/keyauth.v1.KeyAuthorityService/GetCatalog")
            .header("host", "localhost")
            .header("content-type", "application/grpc-web+proto")
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap()
    };
    for request in [get("/"), get("/console.js"), grpc_web()] {
        let path = request.uri().path().to_owned();
        let refused = https(&app, &pki, None, request).await.unwrap();
        assert_eq!(
            refused.status().as_u16(),
            403,
            "{path} without a certificate"
        );
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("--tls-client-ca"),
            "{body:?}"
        );
    }
    let with_cert = https(&app, &pki, Some(&pki.client), get("/"))
        .await
        .unwrap();
    assert_eq!(with_cert.status().as_u16(), 200);
    let with_cert = https(&app, &pki, Some(&pki.client), grpc_web())
        .await
        .unwrap();
    assert_eq!(with_cert.status().as_u16(), 200);
    assert_eq!(
        with_cert
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        None,
        "gRPC-Web answers with a body (trailers inside it)"
    );
    assert!(
        https(&app, &pki, Some(&stranger.client), get("/"))
            .await
            .is_err(),
        "another CA's certificate fails the handshake"
    );

    // The webhook, without a certificate: served.
    let (secret, body) = leaked_to_github(&app).await;
    let response = https(&app, &pki, None, github.signed_request(body))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        error_code(&app.verify(&secret).await),
        Some("api_key_revoked")
    );
    app.stop().await;
}

both_stores!(
    a_report_revokes_the_keys_it_proves,
    a_report_needs_the_operator_token_and_sane_limits,
    github_alerts_revoke_the_keys_keyauth_issued,
    refused_alerts_change_nothing,
);

pub const APP: &str = "leaky";

/// A report holding every kind of string a scanner may find, in this order: a well-formed key
/// with a real key's id but another secret, a live key, a revoked key, a rolled key inside its
/// grace period, a string with a bad checksum and a well-formed key nobody issued.
pub struct Leaks {
    pub wrong_secret: String,
    pub live: (pb::ApiKey, String),
    pub revoked: (pb::ApiKey, String),
    pub rolled: (pb::ApiKey, String),
    pub bad_checksum: String,
    pub unknown: String,
}

impl Leaks {
    pub async fn issue(app: &TestApp) -> Leaks {
        let live = app
            .issue(standard(APP, pb::Environment::Live))
            .await
            .unwrap();
        let revoked = app
            .issue(standard(APP, pb::Environment::Live))
            .await
            .unwrap();
        app.revoke(&revoked.0.id).await.unwrap();
        let rolled = app
            .issue(standard(APP, pb::Environment::Test))
            .await
            .unwrap();
        app.roll(&rolled.0.id, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        let rolled = (app.get(&rolled.0.id).await.unwrap(), rolled.1);
        assert_eq!(rolled.0.state, pb::KeyState::Active as i32, "in its grace");

        let live_key = PresentedKey::parse(&live.1).unwrap();
        let other = PresentedKey::generate(Environment::Live).unwrap();
        let other_secret = std::str::from_utf8(other.secret()).unwrap();
        let wrong_secret =
            PresentedKey::from_parts(Environment::Live, live_key.lookup(), other_secret).unwrap();
        let unknown = PresentedKey::generate(Environment::Live).unwrap();
        let typo = PresentedKey::generate(Environment::Live).unwrap();
        let mut bad_checksum = typo.expose().to_owned();
        let last = bad_checksum.pop().unwrap();
        bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
        assert!(PresentedKey::parse(&bad_checksum).is_none());
        for secret in [wrong_secret.expose(), unknown.expose(), typo.expose()] {
            register_secret(secret);
        }
        Leaks {
            wrong_secret: wrong_secret.expose().to_owned(),
            live,
            revoked,
            rolled,
            bad_checksum,
            unknown: unknown.expose().to_owned(),
        }
    }

    pub fn tokens(&self) -> Vec<String> {
        vec![
            self.wrong_secret.clone(),
            self.live.1.clone(),
            self.revoked.1.clone(),
            self.rolled.1.clone(),
            self.bad_checksum.clone(),
            self.unknown.clone(),
        ]
    }
}

/// Every audit event of the test application, newest first.
pub async fn events(app: &TestApp) -> Vec<pb::KeyEvent> {
    events_of(app, APP).await
}

/// Every audit event of `application`, newest first.
pub async fn events_of(app: &TestApp, application: &str) -> Vec<pb::KeyEvent> {
    app.client
        .clone()
        .list_key_events(op(pb::ListKeyEventsRequest {
            application_id: application.into(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events
}

/// The `exposed` events among `events`.
pub fn exposed(events: &[pb::KeyEvent]) -> Vec<&pb::KeyEvent> {
    events
        .iter()
        .filter(|e| e.r#type == pb::KeyEventType::Exposed as i32)
        .collect()
}

/// The live and the rolled key of `leaks` refused as revoked at once, the caches
/// notwithstanding, and two `exposed` events written since `before`, nothing else: every
/// event now.
async fn assert_live_and_rolled_revoked(
    app: &TestApp,
    leaks: &Leaks,
    before: &[pb::KeyEvent],
) -> Vec<pb::KeyEvent> {
    for secret in [&leaks.live.1, &leaks.rolled.1] {
        let verdict = app.verify(secret).await;
        assert_eq!(error_code(&verdict), Some("api_key_revoked"), "{verdict:?}");
    }
    let after = events(app).await;
    assert_eq!(after.len(), before.len() + 2);
    assert_eq!(exposed(&after).len(), 2);
    after
}

fn report(keys: Vec<String>, source: &str, url: &str) -> pb::ReportExposedKeysRequest {
    pb::ReportExposedKeysRequest {
        keys,
        source: source.into(),
        url: url.into(),
    }
}

/// ReportExposedKeys of `keys` by the `paste-monitor`, with the operator token.
async fn reported(app: &TestApp, keys: Vec<String>, url: &str) -> pb::ReportExposedKeysResponse {
    let request = op(report(keys, "paste-monitor", url));
    let answer = app.client.clone().report_exposed_keys(request).await;
    answer.unwrap().into_inner()
}

/// The outcome of each reported key, in the order reported.
fn assert_outcomes(answer: &pb::ReportExposedKeysResponse, want: &[pb::ExposureOutcome]) {
    let outcomes: Vec<i32> = answer.results.iter().map(|r| r.outcome).collect();
    let want: Vec<i32> = want.iter().map(|o| *o as i32).collect();
    assert_eq!(outcomes, want);
}

async fn a_report_revokes_the_keys_it_proves(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let leaks = Leaks::issue(&app).await;
    // The live and the rolled key are proven (and cached) before the report.
    assert!(app.verify(&leaks.live.1).await.valid);
    assert!(app.verify(&leaks.rolled.1).await.valid);
    let before = events(&app).await;
    let url = "https://paste.example/raw/abc";

    use pb::ExposureOutcome as O;
    let answer = reported(&app, leaks.tokens(), url).await;
    let first = [
        O::Unknown,
        O::Revoked,
        O::AlreadyRevoked,
        O::Revoked,
        O::NotAKey,
        O::Unknown,
    ];
    assert_outcomes(&answer, &first);
    let live_key = PresentedKey::parse(&leaks.live.1).unwrap();
    assert_eq!(
        answer.results[0].key_id, leaks.live.0.id,
        "its id, not its key"
    );
    assert_eq!(answer.results[1].key_id, leaks.live.0.id);
    assert_eq!(answer.results[1].redacted, live_key.redacted());
    assert_eq!(answer.results[1].application_id, APP);
    assert_eq!(answer.results[3].key_id, leaks.rolled.0.id);
    assert_eq!(
        answer.results[4],
        pb::ExposedKeyResult {
            outcome: O::NotAKey as i32,
            ..Default::default()
        }
    );
    let shown = format!("{answer:?}");
    for token in leaks.tokens() {
        assert!(!shown.contains(&token), "the answer holds a reported key");
    }

    let after = assert_live_and_rolled_revoked(&app, &leaks, &before).await;
    let new = exposed(&after);
    let mut ids: Vec<_> = new.iter().map(|e| e.key_id.clone()).collect();
    ids.sort();
    let mut want = vec![leaks.live.0.id.clone(), leaks.rolled.0.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    for e in new {
        assert_eq!((e.source.as_str(), e.url.as_str()), ("paste-monitor", url));
        assert!(e.operator_id.starts_with("op_"), "{e:?}");
        assert_eq!(e.application_id, APP);
    }
    let key = app.get(&leaks.live.0.id).await.unwrap();
    assert_eq!(key.state, pb::KeyState::Revoked as i32);
    assert!(key.revoke_reason.contains("paste-monitor"), "{key:?}");
    // The key whose id was reported with another secret is untouched by that entry.
    assert_eq!(
        app.get(&leaks.revoked.0.id).await.unwrap().revoke_reason,
        "compromised",
        "an earlier revocation is kept"
    );

    // The same report again changes nothing.
    let again = reported(&app, leaks.tokens(), url).await;
    let known = O::AlreadyRevoked;
    assert_outcomes(
        &again,
        &[O::Unknown, known, known, known, O::NotAKey, O::Unknown],
    );
    assert_eq!(events(&app).await, after, "no second event");
    app.stop().await;
}

async fn a_report_needs_the_operator_token_and_sane_limits(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app
        .issue(standard(APP, pb::Environment::Live))
        .await
        .unwrap();
    let mut client = app.client.clone();

    let anonymous = client
        .report_exposed_keys(Request::new(report(vec![secret.clone()], "x", "")))
        .await;
    assert_status(anonymous, Code::Unauthenticated, None);
    let mut wrong = Request::new(report(vec![secret.clone()], "x", ""));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-token".parse().unwrap());
    assert_status(
        client.report_exposed_keys(wrong).await,
        Code::Unauthenticated,
        None,
    );

    let refused = [
        (report(vec![], "x", ""), "keys"),
        (report(vec![secret.clone(); 1001], "x", ""), "keys"),
        (report(vec![secret.clone()], "", ""), "source"),
        (
            report(vec![secret.clone()], &"s".repeat(2001), ""),
            "source",
        ),
        (report(vec![secret.clone()], "x", &"u".repeat(2001)), "url"),
        (report(vec![secret.clone()], "x", "line\nbreak"), "url"),
    ];
    for (request, field) in refused {
        let status = assert_status(
            client.report_exposed_keys(op(request)).await,
            Code::InvalidArgument,
            None,
        );
        assert_eq!(violated_fields(&status), [field], "{status:?}");
        assert!(!status.message().contains(&secret));
    }
    assert!(app.verify(&secret).await.valid, "nothing was revoked");
    assert!(exposed(&events(&app).await).is_empty());
    assert_eq!(
        app.get(&key.id).await.unwrap().state,
        pb::KeyState::Active as i32
    );

    // 1000 keys is within the limit.
    let mut many = vec!["garbage".to_owned(); 999];
    many.push(secret.clone());
    let answer = client
        .report_exposed_keys(op(report(many, "bulk", "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.results.len(), 1000);
    assert_eq!(
        answer.results[999].outcome,
        pb::ExposureOutcome::Revoked as i32
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// GitHub secret scanning.

/// A GitHub signing key of the test's own, and the public-keys file that lists it.
pub struct Github {
    key_id: String,
    signing: SigningKey,
    dir: tempfile::TempDir,
}

impl Github {
    pub fn new() -> Github {
        let github = Github {
            key_id: "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a".into(),
            signing: SigningKey::generate(),
            dir: tempfile::tempdir().unwrap(),
        };
        github.write_keys(&[(&github.key_id, &github.signing)]);
        github
    }

    pub fn keys_file(&self) -> std::path::PathBuf {
        self.dir.path().join("secret_scanning.json")
    }

    /// Writes the public-keys file in the shape of GitHub's endpoint.
    fn write_keys(&self, keys: &[(&str, &SigningKey)]) {
        let entries: Vec<Value> = keys
            .iter()
            .map(|(id, key)| {
                json!({
                    "key_identifier": id,
                    "key": key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                    "is_current": true,
                })
            })
            .collect();
        std::fs::write(
            self.keys_file(),
            serde_json::to_vec_pretty(&json!({ "public_keys": entries })).unwrap(),
        )
        .unwrap();
    }

    fn options(&self) -> Options {
        Options {
            github_keys: Some(self.keys_file()),
            ..Options::default()
        }
    }

    /// The signature headers of `body` under `key`.
    fn sign(key_id: &str, key: &SigningKey, body: &[u8]) -> Headers {
        let signature: p256::ecdsa::Signature = key.sign(body);
        let der = signature.to_der();
        vec![
            (KEY_ID_HEADER.into(), key_id.into()),
            (
                SIGNATURE_HEADER.into(),
                base64::engine::general_purpose::STANDARD.encode(der.as_bytes()),
            ),
        ]
    }

    pub fn signed(&self, body: &[u8]) -> Headers {
        Github::sign(&self.key_id, &self.signing, body)
    }

    /// An alert POST of `body`, signed, as GitHub sends it.
    fn signed_request(&self, body: Vec<u8>) -> hyper::Request<Full<Bytes>> {
        let mut request = hyper::Request::post(GITHUB_PATH)
            .header("host", "localhost")
            .header("content-type", "application/json");
        for (name, value) in self.signed(&body) {
            request = request.header(name, value);
        }
        request.body(Full::new(Bytes::from(body))).unwrap()
    }
}

/// GitHub's payload: one alert per token.
pub fn alerts(tokens: &[String], url: &str) -> Vec<u8> {
    let alerts: Vec<Value> = tokens
        .iter()
        .map(|t| json!({"token": t, "type": "keyauth_api_key", "url": url, "source": "content"}))
        .collect();
    serde_json::to_vec(&alerts).unwrap()
}

/// A live key issued on `app`, and GitHub's payload alerting of it.
async fn leaked_to_github(app: &TestApp) -> (String, Vec<u8>) {
    let (_, secret) = app
        .issue(standard(APP, pb::Environment::Live))
        .await
        .unwrap();
    let body = alerts(
        std::slice::from_ref(&secret),
        "https://github.com/octo/leaky",
    );
    (secret, body)
}

/// HTTP headers, (name, value).
pub type Headers = Vec<(String, String)>;

/// POSTs `body` to the webhook with `headers`, through a real HTTP client.
async fn post(app: &TestApp, headers: &[(String, String)], body: Vec<u8>) -> (u16, Vec<u8>) {
    post_to(app.http_addr.expect("an HTTP listener"), headers, body).await
}

/// POSTs `body` to the webhook at `addr`.
pub async fn post_to(
    addr: std::net::SocketAddr,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = hyper::Request::post(format!("http://{addr}{GITHUB_PATH}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("the webhook answers");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

async fn github_alerts_revoke_the_keys_keyauth_issued(backend: Backend) {
    let github = Github::new();
    let Some(app) = spawn_with(backend, github.options()).await else {
        return;
    };
    let leaks = Leaks::issue(&app).await;
    assert!(app.verify(&leaks.live.1).await.valid);
    let before = events(&app).await;
    let url = "https://github.com/octo/leaky/blob/abc123/.env";
    let body = alerts(&leaks.tokens(), url);

    let (status, answer) = post(&app, &github.signed(&body), body.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let text = String::from_utf8(answer.clone()).unwrap();
    for token in leaks.tokens() {
        assert!(!text.contains(&token), "the feedback holds a token");
    }
    let feedback: Vec<Value> = serde_json::from_slice(&answer).unwrap();
    let labels: Vec<&str> = feedback
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "false_positive", // a known id with another secret
            "true_positive",  // live: revoked now
            "true_positive",  // revoked before
            "true_positive",  // rolled, in its grace: revoked now
            "false_positive", // bad checksum
            "false_positive", // nobody's key
        ]
    );
    for (entry, token) in feedback.iter().zip(leaks.tokens()) {
        assert_eq!(entry["token_hash"], sha256_hex(&token));
        assert_eq!(entry["token_type"], "keyauth_api_key");
    }

    let after = assert_live_and_rolled_revoked(&app, &leaks, &before).await;
    let new = exposed(&after);
    for e in &new {
        assert_eq!((e.source.as_str(), e.url.as_str()), ("github:content", url));
        assert!(e.peer.starts_with("127.0.0.1:"), "{e:?}");
        assert!(e.key_id == leaks.live.0.id || e.key_id == leaks.rolled.0.id);
    }

    // GitHub retries: the same alert again labels alike and changes nothing.
    let (status, again) = post(&app, &github.signed(&body), body).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(&again).unwrap(),
        feedback
    );
    assert_eq!(events(&app).await, after, "no second event");

    // An empty alert list is answered with an empty feedback list.
    let (status, empty) = post(&app, &github.signed(b"[]"), b"[]".to_vec()).await;
    assert_eq!((status, empty.as_slice()), (200, b"[]".as_slice()));
    app.stop().await;
}

async fn refused_alerts_change_nothing(backend: Backend) {
    let github = Github::new();
    let Some(app) = spawn_with(backend, github.options()).await else {
        return;
    };
    let (secret, body) = leaked_to_github(&app).await;
    let before = events(&app).await;

    let other = SigningKey::generate();
    let mut tampered = body.clone();
    let at = tampered.len() - 4;
    tampered[at] = b'X';
    let mut huge = b"[".to_vec();
    while huge.len() <= MAX_BODY_BYTES {
        huge.extend_from_slice(&alerts(std::slice::from_ref(&secret), "https://x")[1..]);
        huge.pop();
        huge.push(b',');
    }
    huge.pop();
    huge.push(b']');
    let not_json = b"{\"token\": oops".to_vec();
    let cases: Vec<(&str, Headers, Vec<u8>, u16)> = vec![
        ("no signature", vec![], body.clone(), 401),
        (
            "signed by another key",
            Github::sign(&github.key_id, &other, &body),
            body.clone(),
            401,
        ),
        (
            "an unknown key identifier",
            Github::sign("not-a-github-key", &github.signing, &body),
            body.clone(),
            401,
        ),
        ("a tampered body", github.signed(&body), tampered, 401),
        (
            "garbage for a signature",
            vec![
                (KEY_ID_HEADER.into(), github.key_id.clone()),
                (SIGNATURE_HEADER.into(), "bm90IGEgc2lnbmF0dXJl".into()),
            ],
            body.clone(),
            401,
        ),
        ("a huge body", github.signed(&huge), huge.clone(), 413),
        (
            "malformed JSON",
            github.signed(&not_json),
            not_json.clone(),
            400,
        ),
    ];
    for (what, headers, body, want) in cases {
        let (status, answer) = post(&app, &headers, body).await;
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&answer));
        assert!(
            !String::from_utf8_lossy(&answer).contains(&secret),
            "{what}: the answer holds the token"
        );
        assert!(
            app.verify(&secret).await.valid,
            "{what}: the key was revoked"
        );
        assert_eq!(events(&app).await, before, "{what}: an event was added");
    }

    // The keys file is re-read when it changes: a rotated key is accepted, the old one is
    // unknown from then on.
    let rotated = SigningKey::generate();
    github.write_keys(&[("rotated-key", &rotated)]);
    let (status, _) = post(&app, &github.signed(&body), body.clone()).await;
    assert_eq!(status, 401, "the key no longer listed");
    assert!(app.verify(&secret).await.valid);
    let (status, answer) = post(&app, &Github::sign("rotated-key", &rotated, &body), body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        error_code(&app.verify(&secret).await),
        Some("api_key_revoked")
    );
    app.stop().await;
}

/// F5: unauthenticated bodies are read a few at a time, each within a deadline. Before, 150
/// unsigned 1 MiB bodies held open raised the server's memory by 150 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_reads_few_unauthenticated_bodies_at_once() {
    use keyauth_server::http::{BODIES_IN_FLIGHT, BODY_DEADLINE};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let github = Github::new();
    let Some(app) = spawn_with(Backend::Sqlite, github.options()).await else {
        return;
    };
    let addr = app.http_addr.unwrap();
    // A request announcing 1 MiB and sending 1 KiB of it.
    let unfinished = || async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {GITHUB_PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {MAX_BODY_BYTES}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&[b' '; 1024]).await.unwrap();
        tcp
    };
    let answer = |mut tcp: tokio::net::TcpStream| async move {
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut held = Vec::new();
    for _ in 0..BODIES_IN_FLIGHT {
        held.push(unfinished().await);
    }
    // Let the server start reading each of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let busy = answer(unfinished().await).await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(
        busy.to_ascii_lowercase().contains("retry-after: 1"),
        "{busy}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    // The held bodies never finish: each is cut at the deadline.
    let cut = answer(held.pop().unwrap()).await;
    assert!(cut.starts_with("HTTP/1.1 408"), "{cut}");
    assert!(started.elapsed() <= BODY_DEADLINE + Duration::from_secs(1));
    drop(held);
    // Places free again: a signed alert is handled.
    let (secret, body) = leaked_to_github(&app).await;
    let (status, _) = post(&app, &github.signed(&body), body).await;
    assert_eq!(status, 200);
    assert_eq!(
        error_code(&app.verify(&secret).await),
        Some("api_key_revoked")
    );
    app.stop().await;
}
