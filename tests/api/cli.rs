//! The operator CLI (`keyauth keys …`, `keyauth verify`): the built binary against the real
//! server, its output (tables and `--json`) and the exit codes scripts rely on.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

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
        vec!["roll", "key_000000000000", "--grace", "1 day"],
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
