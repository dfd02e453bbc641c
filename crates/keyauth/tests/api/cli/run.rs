//! Running the built `keyauth` binary and reading what it printed: the helpers of the CLI's
//! tests.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, register_secret, spawn};

/// What one run of the binary printed, and how it exited.
#[derive(Debug)]
pub(super) struct Run {
    pub(super) code: Option<i32>,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Run {
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {self:?}"))
    }

    /// The value of a `label  value` row of the human output.
    pub(super) fn field(&self, label: &str) -> String {
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
pub(super) async fn keyauth(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
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
            .env_remove("KEYAUTH_TOKEN")
            .env_remove("KEYAUTH_TOKEN_FILE")
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

/// Runs `scenario` against a fresh server on SQLite, then stops the server.
pub(super) async fn on_sqlite(scenario: impl AsyncFnOnce(&TestApp)) {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    scenario(&app).await;
    app.stop().await;
}

pub(super) fn server(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

/// `keyauth keys ARGS --server … ` with the operator token in KEYAUTH_ADMIN_TOKEN.
pub(super) async fn keys(app: &TestApp, args: &[&str]) -> Run {
    let server = server(app);
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", &server]);
    keyauth(&all, &[("KEYAUTH_ADMIN_TOKEN", ADMIN_TOKEN)], None).await
}

/// `keyauth verify ARGS` against the server, given in KEYAUTH_SERVER.
pub(super) async fn verify(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Run {
    let server = server(app);
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    keyauth(&all, &[("KEYAUTH_SERVER", &server)], stdin).await
}

#[track_caller]
pub(super) fn assert_exit(run: &Run, code: i32) {
    assert_eq!(run.code, Some(code), "{run:?}");
}

/// The JSON `run` printed, exiting with `code`.
#[track_caller]
pub(super) fn answer(run: &Run, code: i32) -> Value {
    assert_exit(run, code);
    run.json()
}

/// `run` exited with `code`, saying `says` on stderr.
#[track_caller]
pub(super) fn assert_failed(run: &Run, code: i32, says: &str) {
    assert_exit(run, code);
    assert!(run.stderr.contains(says), "{run:?}");
}

/// The lines of a table `run` printed (it exited 0): `lines` of them, the header first, its
/// columns exactly `columns` (separated by `|`), in order.
#[track_caller]
pub(super) fn table<'a>(run: &'a Run, lines: usize, columns: &str) -> Vec<&'a str> {
    assert_exit(run, 0);
    let table: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(table.len(), lines, "{run:?}");
    let header: Vec<&str> = table[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(header, columns.split('|').collect::<Vec<_>>(), "{run:?}");
    table
}

/// `keyauth keys issue --app APPLICATION --env ENV --name NAME MORE…` against `app`.
pub(super) async fn issue(app: &TestApp, application: &str, env: &str, more: &[&str]) -> Run {
    let mut args = vec!["issue", "--app", application, "--env", env];
    args.extend_from_slice(more);
    keys(app, &args).await
}

/// The JSON answer of a command that made a key (`keys issue|roll … --json`), which exited 0;
/// its secret is registered for the leak checks.
#[track_caller]
pub(super) fn made_key(run: &Run) -> Value {
    assert_exit(run, 0);
    let body = run.json();
    register_secret(body["secret"].as_str().unwrap());
    body
}

/// A JSON string, owned.
#[track_caller]
pub(super) fn text(value: &Value) -> String {
    value.as_str().unwrap().to_owned()
}

/// The entries (`what`: `keys`, `events`) of a listing printed as JSON, which exited 0.
#[track_caller]
pub(super) fn entries(run: &Run, what: &str) -> Vec<Value> {
    assert_exit(run, 0);
    match &run.json()[what] {
        Value::Array(entries) => entries.clone(),
        _ => panic!("no {what:?} array: {run:?}"),
    }
}

/// `keyauth keys COMMAND --app APPLICATION --page-size 1 --all --json`: the entries (`what`) of
/// every page, followed to the last (its `next_page_token` empty).
pub(super) async fn every_page(
    app: &TestApp,
    command: &str,
    application: &str,
    what: &str,
) -> Vec<Value> {
    let args = [
        command,
        "--app",
        application,
        "--page-size",
        "1",
        "--all",
        "--json",
    ];
    let run = keys(app, &args).await;
    let entries = entries(&run, what);
    assert_eq!(run.json()["next_page_token"], "", "{run:?}");
    entries
}
