use super::*;
use crate::principals::jwt::tests::support::{AUDIENCE, ISSUER, TestKey, claims, jwks_of};
use crate::test_support::Captured;
use keyauth_contract::principal::Role;

const TOKEN: &str = "portal-backend-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef-0123456";

fn with_role(name: &str, role: &str) -> String {
    format!(
        "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"{role}\"]\n",
        hex::encode(sha256(TOKEN))
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    cell: Arc<PrincipalsCell>,
    reloader: Reloader,
}

/// `text` written, loaded as at the start (with the legacy admin token), and a reloader.
fn fixture(text: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("principals.toml");
    std::fs::write(&path, text).unwrap();
    let legacy = LegacyTokens::new(Some(ADMIN), None);
    let cell = Arc::new(PrincipalsCell::new(load(Some(&path), &legacy).unwrap()));
    let reloader = Reloader::new(path.clone(), cell.clone(), legacy);
    Fixture {
        _dir: dir,
        path,
        cell,
        reloader,
    }
}

impl Fixture {
    fn name(&self) -> Option<String> {
        self.cell.current().by_token(TOKEN).map(|p| p.name.clone())
    }
}

#[test]
fn the_start_names_the_path_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, with_role("p", "keys.write")).unwrap();
    let e = load(Some(&path), &LegacyTokens::default()).unwrap_err();
    assert!(
        e.starts_with(&format!("{}: line 4: unknown role", path.display())),
        "{e}"
    );
    let e = load(Some(&dir.path().join("missing")), &LegacyTokens::default()).unwrap_err();
    assert!(e.contains("missing"), "{e}");
    let e = load(None, &LegacyTokens::new(Some("short"), None)).unwrap_err();
    assert!(e.contains("at least 32 characters"), "{e}");
    let set = load(None, &LegacyTokens::new(Some(ADMIN), None)).unwrap();
    assert_eq!(set.by_token(ADMIN).unwrap().name, "admin");
    assert!(!format!("{:?}", LegacyTokens::new(Some(ADMIN), None)).contains(ADMIN));
}

#[tokio::test]
async fn a_good_change_is_put_in_force_once() {
    let mut f = fixture(&with_role("first", "keys.read"));
    assert_eq!(f.reloader.reload().await, Reload::Unchanged);
    std::fs::write(&f.path, with_role("second", "keys.issue")).unwrap();
    assert_eq!(f.reloader.reload().await, Reload::Reloaded);
    assert_eq!(f.name().as_deref(), Some("second"));
    assert!(f.cell.current().by_token(TOKEN).unwrap().may(Role::Issue));
    // The legacy token is still there.
    assert_eq!(f.cell.current().by_token(ADMIN).unwrap().name, "admin");
    assert_eq!(f.reloader.reload().await, Reload::Unchanged);
}

