//! The operator console on the HTTP listener: its page with strict headers, and the key
//! authority service over gRPC-Web, called here as a browser calls it (HTTP/1.1, gRPC-Web
//! framing) through a plain HTTP client. The browser itself is console/tests (Playwright).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use keyauth_proto as pb;
use prost::Message;

use crate::both_stores;
use crate::helpers::*;

/// An HTTP/1.1 request to the listener: (status, headers, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, Vec<u8>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("the HTTP listener answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body.to_vec())
}

/// A gRPC-Web call's outcome: the message, or the grpc-status and message; with the request id.
struct WebCall<T> {
    answer: Result<T, (u32, String)>,
    request_id: String,
}

/// Calls `method` of the key authority service over gRPC-Web, as Connect-ES's transport does.
async fn grpc_web<Req: Message, Res: Message + Default>(
    addr: std::net::SocketAddr,
    method: &str,
    token: &str,
    request: &Req,
) -> WebCall<Res> {
    let message = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let bearer = format!("Bearer {token}");
    let (status, headers, body) = http(
        addr,
        "POST",
        &format!("/keyauth.v1.KeyAuthorityService/{method}"),
        &[
            ("content-type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
            ("authorization", &bearer),
        ],
        framed,
    )
    .await;
    assert_eq!(status, 200, "gRPC-Web answers HTTP 200 and a grpc-status");
    let request_id = headers
        .get("x-request-id")
        .expect("every call answers its request id")
        .to_str()
        .unwrap()
        .to_owned();
    // Trailers-only (an error): the status is in the headers.
    if let Some(code) = headers.get("grpc-status") {
        let code: u32 = code.to_str().unwrap().parse().unwrap();
        let message = headers
            .get("grpc-message")
            .map(|m| m.to_str().unwrap().replace("%20", " "))
            .unwrap_or_default();
        return WebCall {
            answer: Err((code, message)),
            request_id,
        };
    }
    // Frames: 1 flag byte (0x80 = trailers), 4 length bytes, then the payload.
    let mut rest = &body[..];
    let mut answer = None;
    let mut trailers = String::new();
    while rest.len() >= 5 {
        let flag = rest[0];
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + len];
        if flag & 0x80 != 0 {
            trailers = String::from_utf8(payload.to_vec()).unwrap();
        } else {
            answer = Some(Res::decode(payload).expect("a well-formed answer"));
        }
        rest = &rest[5 + len..];
    }
    assert!(
        trailers.to_ascii_lowercase().contains("grpc-status:0"),
        "{trailers}"
    );
    WebCall {
        answer: Ok(answer.expect("one message")),
        request_id,
    }
}

both_stores!(the_console_page_and_grpc_web_share_the_service);

