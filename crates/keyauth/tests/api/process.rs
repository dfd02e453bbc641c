//! The `keyauth` binary itself: configuration errors, and SIGTERM draining in-flight calls.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use keyauth_proto as pb;

use crate::helpers::process::{ServerProcess, keyauth, wait_for_line};
use crate::helpers::{issue_over, op};

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let bad_catalog = dir.path().join("catalog.toml");
    std::fs::write(&bad_catalog, "[resources]\npatients = []\n").unwrap();
    let bad_principals = dir.path().join("principals.toml");
    std::fs::write(
        &bad_principals,
        "[[principal]]\nname = \"p\"\ntoken_sha256 = \"00\"\nroles = [\"keys.write\"]\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--cache-ttl".into(), "soon".into()], "--cache-ttl"),
        (vec!["--listen".into(), "not-an-address".into()], "--listen"),
        (
            vec!["--catalog".into(), "/nonexistent/catalog.toml".into()],
            "--catalog",
        ),
        (
            vec!["--catalog".into(), bad_catalog.display().to_string()],
            "--catalog",
        ),
        (
            vec!["--argon2-m-cost".into(), "1".into()],
            "--argon2-m-cost",
        ),
        (vec!["--log-format".into(), "xml".into()], "--log-format"),
        (
            vec!["--database-max-connections".into(), "0".into()],
            "--database-max-connections",
        ),
        (
            vec!["--metrics-listen".into(), "nowhere".into()],
            "--metrics-listen",
        ),
        (
            vec!["--max-request-bytes".into(), "0".into()],
            "--max-request-bytes",
        ),
        (
            vec!["--max-concurrent-streams".into(), "0".into()],
            "--max-concurrent-streams",
        ),
        (
            vec!["--request-timeout".into(), "0s".into()],
            "--request-timeout",
        ),
        // A token a guesser could find stops the start (DESIGN §7: 32 characters at least).
        (
            vec!["--admin-token".into(), "short-operator-token".into()],
            "--admin-token",
        ),
        (
            vec!["--verifier-token".into(), "x".repeat(31)],
            "--verifier-token",
        ),
        // A principals file that does not load names its line.
        (
            vec!["--principals".into(), bad_principals.display().to_string()],
            "--principals",
        ),
    ];
    // TLS: half a pair, unreadable files, garbage PEM, a key of another certificate.
    let pki = crate::helpers::pki::Pki::new();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n").unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &pki.client.1).unwrap();
    let [cert, key, ca, garbage, other_key] = [
        &pki.server_cert,
        &pki.server_key,
        &pki.ca,
        &garbage,
        &other_key,
    ]
    .map(|p| p.display().to_string());
    let tls = |pairs: &[(&str, &str)]| -> Vec<String> {
        pairs
            .iter()
            .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
            .collect()
    };
    let mut cases = cases;
    // The HTTP listener: the keys need a listener (a listener alone serves the console); an
    // unusable keys file; a busy port.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let github = crate::exposed::Github::new();
    let keys = github.keys_file().display().to_string();
    cases.extend([
        (tls(&[("--github-scanning-keys", &keys)]), "--http-listen"),
        (
            tls(&[
                ("--http-listen", "127.0.0.1:0"),
                ("--github-scanning-keys", "/nonexistent/keys.json"),
            ]),
            "--github-scanning-keys",
        ),
        (
            tls(&[("--http-listen", &busy), ("--github-scanning-keys", &keys)]),
            "--http-listen",
        ),
    ]);
    cases.extend([
        (tls(&[("--tls-cert", &cert)]), "--tls-key"),
        (tls(&[("--tls-key", &key)]), "--tls-cert"),
        (tls(&[("--tls-client-ca", &ca)]), "--tls-client-ca"),
        (
            tls(&[("--tls-cert", "/nonexistent/cert.pem"), ("--tls-key", &key)]),
            "--tls-cert",
        ),
        (
            tls(&[("--tls-cert", &cert), ("--tls-key", "/nonexistent/key.pem")]),
            "--tls-key",
        ),
        (
            tls(&[("--tls-cert", &garbage), ("--tls-key", &key)]),
            "--tls-cert",
        ),
        (
            tls(&[("--tls-cert", &cert), ("--tls-key", &garbage)]),
            "--tls-key",
        ),
        (
            tls(&[("--tls-cert", &cert), ("--tls-key", &other_key)]),
            "--tls-cert",
        ),
        (
            tls(&[
                ("--tls-cert", &cert),
                ("--tls-key", &key),
                ("--tls-client-ca", &garbage),
            ]),
            "--tls-client-ca",
        ),
    ]);
    for (args, setting) in cases {
        let mut child = keyauth()
            .arg("serve")
            .args(["--database", &db, "--listen", "127.0.0.1:0"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A setting that is not refused starts a server: fail instead of waiting for it.
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                child.kill().unwrap();
                panic!("{args:?}: the server started instead of refusing {setting}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_github_webhook_and_stops_on_sigterm() {
    use crate::operable::{free_port, sample, scrape};
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let github = crate::exposed::Github::new();
    let keys = github.keys_file().display().to_string();
    let server = ServerProcess::start(
        &db,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--github-scanning-keys",
            &keys,
            "--request-timeout",
            "1s",
            "--metrics-listen",
            &metrics,
        ],
    );
    // The one start-up line names both listeners.
    let http_addr: std::net::SocketAddr = server.http_addr().parse().unwrap();
    let mut client = server.client().await;
    let issued = issue_over(&mut client, "app_1", pb::Environment::Live).await;
    let body = crate::exposed::alerts(std::slice::from_ref(&issued.secret), "https://x.test");
    let (status, answer) = crate::exposed::post_to(http_addr, &github.signed(&body), body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert!(String::from_utf8_lossy(&answer).contains("true_positive"));
    let verdict = client
        .verify(pb::VerifyRequest {
            key: issued.secret,
            required_permissions: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.error.unwrap().code, "api_key_revoked");

    // The exposures are counted by channel and label; the revocation by channel.
    client
        .report_exposed_keys(op(pb::ReportExposedKeysRequest {
            keys: vec!["not a key".into()],
            source: "test".into(),
            url: String::new(),
        }))
        .await
        .unwrap();
    let text = scrape(&metrics).await;
    let exposures = "keyauth_exposures_total";
    for (labels, want) in [
        ([r#"channel="github""#, r#"label="true_positive""#], 1.0),
        ([r#"channel="rpc""#, r#"label="false_positive""#], 1.0),
    ] {
        assert_eq!(sample(&text, exposures, &labels), Some(want), "{text}");
    }
    assert_eq!(
        sample(
            &text,
            "keyauth_exposure_revocations_total",
            &[r#"channel="github""#]
        ),
        Some(1.0),
        "{text}"
    );

    // A body that trickles in is cut at --request-timeout: 408, the connection freed.
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(http_addr).await.unwrap();
    slow.write_all(
        format!(
            "POST {} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n[{{\"tok",
            keyauth_server::http::GITHUB_PATH
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_end(&mut answer),
    )
    .await
    .expect("answered before the client gave up")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));

    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0 with the HTTP listener too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    // Slow hashes and no cache: a cold Verify is in flight long enough to be interrupted.
    let server = ServerProcess::start(
        &db,
        &[
            "--argon2-m-cost",
            "65536",
            "--argon2-t-cost",
            "8",
            "--cache-max-bytes",
            "0",
        ],
    );
    let mut client = server.client().await;
    let issued = issue_over(&mut client, "app_1", pb::Environment::Test).await;

    let mut verifier = client.clone();
    let in_flight = tokio::spawn(async move {
        verifier
            .verify(pb::VerifyRequest {
                key: issued.secret,
                required_permissions: vec![],
            })
            .await
    });
    // Once the call is in the server, ask it to stop.
    wait_for_line(&server.lines, "method=\"Verify\"");
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert!(answer.into_inner().valid);
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
}

/// `gen-seal-key`: the bare key on stdout (so `> file` works), the rotation steps on stderr.
#[test]
fn gen_seal_key_prints_the_key_and_the_rotation_steps() {
    let out = keyauth().arg("gen-seal-key").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.trim_end_matches('\n');
    assert_eq!(key.len(), 64, "{stdout:?}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(keyauth_core::sealing::SealKey::parse(key).is_ok());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("KEYAUTH_SEAL_KEY_PREVIOUS"), "{stderr}");
    assert!(stderr.contains("--seal-key-previous-file"), "{stderr}");
    assert!(!stderr.contains(key), "the key only on stdout");
}