#[tokio::test]
async fn a_bad_change_keeps_the_set_in_force_and_is_logged_once() {
    let log = Captured::default();
    let _guard = log.install();
    let good = with_role("first", "keys.read");
    let mut f = fixture(&good);
    let bad = format!("# broken\n{}", with_role("second", "keys.write"));
    std::fs::write(&f.path, &bad).unwrap();
    match f.reloader.reload().await {
        Reload::Refused(why) => assert!(why.starts_with("line 5: unknown role"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.name().as_deref(), Some("first"));
    assert_eq!(f.reloader.reload().await, Reload::Unchanged);
    assert_eq!(f.reloader.reload().await, Reload::Unchanged);
    let text = log.text();
    assert_eq!(text.matches("does not load").count(), 1, "{text}");
    assert!(
        text.contains("WARN") && text.contains("line 5: unknown role"),
        "{text}"
    );
    assert!(!text.contains(TOKEN) && !text.contains(ADMIN), "{text}");

    // Another bad content is judged (and logged) again; so is a file that cannot be read.
    std::fs::write(&f.path, format!("{bad}\n")).unwrap();
    assert!(matches!(f.reloader.reload().await, Reload::Refused(_)));
    std::fs::remove_file(&f.path).unwrap();
    match f.reloader.reload().await {
        Reload::Refused(why) => assert!(why.starts_with("cannot read it"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.reloader.reload().await, Reload::Unchanged);
    assert_eq!(log.text().matches("does not load").count(), 3);

    // Back to the content in force: nothing to do; then a good change.
    std::fs::write(&f.path, &good).unwrap();
    assert_eq!(f.reloader.reload().await, Reload::Unchanged);
    std::fs::write(&f.path, with_role("third", "keys.read")).unwrap();
    assert_eq!(f.reloader.reload().await, Reload::Reloaded);
    assert_eq!(f.name().as_deref(), Some("third"));
    assert!(log.text().contains("principals file reloaded"));
}

#[tokio::test]
async fn a_change_that_clashes_with_a_legacy_token_is_refused() {
    let mut f = fixture(&with_role("first", "keys.read"));
    std::fs::write(&f.path, with_role("admin", "keys.read")).unwrap();
    match f.reloader.reload().await {
        Reload::Refused(why) => assert!(why.contains("duplicate name"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.name().as_deref(), Some("first"));
}

#[tokio::test]
async fn a_replacement_by_rename_is_seen() {
    let mut f = fixture(&with_role("first", "keys.read"));
    let next = f.path.with_file_name("principals.toml.new");
    std::fs::write(&next, with_role("renamed", "keys.read")).unwrap();
    std::fs::rename(&next, &f.path).unwrap();
    assert_eq!(f.reloader.reload().await, Reload::Reloaded);
    assert_eq!(f.name().as_deref(), Some("renamed"));
}

#[tokio::test]
async fn the_reloader_polls_the_file() {
    let f = fixture(&with_role("first", "keys.read"));
    let legacy = LegacyTokens::new(Some(ADMIN), None);
    let every = Duration::from_millis(20);
    let task = spawn_reloader(Reloader::new(f.path.clone(), f.cell.clone(), legacy), every);
    let next = f.path.with_file_name("principals.toml.new");
    std::fs::write(&next, with_role("polled", "keys.read")).unwrap();
    std::fs::rename(&next, &f.path).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while f.name().as_deref() != Some("polled") {
        assert!(tokio::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(every).await;
    }
    task.abort();

    // A zero interval never reads.
    let idle = spawn_reloader(
        Reloader::new(f.path.clone(), f.cell.clone(), LegacyTokens::default()),
        Duration::ZERO,
    );
    idle.await.unwrap();
}

/// An `[[issuer]]` reading its keys from `jwks`.
fn issuer(name: &str, jwks: &Path) -> String {
    format!(
        "[[issuer]]\nissuer = \"{name}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"{}\"\n\
         roles = [\"keys.read\"]\n",
        jwks.display()
    )
}

#[tokio::test]
async fn a_changed_issuer_is_put_in_force_without_a_restart() {
    let key = TestKey::ed25519("k1");
    let mut f = fixture(&with_role("first", "keys.read"));
    let jwks = f.path.with_file_name("jwks.json");
    std::fs::write(&jwks, jwks_of(&[&key])).unwrap();
    assert!(f.cell.jwt().is_none());

    // An issuer added: its tokens are accepted at once.
    let token = key.sign(&claims("alice"));
    let added = format!(
        "{}{}",
        with_role("first", "keys.read"),
        issuer(ISSUER, &jwks)
    );
    std::fs::write(&f.path, &added).unwrap();
    assert_eq!(f.reloader.reload().await, Reload::Reloaded);
    let jwt = f.cell.jwt().expect("the issuer is in force");
    assert_eq!(jwt.authenticate(&token).await.unwrap().name, "alice");

    // A change elsewhere in the file keeps the validator (its keys, its cache).
    std::fs::write(&f.path, format!("# a comment\n{added}")).unwrap();
    assert_eq!(f.reloader.reload().await, Reload::Reloaded);
    assert!(Arc::ptr_eq(&jwt, &f.cell.jwt().unwrap()));

    // The issuer renamed: the old one's tokens are refused from then on.
    std::fs::write(
        &f.path,
        format!(
            "{}{}",
            with_role("first", "keys.read"),
            issuer("https://other.test", &jwks)
        ),
    )
    .unwrap();
    assert_eq!(f.reloader.reload().await, Reload::Reloaded);
    assert!(f.cell.jwt().unwrap().authenticate(&token).await.is_err());

    // Removed: no validator at all.
    std::fs::write(&f.path, with_role("first", "keys.read")).unwrap();
    assert_eq!(f.reloader.reload().await, Reload::Reloaded);
    assert!(f.cell.jwt().is_none());
}

#[tokio::test]
async fn the_consoles_issuer_cannot_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let console = "https://idp.example.com";
    let f = fixture(&issuer(console, &jwks));
    let mut reloader = Reloader::new(f.path.clone(), f.cell.clone(), LegacyTokens::default())
        .requiring_issuer(Some(console.to_owned()));
    std::fs::write(&f.path, issuer("https://other.test", &jwks)).unwrap();
    match reloader.reload().await {
        Reload::Refused(why) => assert!(why.contains("--console-oidc-issuer"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.cell.current().issuers()[0].issuer, console);
}