async fn the_console_page_and_grpc_web_share_the_service(backend: Backend) {
    let Some(app) = spawn_with(
        backend,
        Options {
            console: true,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let addr = app.http_addr.expect("an HTTP listener");

    // The page, its script and its style, each with the strict policy.
    for (path, kind) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let (status, headers, body) = http(addr, "GET", path, &[], vec![]).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty());
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert!(header("content-type").unwrap().starts_with(kind), "{path}");
        let csp = header("content-security-policy").expect("a CSP");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"));
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
    }
    let (status, _, _) = http(addr, "GET", "/no-such-page", &[], vec![]).await;
    assert_eq!(status, 404);

    // A wrong token: refused like on the gRPC port, with a request id.
    let refused: WebCall<pb::ListApplicationsResponse> = grpc_web(
        addr,
        "ListApplications",
        "wrong-token",
        &pb::ListApplicationsRequest::default(),
    )
    .await;
    let (code, message) = refused.answer.expect_err("refused");
    assert_eq!(code, tonic::Code::Unauthenticated as u32);
    assert!(message.contains("operator token is not valid"), "{message}");
    assert!(!refused.request_id.is_empty());

    // IssueKey over gRPC-Web; the key is the gRPC port's too.
    let issued: WebCall<pb::IssueKeyResponse> = grpc_web(
        addr,
        "IssueKey",
        ADMIN_TOKEN,
        &standard("console-app", pb::Environment::Test),
    )
    .await;
    let issued = issued.answer.expect("issued over gRPC-Web");
    register_secret(&issued.secret);
    let key = issued.key.unwrap();
    assert_eq!(app.get(&key.id).await.unwrap().name, key.name);
    assert!(app.verify(&issued.secret).await.valid);

    // The audit trail records the browser's peer as for any operator call.
    let events: WebCall<pb::ListKeyEventsResponse> = grpc_web(
        addr,
        "ListKeyEvents",
        ADMIN_TOKEN,
        &pb::ListKeyEventsRequest {
            key_id: key.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let events = events.answer.unwrap().events;
    assert_eq!(events.len(), 1);
    assert!(events[0].peer.starts_with("127.0.0.1:"), "{:?}", events[0]);
    assert!(events[0].operator_id.starts_with("op_"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_console_off_the_listener_serves_the_webhook_alone() {
    let github = crate::exposed::Github::new();
    let app = spawn_with(
        Backend::Sqlite,
        Options {
            github_keys: Some(github.keys_file()),
            console: false,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let addr = app.http_addr.unwrap();
    let (status, _, _) = http(addr, "GET", "/", &[], vec![]).await;
    assert_eq!(status, 404, "no console");
    let (status, _, _) = http(
        addr,
        "POST",
        "/keyauth.v1.KeyAuthorityService/ListApplications",
        &[("content-type", "application/grpc-web+proto")],
        vec![0, 0, 0, 0, 0],
    )
    .await;
    assert_eq!(status, 404, "no gRPC-Web");
    // The webhook is still there (an unsigned alert is refused, not unknown).
    let (status, _, _) = http(
        addr,
        "POST",
        keyauth_server::http::GITHUB_PATH,
        &[("content-type", "application/json")],
        b"[]".to_vec(),
    )
    .await;
    assert_eq!(status, 401);
    app.stop().await;
}

/// A principals file naming the issuer `issuer` (audience `keyauth-console`, keys from a local
/// JWKS file), in `dir`; returns its path.
fn principals_with_issuer(dir: &std::path::Path, issuer: &str) -> String {
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let file = dir.join("principals.toml");
    std::fs::write(
        &file,
        format!(
            "[[issuer]]\nissuer = {issuer:?}\naudience = \"keyauth-console\"\n\
             jwks_file = {:?}\nroles_claim = \"keyauth_roles\"\n",
            jwks.display().to_string()
        ),
    )
    .unwrap();
    file.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_learns_its_oidc_provider_and_may_fetch_from_it_only() {
    use crate::helpers::process::ServerProcess;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let issuer = "https://idp.example.com/realms/ops";
    let principals = principals_with_issuer(dir.path(), issuer);
    let server = ServerProcess::start(
        &db,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--principals",
            &principals,
            "--console-oidc-issuer",
            issuer,
            "--console-oidc-client-id",
            "keyauth-console",
        ],
    );
    let addr: std::net::SocketAddr = server.http_addr().parse().unwrap();
    let (status, headers, body) = http(addr, "GET", "/console/config.json", &[], vec![]).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let config: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"oidc": {"issuer": issuer, "client_id": "keyauth-console"}})
    );
    // Every console answer: the same policy, which lets the page fetch from the issuer's
    // origin (discovery, token endpoint) and nowhere else.
    for path in ["/", "/console.js", "/console/config.json"] {
        let (_, headers, _) = http(addr, "GET", path, &[], vec![]).await;
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("connect-src 'self' https://idp.example.com;"),
            "{path}: {csp}"
        );
        assert!(csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
    }
    drop(server);

    // Without the flags: token sign-in only, and the policy's connect-src is this origin alone.
    let plain = ServerProcess::start(&db, &["--http-listen", "127.0.0.1:0"]);
    let addr: std::net::SocketAddr = plain.http_addr().parse().unwrap();
    let (status, headers, body) = http(addr, "GET", "/console/config.json", &[], vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({ "oidc": null })
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("connect-src 'self';"), "{csp}");
}

#[test]
fn oidc_settings_that_cannot_work_stop_the_start() {
    use crate::helpers::process::keyauth;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let issuer = "https://idp.example.com";
    let principals = principals_with_issuer(dir.path(), issuer);
    let other = tempfile::tempdir().unwrap();
    let other_principals = principals_with_issuer(other.path(), "https://other.example.com");
    let both = |issuer: &str, principals: Option<&str>| -> Vec<String> {
        let mut args = vec![
            "--console-oidc-issuer".to_owned(),
            issuer.to_owned(),
            "--console-oidc-client-id".to_owned(),
            "keyauth-console".to_owned(),
        ];
        if let Some(file) = principals {
            args.extend(["--principals".to_owned(), file.to_owned()]);
        }
        args
    };
    // (flags, environment, why the start is refused)
    type Case<'a> = (Vec<String>, &'a [(&'a str, &'a str)], &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--console-oidc-issuer".into(), issuer.into()],
            &[],
            "give both or neither",
        ),
        (
            vec![],
            &[("KEYAUTH_CONSOLE_OIDC_CLIENT_ID", "keyauth-console")],
            "give both or neither",
        ),
        (
            both(issuer, Some(&other_principals)),
            &[],
            "is not an [[issuer]] of the principals file",
        ),
        (
            both(issuer, None),
            &[],
            "is not an [[issuer]] of the principals file",
        ),
        (
            both("http://idp.example.com", Some(&principals)),
            &[],
            "must be https",
        ),
    ];
    for (args, env, why) in cases {
        let mut child = keyauth()
            .args(["serve", "--database", &db, "--listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A setting that is not refused starts a server: fail instead of waiting for it.
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                child.kill().unwrap();
                panic!("{args:?}: the server started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--console-oidc-"), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}
