//! `keyauth scan`: keys in files, found offline; with `--report`, revoked by the server.

use crate::helpers::{ADMIN_TOKEN, register_secret};

use super::run::{assert_exit, assert_failed, keyauth, on_sqlite, server};

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
    assert_failed(&run, 2, "no-such-file");
    assert_exit(&keyauth(&["scan"], &[], None).await, 2);
    assert_exit(&keyauth(&["scan", "--report", dir], &[], None).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_report_has_the_server_revoke_what_it_finds() {
    on_sqlite(async |app| {
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
        let server = server(app);

        let report = async || {
            let args = ["scan", dir, "--report", "--server", &server];
            keyauth(&args, &[("KEYAUTH_ADMIN_TOKEN", ADMIN_TOKEN)], None).await
        };
        let run = report().await;
        assert_exit(&run, 1);
        assert!(run.stdout.ends_with("(live): revoked\n"), "{run:?}");
        assert!(!run.stdout.contains(&secret) && !run.stderr.contains(&secret));
        assert_eq!(
            app.verify(&secret).await.error.unwrap().code,
            "api_key_revoked"
        );
        let events = crate::exposed::events_of(app, "app_scan").await;
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
        let again = report().await;
        assert_exit(&again, 1);
        assert!(again.stdout.ends_with(": already revoked\n"), "{again:?}");
        assert_eq!(crate::exposed::events_of(app, "app_scan").await, events);
    })
    .await;
}
