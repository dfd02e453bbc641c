//! The operator CLI (`keyauth keys …`, `keyauth verify`, `keyauth scan`): the built binary
//! against the real server, its output (tables and `--json`) and the exit codes scripts rely
//! on; over TLS and mTLS, and with the verifier token (`tls`); keys in files (`scan`).

mod run;
mod scan;
mod tls;

use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, register_secret};
use run::{
    answer, assert_exit, assert_failed, entries, every_page, issue, keyauth, keys, made_key,
    on_sqlite, server, table, text, verify,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_get_list_roll_revoke_verify() {
    on_sqlite(async |app| {
        // Issue, human output: the secret on stdout, the warning on stderr.
        let issued = issue(
            app,
            "app_cli",
            "live",
            &[
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
        let body = made_key(&issue(app, "app_cli", "test", &["--name", "Backend", "--json"]).await);
        let standard_secret = text(&body["secret"]);
        let standard_id = text(&body["key"]["id"]);
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
        let got = keys(app, &["get", &restricted_id]).await;
        assert_exit(&got, 0);
        assert_eq!(got.field("name"), "Read-only Patient Access");
        assert_eq!(got.field("metadata.team"), "analytics");
        assert!(!got.stdout.contains(&secret));
        let got = keys(app, &["get", &restricted_id, "--json"]).await;
        assert_exit(&got, 0);
        assert_eq!(got.json()["key"]["metadata"]["team"], "analytics");
        assert_eq!(got.json()["key"]["expire_time"], "2099-12-31T00:00:00Z");

        // List: a table with both keys, newest first; --env filters; pages join with --all.
        let listed = keys(app, &["list", "--app", "app_cli"]).await;
        let columns = "ID|ENV|NAME|STATE|RESTRICTED|CREATED|EXPIRES|LAST USED";
        let lines = table(&listed, 3, columns);
        assert!(lines[1].starts_with(&standard_id), "{listed:?}");
        assert!(lines[2].starts_with(&restricted_id), "{listed:?}");
        // Aligned: the ENV column starts at the same place on every line.
        let env_at = lines[0].find("ENV").unwrap();
        assert_eq!(&lines[1][env_at..env_at + 4], "test");
        assert_eq!(&lines[2][env_at..env_at + 4], "live");

        let live = keys(
            app,
            &["list", "--app", "app_cli", "--env", "live", "--json"],
        )
        .await;
        let live = entries(&live, "keys");
        assert_eq!(live.len(), 1);
        assert_eq!(live[0]["id"], restricted_id.as_str());

        let page = keys(
            app,
            &["list", "--app", "app_cli", "--page-size", "1", "--json"],
        )
        .await;
        assert_eq!(entries(&page, "keys").len(), 1);
        let token = text(&page.json()["next_page_token"]);
        assert!(!token.is_empty());
        let next = keys(
            app,
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
        assert_eq!(every_page(app, "list", "app_cli", "keys").await.len(), 2);

        // Verify: valid → 0, also with a held permission, also read from stdin.
        let valid = verify(app, &[&standard_secret], None).await;
        assert_exit(&valid, 0);
        assert_eq!(valid.field("valid"), "yes");
        assert_eq!(valid.field("id"), standard_id);
        let args = [secret.as_str(), "--permission", "patients:read", "--json"];
        let valid = answer(&verify(app, &args, None).await, 0);
        assert_eq!(valid["valid"], true);
        assert_eq!(valid["http_status"], 200);
        let valid = verify(app, &["-"], Some(&format!("Bearer {secret}\n"))).await;
        assert_exit(&valid, 0);
        // A permission the key lacks is a denial: 1, with the REST error.
        let args = [secret.as_str(), "--permission", "patients:write", "--json"];
        let lacking = answer(&verify(app, &args, None).await, 1);
        assert_eq!(lacking["valid"], false);
        assert_eq!(lacking["error"]["code"], "insufficient_permissions");
        assert_eq!(lacking["http_status"], 403);

        // Roll: a new secret, the old key until the grace period ends.
        let rolled = made_key(&keys(app, &["roll", &standard_id, "--grace", "1h", "--json"]).await);
        let new_secret = text(&rolled["secret"]);
        assert_ne!(new_secret, standard_secret);
        assert_eq!(rolled["previous_key"]["id"], standard_id.as_str());
        assert_eq!(
            rolled["previous_key"]["replaced_by_key_id"],
            rolled["key"]["id"]
        );
        assert_exit(&verify(app, &[&new_secret], None).await, 0);
        // Rolling it again is a refusal.
        let again = keys(app, &["roll", &standard_id]).await;
        assert_failed(&again, 1, "FAILED_PRECONDITION");

        // Revoke: the key is refused at once, verify exits 1 with the REST error.
        let revoked = keys(app, &["revoke", &restricted_id, "--reason", "leaked"]).await;
        assert_exit(&revoked, 0);
        assert_eq!(revoked.field("state"), "revoked");
        assert_eq!(revoked.field("revoke reason"), "leaked");
        let denied = verify(app, &[&secret], None).await;
        assert_exit(&denied, 1);
        assert_eq!(denied.field("valid"), "no");
        assert_eq!(denied.field("error"), "api_key_revoked");
        let denied = answer(&verify(app, &[&secret, "--json"], None).await, 1);
        assert_eq!(denied["error"]["code"], "api_key_revoked");
        assert_eq!(denied["http_status"], 401);

        // Garbage is a denial too, and an unknown key id a refusal.
        assert_exit(&verify(app, &["sk_test_garbage"], None).await, 1);
        let missing = keys(app, &["get", "key_000000000000"]).await;
        assert_failed(&missing, 1, "NOT_FOUND");
    })
    .await;
}

/// `keys list --unused-for`: keys not used for that long, never-used ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_unused_for_names_the_stale_keys() {
    on_sqlite(async |app| {
        let used = made_key(&issue(app, "app_stale", "test", &["--name", "Used", "--json"]).await);
        let unused =
            made_key(&issue(app, "app_stale", "test", &["--name", "Idle", "--json"]).await);
        let verified = verify(app, &[text(&used["secret"]).as_str()], None).await;
        assert_exit(&verified, 0);
        let listed = keys(
            app,
            &["list", "--app", "app_stale", "--unused-for", "1h", "--json"],
        )
        .await;
        let ids: Vec<Value> = entries(&listed, "keys")
            .iter()
            .map(|k| k["id"].clone())
            .collect();
        assert_eq!(ids, [unused["key"]["id"].clone()], "{listed:?}");
        let bad = keys(app, &["list", "--app", "app_stale", "--unused-for", "soon"]).await;
        assert_exit(&bad, 2);
    })
    .await;
}

/// `keys usage`: a key's verifications per hour or day, as a table or JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_shows_a_keys_verifications() {
    on_sqlite(async |app| {
        let made = made_key(&issue(app, "app_used", "test", &["--name", "Busy", "--json"]).await);
        let id = text(&made["key"]["id"]);
        for _ in 0..2 {
            assert_exit(&verify(app, &[text(&made["secret"]).as_str()], None).await, 0);
        }
        app.authority.write_usage_counts().await.unwrap();
        let by_hour = keys(app, &["usage", &id, "--by", "hour", "--json"]).await;
        let buckets = entries(&by_hour, "buckets");
        assert_eq!(buckets.len(), 1, "{by_hour:?}");
        assert_eq!(buckets[0]["valid"], 2);
        let by_day = keys(app, &["usage", "--app", "app_used"]).await;
        let columns = "START|VALID|AUTHENTICATION_ERROR|API_KEY_REVOKED|API_KEY_EXPIRED|INSUFFICIENT_PERMISSIONS";
        let lines = table(&by_day, 2, columns);
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[1..], ["2", "0", "0", "0", "0"], "{by_day:?}");
        assert_exit(&keys(app, &["usage"]).await, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    on_sqlite(async |app| {
        // Each case's arguments, separated by spaces.
        let cases = [
            // Malformed values, found before any call.
            "issue --app a --env test --name n --permission patients",
            "issue --app a --env staging --name n",
            "issue --app a --env test --name n --expires soon",
            "issue --app a --env test --name n --metadata novalue",
            "roll key_000000000000 --grace soon",
            "list --app a --page-size 0",
            // Missing arguments, unknown subcommands.
            "issue --app a",
            "get",
            "rotate key_000000000000",
        ];
        for case in cases {
            let args: Vec<&str> = case.split(' ').collect();
            let run = keys(app, &args).await;
            assert_exit(&run, 2);
            assert!(!run.stderr.is_empty(), "{run:?}");
        }
        let run = verify(app, &["sk_test_x", "--permission", "patients:"], None).await;
        assert_exit(&run, 2);
        // No operator token at all is a usage error, caught before calling.
        let run = keyauth(
            &["keys", "get", "key_000000000000", "--server", &server(app)],
            &[],
            None,
        )
        .await;
        assert_failed(&run, 2, "KEYAUTH_ADMIN_TOKEN");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_token_exits_1() {
    on_sqlite(async |app| {
        let run = keyauth(
            &[
                "keys",
                "--admin-token",
                "not-the-operator-token",
                "list",
                "--app",
                "app_cli",
                "--server",
                &server(app),
            ],
            &[],
            None,
        )
        .await;
        assert_failed(&run, 1, "UNAUTHENTICATED");
        assert!(run.stdout.is_empty(), "{run:?}");
    })
    .await;
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
    assert_failed(&run, 3, "UNAVAILABLE");
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
    on_sqlite(async |app| {
        let issued = issue(app, "app_events", "test", &["--name", "Audited", "--json"]).await;
        let old_id = text(&made_key(&issued)["key"]["id"]);
        let rolled = keys(app, &["roll", &old_id, "--grace", "1h", "--json"]).await;
        let new_id = text(&made_key(&rolled)["key"]["id"]);
        assert_exit(
            &keys(app, &["revoke", &new_id, "--reason", "leaked"]).await,
            0,
        );

        // The application's trail as a table, newest first.
        let listed = keys(app, &["events", "--app", "app_events"]).await;
        let columns = "SEQUENCE|TIME|TYPE|KEY|RELATED KEY|OPERATOR|PEER|REQUEST ID";
        let lines = table(&listed, 4, columns);
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
        let by_key = keys(app, &["events", "--key", &old_id, "--json"]).await;
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
        let by_new_key = keys(app, &["events", "--key", &new_id, "--json"]).await;
        assert_exit(&by_new_key, 0);
        let kinds: Vec<String> = by_new_key.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, ["revoked", "rolled"]);

        // Pages: one at a time with a note on stderr, or all of them with --all.
        let page = keys(app, &["events", "--app", "app_events", "--page-size", "1"]).await;
        assert_exit(&page, 0);
        assert_eq!(page.stdout.lines().count(), 2, "{page:?}");
        assert!(page.stderr.contains("--page-token"), "{page:?}");
        let every = every_page(app, "events", "app_events", "events").await;
        assert_eq!(every.len(), 3);

        // No filter: every event; with a type and a time range. At most one of --key and --app,
        // found before any call; a malformed id is the server's refusal.
        let all = keys(app, &["events", "--all", "--json"]).await;
        assert_exit(&all, 0);
        assert_eq!(all.json()["events"].as_array().unwrap().len(), 3);
        let rolled = keys(
            app,
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
            app,
            &["events", "--until", "2000-01-01T00:00:00Z", "--json"],
        )
        .await;
        assert_exit(&none, 0);
        assert!(none.json()["events"].as_array().unwrap().is_empty());
        assert_exit(&keys(app, &["events", "--type", "nonsense"]).await, 2);
        assert_exit(
            &keys(app, &["events", "--key", &old_id, "--app", "app_events"]).await,
            2,
        );
        let bad = keys(app, &["events", "--key", "not-a-key-id"]).await;
        assert_failed(&bad, 1, "INVALID_ARGUMENT");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_caller_of_a_token_or_a_token_file() {
    on_sqlite(async |app| {
        let url = server(app);
        // The admin token, from --token.
        let run = keyauth(
            &["whoami", "--json", "--server", &url, "--token", ADMIN_TOKEN],
            &[],
            None,
        )
        .await;
        assert_exit(&run, 0);
        let me: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(me["name"], "admin");
        assert_eq!(me["roles"], serde_json::json!(["admin"]));
        // From a file (a projected token, say), as a table; KEYAUTH_TOKEN_FILE wins over a
        // wrong KEYAUTH_TOKEN.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{ADMIN_TOKEN}\n")).unwrap();
        let run = keyauth(
            &["whoami", "--server", &url],
            &[
                ("KEYAUTH_TOKEN_FILE", file.to_str().unwrap()),
                ("KEYAUTH_TOKEN", "a-token-nobody-has-at-all-000000000"),
            ],
            None,
        )
        .await;
        assert_exit(&run, 0);
        assert!(
            run.stdout.contains("name") && run.stdout.contains("admin"),
            "{run:?}"
        );
        // Operator commands take it too.
        let run = keyauth(
            &["keys", "list", "--app", "app_cli", "--server", &url],
            &[("KEYAUTH_TOKEN_FILE", file.to_str().unwrap())],
            None,
        )
        .await;
        assert_exit(&run, 0);
        // A token nobody has: UNAUTHENTICATED, exit 1; none at all: a usage error.
        let run = keyauth(
            &[
                "whoami",
                "--server",
                &url,
                "--token",
                "a-token-nobody-has-at-all-000000000",
            ],
            &[],
            None,
        )
        .await;
        assert_failed(&run, 1, "UNAUTHENTICATED");
        let run = keyauth(&["whoami", "--server", &url], &[], None).await;
        assert_exit(&run, 2);
    })
    .await;
}
