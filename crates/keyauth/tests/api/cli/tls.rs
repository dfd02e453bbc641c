//! The CLI over TLS and mTLS, and with the verifier token, against `keyauth serve` processes.

use crate::helpers::ADMIN_TOKEN;
use crate::helpers::pki::{Pki, path, sqlite_url};
use crate::helpers::process::ServerProcess;

use super::run::{Run, assert_exit, assert_failed, keyauth, made_key, text};

/// `keyauth verify SECRET FLAGS…`, with no `KEYAUTH_…` settings from the environment.
async fn verify_with(secret: &str, flags: &[&str]) -> Run {
    let mut args = vec!["verify", secret];
    args.extend_from_slice(flags);
    keyauth(&args, &[], None).await
}

/// `https://localhost:PORT` of a server process (its certificate is for `localhost`).
fn https_url(server: &ServerProcess) -> String {
    let port = server.addr.rsplit(':').next().unwrap();
    format!("https://localhost:{port}")
}

/// Issues a test key through the CLI with `connection` flags; returns its secret.
async fn issue_with(connection: &[&str]) -> String {
    let mut args = vec![
        "keys", "issue", "--app", "app_tls", "--env", "test", "--name", "TLS", "--json",
    ];
    args.extend_from_slice(connection);
    let issued = keyauth(&args, &[("KEYAUTH_ADMIN_TOKEN", ADMIN_TOKEN)], None).await;
    text(&made_key(&issued)["secret"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_is_called_trusting_the_ca_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.serve(&dir, false);
    let url = https_url(&server);
    let ca = path(&pki.ca);
    let secret = issue_with(&["--server", &url, "--ca-cert", ca]).await;

    let valid = verify_with(&secret, &["--server", &url, "--ca-cert", ca]).await;
    assert_exit(&valid, 0);
    assert_eq!(valid.field("valid"), "yes");
    // The same from the environment.
    let valid = keyauth(
        &["verify", &secret],
        &[("KEYAUTH_SERVER", &url), ("KEYAUTH_CA_CERT", ca)],
        None,
    )
    .await;
    assert_exit(&valid, 0);

    // A CA that did not sign the server's certificate: the handshake fails, no answer.
    let untrusted = verify_with(
        &secret,
        &["--server", &url, "--ca-cert", path(&pki.server_cert)],
    )
    .await;
    assert_failed(&untrusted, 3, "UNAVAILABLE");
    // Plaintext to a TLS server: no answer either.
    let plain_url = format!("http://{}", server.addr);
    let plaintext = verify_with(&secret, &["--server", &plain_url, "--timeout", "3s"]).await;
    assert_exit(&plaintext, 3);

    // Without --ca-cert the system roots are trusted; the test CA is not one of them, so the
    // handshake fails: no answer (exit 3), not a usage error.
    let no_ca = verify_with(&secret, &["--server", &url]).await;
    assert_failed(&no_ca, 3, "UNAVAILABLE");
    // Usage errors, before any connection: a file that is not PEM, TLS files for a plaintext
    // server.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let bad_ca = verify_with(&secret, &["--server", &url, "--ca-cert", path(&garbage)]).await;
    assert_failed(&bad_ca, 2, "--ca-cert");
    let mixed = verify_with(&secret, &["--server", &plain_url, "--ca-cert", ca]).await;
    assert_exit(&mixed, 2);
    let scheme = verify_with(&secret, &["--server", "ftp://localhost:1"]).await;
    assert_exit(&scheme, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_server_needs_the_client_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let client_cert = dir.path().join("client.pem");
    let client_key = dir.path().join("client.key");
    std::fs::write(&client_cert, &pki.client.0).unwrap();
    std::fs::write(&client_key, &pki.client.1).unwrap();
    let server = pki.serve(&dir, true);
    let url = https_url(&server);
    let ca = path(&pki.ca);
    let identity = [
        "--client-cert",
        path(&client_cert),
        "--client-key",
        path(&client_key),
    ];
    let mut connection = vec!["--server", url.as_str(), "--ca-cert", ca];
    connection.extend_from_slice(&identity);
    let secret = issue_with(&connection).await;

    // Without a client certificate the server refuses the handshake: no answer.
    let without = verify_with(&secret, &["--server", &url, "--ca-cert", ca]).await;
    assert_exit(&without, 3);
    assert!(without.stdout.is_empty(), "{without:?}");

    let mut args = vec!["verify", secret.as_str()];
    args.extend_from_slice(&connection);
    let with = keyauth(&args, &[], None).await;
    assert_exit(&with, 0);
    assert_eq!(with.field("valid"), "yes");
    let with = keyauth(
        &["verify", &secret, "--server", &url],
        &[
            ("KEYAUTH_CA_CERT", ca),
            ("KEYAUTH_CLIENT_CERT", path(&client_cert)),
            ("KEYAUTH_CLIENT_KEY", path(&client_key)),
        ],
        None,
    )
    .await;
    assert_exit(&with, 0);

    // Half an identity is a usage error.
    let half = verify_with(
        &secret,
        &[
            "--server",
            &url,
            "--ca-cert",
            ca,
            "--client-cert",
            path(&client_cert),
        ],
    )
    .await;
    assert_failed(&half, 2, "--client-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_sends_the_verifier_token() {
    const VERIFIER_TOKEN: &str = "verifier-token-of-the-cli-tls-tests";
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&sqlite_url(&dir), &["--verifier-token", VERIFIER_TOKEN]);
    let url = format!("http://{}", server.addr);
    let secret = issue_with(&["--server", &url]).await;

    let given = verify_with(
        &secret,
        &["--server", &url, "--verifier-token", VERIFIER_TOKEN],
    )
    .await;
    assert_exit(&given, 0);
    assert_eq!(given.field("valid"), "yes");
    let from_env = keyauth(
        &["verify", &secret, "--server", &url, "--json"],
        &[("KEYAUTH_VERIFIER_TOKEN", VERIFIER_TOKEN)],
        None,
    )
    .await;
    assert_exit(&from_env, 0);
    assert_eq!(from_env.json()["valid"], true);

    let missing = verify_with(&secret, &["--server", &url]).await;
    assert_exit(&missing, 1);
    assert!(
        missing.stderr.contains("VERIFIER_UNAUTHENTICATED"),
        "{missing:?}"
    );
    assert!(missing.stderr.contains("--verifier-token"), "{missing:?}");
    assert!(missing.stdout.is_empty(), "{missing:?}");
    let wrong = verify_with(
        &secret,
        &["--server", &url, "--verifier-token", "not-the-token"],
    )
    .await;
    assert_exit(&wrong, 1);
    // The operator token is the principal `admin`, which holds every role (DESIGN §7); and
    // KEYAUTH_TOKEN takes the place of the verifier token.
    let operator = keyauth(
        &["verify", &secret, "--server", &url],
        &[("KEYAUTH_TOKEN", ADMIN_TOKEN)],
        None,
    )
    .await;
    assert_exit(&operator, 0);
}
