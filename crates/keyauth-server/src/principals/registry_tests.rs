use super::*;

use crate::principals::file::tests::{GOOD, TOKEN};

const ADMIN: &str = "admin-token-0123456789abcdef-0123456";
const VERIFIER: &str = "verifier-token-0123456789abcdef-0123";

fn file(text: &str) -> Principals {
    Principals::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// DESIGN's example: three static principals and two issuers.
fn good() -> Principals {
    file(GOOD)
}

#[test]
fn a_token_finds_its_principal_and_nothing_else_does() {
    let set = good();
    let p = set.by_token(TOKEN).unwrap();
    assert_eq!(p.name, "portal-backend");
    assert!(p.may(Role::Issue) && !p.may(Role::Revoke));
    assert!(p.scope.has("app_lab_1", "test") && !p.scope.has("app_lab_1", "live"));
    assert!(set.by_token("").is_none());
    assert!(set.by_token(&TOKEN[1..]).is_none());
    assert!(set.by_token(&format!("{TOKEN}x")).is_none());
    assert!(set.by_token(&hex::encode(sha256(TOKEN))).is_none());
    assert_eq!(set.len(), 5);
    assert_eq!(set.principals().len(), 3);
    assert_eq!(set.issuers().len(), 2);
    assert!(!set.is_empty());
    assert!(Principals::empty().is_empty());
}

#[test]
fn a_certificate_finds_its_principal_by_uri_then_subject() {
    let set = good();
    let envoy = "spiffe://cluster.local/ns/edge/sa/envoy";
    let p = set
        .by_certificate(&["spiffe://other", envoy], "CN=batch,O=Example")
        .unwrap();
    assert_eq!(p.name, "edge-envoy");
    assert_eq!(p.subject, envoy);
    let p = set
        .by_certificate(&["spiffe://other"], "CN=batch,O=Example")
        .unwrap();
    assert_eq!(p.name, "batch");
    assert!(set.by_certificate(&[], "CN=other").is_none());
    assert!(set.by_certificate(&[], "").is_none());
    assert!(set.by_certificate(&["CN=batch,O=Example"], "").is_none());
    // A certificate is not a token, nor the other way round.
    assert!(set.by_token(envoy).is_none());
    assert!(set.by_certificate(&[TOKEN], TOKEN).is_none());
}

#[test]
fn legacy_tokens_are_the_principals_admin_and_verifier() {
    let set = Principals::with_legacy(Some(good()), Some(ADMIN), Some(VERIFIER)).unwrap();
    let admin = set.by_token(ADMIN).unwrap();
    assert_eq!(admin.name, "admin");
    assert!(Role::ALL.into_iter().all(|r| admin.may(r)));
    assert!(admin.scope.is_everything());
    let verifier = set.by_token(VERIFIER).unwrap();
    assert_eq!(verifier.name, "verifier");
    assert_eq!(verifier.roles, Roles::of([Role::Verify]));
    assert_eq!(set.by_token(TOKEN).unwrap().name, "portal-backend");
    assert_eq!(set.len(), 7);

    let only = Principals::with_legacy(None, None, Some(VERIFIER)).unwrap();
    assert_eq!(only.len(), 1);
    assert!(only.by_token(ADMIN).is_none());
    assert!(
        Principals::with_legacy(None, None, None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_short_legacy_token_stops_the_start_naming_its_setting() {
    let short = "a".repeat(31);
    let e = Principals::with_legacy(None, Some(&short), None).unwrap_err();
    assert!(e.starts_with("KEYAUTH_ADMIN_TOKEN"), "{e}");
    assert!(e.contains("at least 32 characters"), "{e}");
    assert!(!e.contains(&short), "{e}");
    let e = Principals::with_legacy(None, Some(ADMIN), Some(&short)).unwrap_err();
    assert!(e.starts_with("KEYAUTH_VERIFIER_TOKEN"), "{e}");
    assert!(e.contains("at least 32 characters"), "{e}");
    // 32 characters are enough.
    Principals::with_legacy(None, Some(&"a".repeat(32)), None).unwrap();
}

#[test]
fn a_file_principal_cannot_take_a_legacy_name_or_token() {
    let named = |name: &str| {
        file(&format!(
            "[[principal]]\nname = \"{name}\"\ncertificate_subject = \"CN=x\"\nroles = [\"admin\"]\n"
        ))
    };
    let e = Principals::with_legacy(Some(named("admin")), Some(ADMIN), None).unwrap_err();
    assert!(
        e.contains("duplicate name") && e.contains("\"admin\""),
        "{e}"
    );
    let e = Principals::with_legacy(Some(named("verifier")), None, Some(VERIFIER)).unwrap_err();
    assert!(
        e.contains("duplicate name") && e.contains("\"verifier\""),
        "{e}"
    );
    // Without the legacy token, the name is free.
    Principals::with_legacy(Some(named("admin")), None, Some(VERIFIER)).unwrap();
    let e = Principals::with_legacy(Some(good()), Some(TOKEN), None).unwrap_err();
    assert!(e.contains("portal-backend") && !e.contains(TOKEN), "{e}");
}

#[test]
fn grants_tells_whether_any_credential_can_hold_a_role() {
    let none = Principals::empty();
    assert!(Role::ALL.into_iter().all(|r| !none.grants(r)));

    let set = good();
    assert!(
        Role::ALL.into_iter().all(|r| set.grants(r)),
        "batch is admin"
    );
    let reader =
        file("[[principal]]\nname = \"r\"\ncertificate_uri = \"u\"\nroles = [\"keys.read\"]");
    assert!(reader.grants(Role::Read) && !reader.grants(Role::Verify));

    let admin = Principals::with_legacy(None, Some(ADMIN), None).unwrap();
    assert!(Role::ALL.into_iter().all(|r| admin.grants(r)));
    let verifier = Principals::with_legacy(None, None, Some(VERIFIER)).unwrap();
    assert!(verifier.grants(Role::Verify) && !verifier.grants(Role::Read));

    let issuer = |rest: &str| {
        file(&format!(
            "[[issuer]]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"j\"\n{rest}\n"
        ))
    };
    assert!(!issuer("").grants(Role::Verify));
    assert!(issuer("roles = [\"keys.verify\"]").grants(Role::Verify));
    assert!(!issuer("roles = [\"keys.read\"]").grants(Role::Verify));
    assert!(issuer("roles_claim = \"roles\"").grants(Role::Verify));
    let subject = issuer("[[issuer.subject]]\nsubject = \"s\"\nroles = [\"admin\"]");
    assert!(subject.grants(Role::Verify));
    let subject = issuer("[[issuer.subject]]\nsubject = \"s\"\nroles = [\"keys.read\"]");
    assert!(subject.grants(Role::Read) && !subject.grants(Role::Verify));
    assert_eq!(subject.len(), 1);
    assert_eq!(subject.issuers()[0].issuer, "i");
}

#[test]
fn the_cell_swaps_the_set_whole() {
    let cell = PrincipalsCell::new(Principals::empty());
    let before = cell.current();
    cell.replace(good(), None);
    assert!(before.is_empty());
    assert_eq!(cell.current().len(), 5);
}
