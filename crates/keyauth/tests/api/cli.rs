//! The operator CLI (`keyauth keys …`, `keyauth verify`): the built binary against the real
//! server, its output (tables and `--json`) and the exit codes scripts rely on; over TLS and
//! mTLS, and with the verifier token.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::pki::{Pki, path, sqlite_url};
use crate::helpers::process::ServerProcess;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, register_secret, spawn};

/// What one run of the binary printed, and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {self:?}"))
    }

    /// The value of a `label  value` row of the human output.
    fn field(&self, label: &str) -> String {
        self.stdout
            .lines()
            .find_map(|line| {
                line.strip_prefix(label)
                    .filter(|rest| rest.starts_with("  "))
                    .map(|rest| rest.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {label:?} row: {self:?}"))
    }
}

/// Runs `keyauth ARGS` with no `KEYAUTH_…` settings from the environment but `env`.
async fn keyauth(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyauth"));
        command
            .args(&args)
            .env_remove("KEYAUTH_SERVER")
            .env_remove("KEYAUTH_ADMIN_TOKEN")
            .env_remove("KEYAUTH_VERIFIER_TOKEN")
            .env_remove("KEYAUTH_CA_CERT")
            .env_remove("KEYAUTH_CLIENT_CERT")
            .env_remove("KEYAUTH_CLIENT_KEY")
            .envs(env)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run keyauth");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn server(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

/// `keyauth keys ARGS --server … ` with the operator token in KEYAUTH_ADMIN_TOKEN.
async fn keys(app: &TestApp, args: &[&str]) -> Run {
    let server = server(app);
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", &server]);
    keyauth(&all, &[("KEYAUTH_ADMIN_TOKEN", ADMIN_TOKEN)], None).await
}

/// `keyauth verify ARGS` against the server, given in KEYAUTH_SERVER.
async fn verify(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Run {
    let server = server(app);
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    keyauth(&all, &[("KEYAUTH_SERVER", &server)], stdin).await
}

#[track_caller]
fn assert_exit(run: &Run, code: i32) {
    assert_eq!(run.code, Some(code), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_get_list_roll_revoke_verify() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };

    // Issue, human output: the secret on stdout, the warning on stderr.
    let issued = keys(
        &app,
        &[
            "issue",
            "--app",
            "app_cli",
            "--env",
            "live",
            "--name",
            "Read-only Patient Access",
            "--permission",
            "patients:read",
            "--permission",
            "encounters:read",
            "--expires",
            "2099-12-31T00:00:00Z",
            "--metadata",
            "team=analytics",
        ],
    )
    .await;
    assert_exit(&issued, 0);
    let secret = issued.field("secret");
    register_secret(&secret);
    assert!(secret.starts_with("sk_live_"), "{issued:?}");
    assert!(issued.stderr.contains("shown this once"), "{issued:?}");
    let restricted_id = issued.field("id");
    assert_eq!(issued.field("restricted"), "yes");
    assert_eq!(issued.field("expires"), "2099-12-31T00:00:00Z");
    // Each resource once, whatever order the server keeps them in.
    let mut permissions: Vec<String> = issued
        .field("permissions")
        .split(' ')
        .map(str::to_owned)
        .collect();
    permissions.sort();
    assert_eq!(permissions, ["encounters:read", "patients:read"]);

    // Issue, JSON: one object with the secret and the key (a second later: newest first).
    app.clock.advance(std::time::Duration::from_secs(1));
    let issued = keys(
        &app,
        &[
            "issue", "--app", "app_cli", "--env", "test", "--name", "Backend", "--json",
        ],
    )
    .await;
    assert_exit(&issued, 0);
    let body = issued.json();
    let standard_secret = body["secret"].as_str().unwrap().to_owned();
    register_secret(&standard_secret);
    let standard_id = body["key"]["id"].as_str().unwrap().to_owned();
    assert!(standard_secret.starts_with("sk_test_"));
    assert_eq!(body["key"]["environment"], "test");
    assert_eq!(body["key"]["state"], "active");
    assert_eq!(body["key"]["restricted"], false);
    assert_eq!(body["key"]["expire_time"], Value::Null);
    assert!(
        body["key"]["create_time"]
            .as_str()
            .unwrap()
            .parse::<prost_types::Timestamp>()
            .is_ok(),
        "{body}"
    );

    // Get, both outputs; never a secret.
    let got = keys(&app, &["get", &restricted_id]).await;
    assert_exit(&got, 0);
    assert_eq!(got.field("name"), "Read-only Patient Access");
    assert_eq!(got.field("metadata.team"), "analytics");
    assert!(!got.stdout.contains(&secret));
    let got = keys(&app, &["get", &restricted_id, "--json"]).await;
    assert_exit(&got, 0);
    assert_eq!(got.json()["key"]["metadata"]["team"], "analytics");
    assert_eq!(got.json()["key"]["expire_time"], "2099-12-31T00:00:00Z");

    // List: a table with both keys, newest first; --env filters; pages join with --all.
    let listed = keys(&app, &["list", "--app", "app_cli"]).await;
    assert_exit(&listed, 0);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{listed:?}");
    for column in [
        "ID",
        "ENV",
        "NAME",
        "STATE",
        "RESTRICTED",
        "CREATED",
        "EXPIRES",
    ] {
        assert!(lines[0].contains(column), "{listed:?}");
    }
    assert!(lines[0].ends_with("LAST USED"), "{listed:?}");
    assert!(lines[1].starts_with(&standard_id), "{listed:?}");
    assert!(lines[2].starts_with(&restricted_id), "{listed:?}");
    // Aligned: the ENV column starts at the same place on every line.
    let env_at = lines[0].find("ENV").unwrap();
    assert_eq!(&lines[1][env_at..env_at + 4], "test");
    assert_eq!(&lines[2][env_at..env_at + 4], "live");

    let live = keys(
        &app,
        &["list", "--app", "app_cli", "--env", "live", "--json"],
    )
    .await;
    assert_exit(&live, 0);
    let live = live.json();
    assert_eq!(live["keys"].as_array().unwrap().len(), 1);
    assert_eq!(live["keys"][0]["id"], restricted_id.as_str());

    let page = keys(
        &app,
        &["list", "--app", "app_cli", "--page-size", "1", "--json"],
    )
    .await;
    assert_exit(&page, 0);
    let page = page.json();
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let next = keys(
        &app,
        &[
            "list",
            "--app",
            "app_cli",
            "--page-size",
            "1",
            "--page-token",
            &token,
            "--json",
        ],
    )
    .await;
    assert_exit(&next, 0);
    assert_eq!(next.json()["keys"][0]["id"], restricted_id.as_str());
    let every = keys(
        &app,
        &[
            "list",
            "--app",
            "app_cli",
            "--page-size",
            "1",
            "--all",
            "--json",
        ],
    )
    .await;
    assert_exit(&every, 0);
    assert_eq!(every.json()["keys"].as_array().unwrap().len(), 2);
    assert_eq!(every.json()["next_page_token"], "");

    // Verify: valid → 0, also with a held permission, also read from stdin.
    let valid = verify(&app, &[&standard_secret], None).await;
    assert_exit(&valid, 0);
    assert_eq!(valid.field("valid"), "yes");
    assert_eq!(valid.field("id"), standard_id);
    let valid = verify(
        &app,
        &[&secret, "--permission", "patients:read", "--json"],
        None,
    )
    .await;
    assert_exit(&valid, 0);
    assert_eq!(valid.json()["valid"], true);
    assert_eq!(valid.json()["http_status"], 200);
    let valid = verify(&app, &["-"], Some(&format!("Bearer {secret}\n"))).await;
    assert_exit(&valid, 0);
    // A permission the key lacks is a denial: 1, with the REST error.
    let lacking = verify(
        &app,
        &[&secret, "--permission", "patients:write", "--json"],
        None,
    )
    .await;
    assert_exit(&lacking, 1);
    assert_eq!(lacking.json()["valid"], false);
    assert_eq!(lacking.json()["error"]["code"], "insufficient_permissions");
    assert_eq!(lacking.json()["http_status"], 403);

    // Roll: a new secret, the old key until the grace period ends.
    let rolled = keys(&app, &["roll", &standard_id, "--grace", "1h", "--json"]).await;
    assert_exit(&rolled, 0);
    let rolled = rolled.json();
    let new_secret = rolled["secret"].as_str().unwrap().to_owned();
    register_secret(&new_secret);
    assert_ne!(new_secret, standard_secret);
    assert_eq!(rolled["previous_key"]["id"], standard_id.as_str());
    assert_eq!(
        rolled["previous_key"]["replaced_by_key_id"],
        rolled["key"]["id"]
    );
    assert_exit(&verify(&app, &[&new_secret], None).await, 0);
    // Rolling it again is a refusal.
    let again = keys(&app, &["roll", &standard_id]).await;
    assert_exit(&again, 1);
    assert!(again.stderr.contains("FAILED_PRECONDITION"), "{again:?}");

    // Revoke: the key is refused at once, verify exits 1 with the REST error.
    let revoked = keys(&app, &["revoke", &restricted_id, "--reason", "leaked"]).await;
    assert_exit(&revoked, 0);
    assert_eq!(revoked.field("state"), "revoked");
    assert_eq!(revoked.field("revoke reason"), "leaked");
    let denied = verify(&app, &[&secret], None).await;
    assert_exit(&denied, 1);
    assert_eq!(denied.field("valid"), "no");
    assert_eq!(denied.field("error"), "api_key_revoked");
    let denied = verify(&app, &[&secret, "--json"], None).await;
    assert_exit(&denied, 1);
    assert_eq!(denied.json()["error"]["code"], "api_key_revoked");
    assert_eq!(denied.json()["http_status"], 401);

    // Garbage is a denial too, and an unknown key id a refusal.
    assert_exit(&verify(&app, &["sk_test_garbage"], None).await, 1);
    let missing = keys(&app, &["get", "key_000000000000"]).await;
    assert_exit(&missing, 1);
    assert!(missing.stderr.contains("NOT_FOUND"), "{missing:?}");

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let cases: Vec<Vec<&str>> = vec![
        // Malformed values, found before any call.
        vec![
            "issue",
            "--app",
            "a",
            "--env",
            "test",
            "--name",
            "n",
            "--permission",
            "patients",
        ],
        vec!["issue", "--app", "a", "--env", "staging", "--name", "n"],
        vec![
            "issue",
            "--app",
            "a",
            "--env",
            "test",
            "--name",
            "n",
            "--expires",
            "soon",
        ],
        vec![
            "issue",
            "--app",
            "a",
            "--env",
            "test",
            "--name",
            "n",
            "--metadata",
            "novalue",
        ],
        vec!["roll", "key_000000000000", "--grace", "soon"],
        vec!["list", "--app", "a", "--page-size", "0"],
        // Missing arguments, unknown subcommands.
        vec!["issue", "--app", "a"],
        vec!["get"],
        vec!["rotate", "key_000000000000"],
    ];
    for args in cases {
        let run = keys(&app, &args).await;
        assert_exit(&run, 2);
        assert!(!run.stderr.is_empty(), "{run:?}");
    }
    let run = verify(&app, &["sk_test_x", "--permission", "patients:"], None).await;
    assert_exit(&run, 2);
    // No operator token at all is a usage error, caught before calling.
    let run = keyauth(
        &["keys", "get", "key_000000000000", "--server", &server(&app)],
        &[],
        None,
    )
    .await;
    assert_exit(&run, 2);
    assert!(run.stderr.contains("KEYAUTH_ADMIN_TOKEN"), "{run:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_token_exits_1() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let run = keyauth(
        &[
            "keys",
            "--admin-token",
            "not-the-operator-token",
            "list",
            "--app",
            "app_cli",
            "--server",
            &server(&app),
        ],
        &[],
        None,
    )
    .await;
    assert_exit(&run, 1);
    assert!(run.stderr.contains("UNAUTHENTICATED"), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_exits_3() {
    // A port where nothing listens: bind one, take its number, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let run = keyauth(
        &["verify", "sk_test_anything", "--server", &server],
        &[],
        None,
    )
    .await;
    assert_exit(&run, 3);
    assert!(run.stderr.contains("UNAVAILABLE"), "{run:?}");
    let run = keyauth(
        &["keys", "list", "--app", "app_cli", "--timeout", "2s"],
        &[
            ("KEYAUTH_SERVER", &server),
            ("KEYAUTH_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
        None,
    )
    .await;
    assert_exit(&run, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_the_audit_trail_of_a_key_and_an_application() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let issued = keys(
        &app,
        &[
            "issue",
            "--app",
            "app_events",
            "--env",
            "test",
            "--name",
            "Audited",
            "--json",
        ],
    )
    .await;
    assert_exit(&issued, 0);
    register_secret(issued.json()["secret"].as_str().unwrap());
    let old_id = issued.json()["key"]["id"].as_str().unwrap().to_owned();
    let rolled = keys(&app, &["roll", &old_id, "--grace", "1h", "--json"]).await;
    assert_exit(&rolled, 0);
    register_secret(rolled.json()["secret"].as_str().unwrap());
    let new_id = rolled.json()["key"]["id"].as_str().unwrap().to_owned();
    assert_exit(
        &keys(&app, &["revoke", &new_id, "--reason", "leaked"]).await,
        0,
    );

    // The application's trail as a table, newest first.
    let listed = keys(&app, &["events", "--app", "app_events"]).await;
    assert_exit(&listed, 0);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{listed:?}");
    for column in [
        "SEQUENCE",
        "TIME",
        "TYPE",
        "KEY",
        "RELATED KEY",
        "OPERATOR",
        "PEER",
    ] {
        assert!(lines[0].contains(column), "{listed:?}");
    }
    assert!(lines[0].ends_with("REQUEST ID"), "{listed:?}");
    let type_at = lines[0].find("TYPE").unwrap();
    let cells =
        |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_owned).collect() };
    assert!(lines[1][type_at..].starts_with("revoked"), "{listed:?}");
    assert!(lines[2][type_at..].starts_with("rolled"), "{listed:?}");
    assert!(lines[3][type_at..].starts_with("issued"), "{listed:?}");
    let revoke = cells(lines[1]);
    assert_eq!(
        (revoke[3].as_str(), revoke[4].as_str()),
        (new_id.as_str(), "-")
    );
    let roll = cells(lines[2]);
    assert_eq!(
        (roll[3].as_str(), roll[4].as_str()),
        (old_id.as_str(), new_id.as_str())
    );
    let issue = cells(lines[3]);
    assert_eq!(issue[3], old_id);
    for row in [&revoke, &roll, &issue] {
        assert_eq!(row.len(), 8, "{listed:?}");
        assert!(row[1].parse::<prost_types::Timestamp>().is_ok(), "{row:?}");
        assert!(row[5].starts_with("op_"), "{row:?}");
        assert!(row[6].starts_with("127.0.0.1:"), "{row:?}");
    }
    let sequences: Vec<i64> = [&revoke, &roll, &issue]
        .iter()
        .map(|row| row[0].parse().unwrap())
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] > w[1]), "{listed:?}");

    // One key's trail as JSON: its issue and its roll (the revoke was of the new key).
    let by_key = keys(&app, &["events", "--key", &old_id, "--json"]).await;
    assert_exit(&by_key, 0);
    let body = by_key.json();
    let events = body["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rolled", "issued"], "{body}");
    assert_eq!(events[0]["key_id"], old_id.as_str());
    assert_eq!(events[0]["related_key_id"], new_id.as_str());
    assert_eq!(events[1]["related_key_id"], Value::Null);
    assert_eq!(events[1]["application_id"], "app_events");
    assert!(
        events[1]["operator_id"]
            .as_str()
            .unwrap()
            .starts_with("op_")
    );
    assert!(!events[1]["request_id"].as_str().unwrap().is_empty());
    assert!(
        events[1]["event_time"]
            .as_str()
            .unwrap()
            .parse::<prost_types::Timestamp>()
            .is_ok(),
        "{body}"
    );
    assert_eq!(body["next_page_token"], "");
    // The new key's trail: its revoke, and the roll it came from.
    let by_new_key = keys(&app, &["events", "--key", &new_id, "--json"]).await;
    assert_exit(&by_new_key, 0);
    let kinds: Vec<String> = by_new_key.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["revoked", "rolled"]);

    // Pages: one at a time with a note on stderr, or all of them with --all.
    let page = keys(&app, &["events", "--app", "app_events", "--page-size", "1"]).await;
    assert_exit(&page, 0);
    assert_eq!(page.stdout.lines().count(), 2, "{page:?}");
    assert!(page.stderr.contains("--page-token"), "{page:?}");
    let every = keys(
        &app,
        &[
            "events",
            "--app",
            "app_events",
            "--page-size",
            "1",
            "--all",
            "--json",
        ],
    )
    .await;
    assert_exit(&every, 0);
    assert_eq!(every.json()["events"].as_array().unwrap().len(), 3);
    assert_eq!(every.json()["next_page_token"], "");

    // No filter: every event; with a type and a time range. At most one of --key and --app,
    // found before any call; a malformed id is the server's refusal.
    let all = keys(&app, &["events", "--all", "--json"]).await;
    assert_exit(&all, 0);
    assert_eq!(all.json()["events"].as_array().unwrap().len(), 3);
    let rolled = keys(
        &app,
        &[
            "events",
            "--type",
            "rolled",
            "--type",
            "revoked",
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "9000-01-01T00:00:00Z",
            "--json",
        ],
    )
    .await;
    assert_exit(&rolled, 0);
    let types: Vec<_> = rolled.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !types.is_empty() && types.iter().all(|t| t == "rolled" || t == "revoked"),
        "{types:?}"
    );
    let none = keys(
        &app,
        &["events", "--until", "2000-01-01T00:00:00Z", "--json"],
    )
    .await;
    assert_exit(&none, 0);
    assert!(none.json()["events"].as_array().unwrap().is_empty());
    assert_exit(&keys(&app, &["events", "--type", "nonsense"]).await, 2);
    assert_exit(
        &keys(&app, &["events", "--key", &old_id, "--app", "app_events"]).await,
        2,
    );
    let bad = keys(&app, &["events", "--key", "not-a-key-id"]).await;
    assert_exit(&bad, 1);
    assert!(bad.stderr.contains("INVALID_ARGUMENT"), "{bad:?}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// TLS, mTLS and the verifier token, against `keyauth serve` processes.

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
    assert_exit(&issued, 0);
    let secret = issued.json()["secret"].as_str().unwrap().to_owned();
    register_secret(&secret);
    secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_is_called_trusting_the_ca_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.serve(&dir, false);
    let url = https_url(&server);
    let ca = path(&pki.ca);
    let secret = issue_with(&["--server", &url, "--ca-cert", ca]).await;

    let valid = keyauth(
        &["verify", &secret, "--server", &url, "--ca-cert", ca],
        &[],
        None,
    )
    .await;
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
    let untrusted = keyauth(
        &[
            "verify",
            &secret,
            "--server",
            &url,
            "--ca-cert",
            path(&pki.server_cert),
        ],
        &[],
        None,
    )
    .await;
    assert_exit(&untrusted, 3);
    assert!(untrusted.stderr.contains("UNAVAILABLE"), "{untrusted:?}");
    // Plaintext to a TLS server: no answer either.
    let plaintext = keyauth(
        &[
            "verify",
            &secret,
            "--server",
            &format!("http://{}", server.addr),
            "--timeout",
            "3s",
        ],
        &[],
        None,
    )
    .await;
    assert_exit(&plaintext, 3);

    // Without --ca-cert the system roots are trusted; the test CA is not one of them, so the
    // handshake fails: no answer (exit 3), not a usage error.
    let no_ca = keyauth(&["verify", &secret, "--server", &url], &[], None).await;
    assert_exit(&no_ca, 3);
    assert!(no_ca.stderr.contains("UNAVAILABLE"), "{no_ca:?}");
    // Usage errors, before any connection: a file that is not PEM, TLS files for a plaintext
    // server.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let bad_ca = keyauth(
        &[
            "verify",
            &secret,
            "--server",
            &url,
            "--ca-cert",
            path(&garbage),
        ],
        &[],
        None,
    )
    .await;
    assert_exit(&bad_ca, 2);
    assert!(bad_ca.stderr.contains("--ca-cert"), "{bad_ca:?}");
    let mixed = keyauth(
        &[
            "verify",
            &secret,
            "--server",
            &format!("http://{}", server.addr),
            "--ca-cert",
            ca,
        ],
        &[],
        None,
    )
    .await;
    assert_exit(&mixed, 2);
    let scheme = keyauth(
        &["verify", &secret, "--server", "ftp://localhost:1"],
        &[],
        None,
    )
    .await;
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
    let without = keyauth(
        &["verify", &secret, "--server", &url, "--ca-cert", ca],
        &[],
        None,
    )
    .await;
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
    let half = keyauth(
        &[
            "verify",
            &secret,
            "--server",
            &url,
            "--ca-cert",
            ca,
            "--client-cert",
            path(&client_cert),
        ],
        &[],
        None,
    )
    .await;
    assert_exit(&half, 2);
    assert!(half.stderr.contains("--client-key"), "{half:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_sends_the_verifier_token() {
    const VERIFIER_TOKEN: &str = "verifier-token-of-the-cli-tests";
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&sqlite_url(&dir), &["--verifier-token", VERIFIER_TOKEN]);
    let url = format!("http://{}", server.addr);
    let secret = issue_with(&["--server", &url]).await;

    let given = keyauth(
        &[
            "verify",
            &secret,
            "--server",
            &url,
            "--verifier-token",
            VERIFIER_TOKEN,
        ],
        &[],
        None,
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

    let missing = keyauth(&["verify", &secret, "--server", &url], &[], None).await;
    assert_exit(&missing, 1);
    assert!(
        missing.stderr.contains("VERIFIER_UNAUTHENTICATED"),
        "{missing:?}"
    );
    assert!(missing.stderr.contains("--verifier-token"), "{missing:?}");
    assert!(missing.stdout.is_empty(), "{missing:?}");
    let wrong = keyauth(
        &[
            "verify",
            &secret,
            "--server",
            &url,
            "--verifier-token",
            "not-the-token",
        ],
        &[],
        None,
    )
    .await;
    assert_exit(&wrong, 1);
    // The operator token is not a verifier token.
    let operator = keyauth(
        &["verify", &secret, "--server", &url],
        &[("KEYAUTH_VERIFIER_TOKEN", ADMIN_TOKEN)],
        None,
    )
    .await;
    assert_exit(&operator, 1);
}

// ---------------------------------------------------------------------------------------------
// `keyauth scan`: keys in files, found offline.

/// A fresh key for a file, remembered for the leak checks.
fn leaked_key(env: keyauth_core::key::Environment) -> keyauth_core::key::PresentedKey {
    let key = keyauth_core::key::PresentedKey::generate(env).unwrap();
    register_secret(key.expose());
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_reports_keys_in_files_redacted() {
    use keyauth_core::key::Environment;
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    let live = leaked_key(Environment::Live);
    let test = leaked_key(Environment::Test);
    let in_git = leaked_key(Environment::Live);
    let in_binary = leaked_key(Environment::Live);
    let typo = leaked_key(Environment::Live);
    let mut bad_checksum = typo.expose().to_owned();
    bad_checksum.replace_range(
        20..21,
        if &bad_checksum[20..21] == "x" {
            "y"
        } else {
            "x"
        },
    );
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join(".git/objects")).unwrap();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(
        root.join("src/config.rs"),
        format!("// settings\n\nconst KEY: &str = \"{}\";\n", live.expose()),
    )
    .unwrap();
    std::fs::write(
        root.join(".env"),
        format!(
            "DATABASE_URL=postgres://db\nKEYAUTH_KEY={}\n",
            test.expose()
        ),
    )
    .unwrap();
    std::fs::write(root.join(".git/objects/ab12"), in_git.expose()).unwrap();
    let mut binary = vec![0u8, 1, 2];
    binary.extend_from_slice(in_binary.expose().as_bytes());
    std::fs::write(root.join("blob.bin"), binary).unwrap();
    std::fs::write(
        root.join("docs/keys.md"),
        format!("Keys look like `sk_live_…`.\nA typo: {bad_checksum}\n"),
    )
    .unwrap();

    let dir = root.to_str().unwrap();
    let run = keyauth(&["scan", dir], &[], None).await;
    assert_exit(&run, 1);
    assert_eq!(
        run.stdout,
        format!(
            "{dir}/.env:2: {} (test)\n{dir}/src/config.rs:3: {} (live)\n",
            test.redacted(),
            live.redacted()
        )
    );
    for key in [&live, &test, &in_git, &in_binary] {
        assert!(!run.stdout.contains(key.expose()) && !run.stderr.contains(key.expose()));
    }
    assert!(
        run.stderr.contains("2 key(s) found in 3 file(s)"),
        "{run:?}"
    );
    assert!(run.stderr.contains("1 binary file(s) skipped"), "{run:?}");

    let verbose = keyauth(&["scan", "--verbose", dir], &[], None).await;
    assert_exit(&verbose, 1);
    assert!(
        verbose
            .stderr
            .contains("2 string(s) start like a key but are not one"),
        "{verbose:?}"
    );

    // A file given directly; JSON output.
    let env_file = root.join(".env");
    let json = keyauth(&["scan", "--json", env_file.to_str().unwrap()], &[], None).await;
    assert_exit(&json, 1);
    let found = &json.json()["found"];
    assert_eq!(found[0]["line"], 2);
    assert_eq!(found[0]["key"], test.redacted());
    assert_eq!(found[0]["environment"], "test");

    // A clean tree: exit 0.
    let clean = tempfile::tempdir().unwrap();
    std::fs::write(clean.path().join("main.rs"), "fn main() {}\n").unwrap();
    let run = keyauth(&["scan", clean.path().to_str().unwrap()], &[], None).await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "");

    // A path that does not exist, or --report without the operator token: usage errors.
    let missing = root.join("no-such-file");
    let run = keyauth(&["scan", dir, missing.to_str().unwrap()], &[], None).await;
    assert_exit(&run, 2);
    assert!(run.stderr.contains("no-such-file"), "{run:?}");
    assert_exit(&keyauth(&["scan"], &[], None).await, 2);
    assert_exit(&keyauth(&["scan", "--report", dir], &[], None).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_report_has_the_server_revoke_what_it_finds() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let (key, secret) = app
        .issue(crate::helpers::standard(
            "app_scan",
            keyauth_proto::Environment::Live,
        ))
        .await
        .unwrap();
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("app.yaml"), format!("api_key: {secret}\n")).unwrap();
    let dir = tree.path().to_str().unwrap();
    let server = server(&app);

    let run = keyauth(
        &["scan", dir, "--report", "--server", &server],
        &[("KEYAUTH_ADMIN_TOKEN", ADMIN_TOKEN)],
        None,
    )
    .await;
    assert_exit(&run, 1);
    assert!(run.stdout.ends_with("(live): revoked\n"), "{run:?}");
    assert!(!run.stdout.contains(&secret) && !run.stderr.contains(&secret));
    assert_eq!(
        app.verify(&secret).await.error.unwrap().code,
        "api_key_revoked"
    );
    let events = crate::exposed::events_of(&app, "app_scan").await;
    let exposed = crate::exposed::exposed(&events);
    assert_eq!(exposed.len(), 1);
    assert_eq!(exposed[0].key_id, key.id);
    assert_eq!(exposed[0].source, "keyauth-scan");
    assert!(
        exposed[0].url.starts_with("file://") && exposed[0].url.ends_with("app.yaml"),
        "{:?}",
        exposed[0]
    );

    // Again: already revoked, nothing more.
    let again = keyauth(
        &["scan", dir, "--report", "--server", &server],
        &[("KEYAUTH_ADMIN_TOKEN", ADMIN_TOKEN)],
        None,
    )
    .await;
    assert_exit(&again, 1);
    assert!(again.stdout.ends_with(": already revoked\n"), "{again:?}");
    assert_eq!(crate::exposed::events_of(&app, "app_scan").await, events);
    app.stop().await;
}
