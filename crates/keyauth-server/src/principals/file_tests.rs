use super::*;

/// The token of `portal-backend` in [`GOOD`].
pub(crate) const TOKEN: &str = "portal-backend-token-0123456789abcdef";
/// Its SHA-256.
const HASH: &str = "a9b4fd5abcf765357d924e2046d074eacedc7f8412dfa2708adfd3b1103d3368";

/// The example of DESIGN §7, with a certificate subject and an issuer by file.
pub(crate) const GOOD: &str = r#"
[[principal]]
name = "portal-backend"
token_sha256 = "a9b4fd5abcf765357d924e2046d074eacedc7f8412dfa2708adfd3b1103d3368"
roles = ["keys.read", "keys.issue"]
applications = ["app_billing", "app_lab_*"]
environments = ["test"]

[[principal]]
name = "edge-envoy"
certificate_uri = "spiffe://cluster.local/ns/edge/sa/envoy"
roles = ["keys.verify"]

[[principal]]
name = "batch"
certificate_subject = "CN=batch,O=Example"
roles = ["admin"]

[[issuer]]
issuer = "https://idp.example.com"
audience = "keyauth"
jwks_url = "https://idp.example.com/jwks"
name_claim = "email"
roles_claim = "keyauth_roles"
applications_claim = "keyauth_applications"
environments_claim = "keyauth_environments"
roles = []

[[issuer.subject]]
subject = "system:serviceaccount:portal:backend"
roles = ["keys.read", "keys.issue", "keys.revoke"]
applications = ["*"]

[[issuer]]
issuer = "https://kubernetes.default.svc"
audience = "keyauth"
jwks_file = "/var/run/jwks.json"
roles = ["keys.verify"]
algorithms = ["RS256", "PS512", "ES384"]
"#;

/// The error of `text`, which must not parse.
fn error(text: &str) -> FileError {
    parse(text).expect_err("the file should not load")
}

fn principal(lines: &str) -> String {
    format!("# a comment\n[[principal]]\nname = \"p\"\n{lines}\n")
}

fn issuer(lines: &str) -> String {
    format!("[[issuer]]\nissuer = \"https://idp\"\naudience = \"keyauth\"\n{lines}\n")
}

#[test]
fn a_good_file_round_trips() {
    let file = parse(GOOD).unwrap();
    let [portal, envoy, batch] = &file.principals[..] else {
        panic!("three principals: {:?}", file.principals)
    };
    let mut digest = [0u8; 32];
    hex::decode_to_slice(HASH, &mut digest).unwrap();
    assert_eq!(portal.credential, Credential::TokenSha256(digest));
    assert_eq!(portal.principal.name, "portal-backend");
    assert_eq!(portal.principal.subject, "");
    assert_eq!(portal.principal.roles, Roles::of([Role::Read, Role::Issue]));
    let scope = &portal.principal.scope;
    assert_eq!(scope.applications(), ["app_billing", "app_lab_*"]);
    assert_eq!(scope.environments(), ["test"]);
    assert_eq!(
        envoy.credential,
        Credential::CertificateUri("spiffe://cluster.local/ns/edge/sa/envoy".into())
    );
    assert_eq!(
        envoy.principal.subject,
        "spiffe://cluster.local/ns/edge/sa/envoy"
    );
    assert!(envoy.principal.scope.is_everything());
    assert_eq!(
        batch.credential,
        Credential::CertificateSubject("CN=batch,O=Example".into())
    );

    let [idp, k8s] = &file.issuers[..] else {
        panic!("two issuers: {:?}", file.issuers)
    };
    assert_eq!(idp.issuer, "https://idp.example.com");
    assert_eq!(idp.audience, "keyauth");
    assert_eq!(idp.jwks, Jwks::Url("https://idp.example.com/jwks".into()));
    assert_eq!(idp.name_claim, "email");
    assert_eq!(idp.roles_claim.as_deref(), Some("keyauth_roles"));
    assert_eq!(
        idp.applications_claim.as_deref(),
        Some("keyauth_applications")
    );
    assert_eq!(
        idp.environments_claim.as_deref(),
        Some("keyauth_environments")
    );
    assert!(idp.roles.is_empty());
    assert_eq!(idp.algorithms, Algorithm::DEFAULT);
    let sa = idp.subject("system:serviceaccount:portal:backend").unwrap();
    assert_eq!(sa.roles, Roles::of([Role::Read, Role::Issue, Role::Revoke]));
    assert!(sa.scope.is_everything());
    assert!(idp.subject("someone-else").is_none());

    assert_eq!(k8s.jwks, Jwks::File("/var/run/jwks.json".into()));
    assert_eq!(k8s.name_claim, "sub");
    assert_eq!(k8s.roles_claim, None);
    assert_eq!(k8s.roles, Roles::of([Role::Verify]));
    assert_eq!(
        k8s.algorithms,
        [Algorithm::Rs256, Algorithm::Ps512, Algorithm::Es384]
    );
    assert!(k8s.subjects.is_empty());

    assert_eq!(parse("# nothing yet\n").unwrap(), PrincipalsFile::default());
}

#[test]
fn an_unknown_role_is_named_with_its_line() {
    let text = principal(&format!(
        "token_sha256 = \"{HASH}\"\nroles = [\n  \"keys.read\",\n  \"keys.write\",\n]"
    ));
    assert_eq!(
        error(&text).to_string(),
        "line 7: unknown role \"keys.write\" (known: keys.read, keys.issue, keys.revoke, \
         keys.verify, admin)"
    );
    let e = error(&issuer("jwks_file = \"j\"\nroles = [\"root\"]"));
    assert_eq!(e.line, Some(5));
    assert!(e.reason.starts_with("unknown role \"root\""), "{e}");
    let e = error(&issuer(
        "jwks_file = \"j\"\n[[issuer.subject]]\nsubject = \"s\"\nroles = [\"keys.write\"]",
    ));
    assert_eq!(e.line, Some(7), "{e}");
}

/// A key pasted where its hash belongs: made at run time, never a literal in the code.
fn pasted_key() -> String {
    keyauth_contract::PresentedKey::generate(keyauth_contract::Environment::Live)
        .expect("the OS random source")
        .expose()
        .to_owned()
}

#[test]
fn a_malformed_hash_is_named_without_repeating_it() {
    let token = pasted_key();
    let pasted = format!("found {} characters", token.len());
    for (value, found) in [
        (token.clone(), pasted.as_str()),
        (HASH[..63].to_owned(), "found 63 characters"),
        (format!("{}g", &HASH[..63]), "not hex digits"),
    ] {
        let e = error(&principal(&format!(
            "roles = [\"admin\"]\ntoken_sha256 = \"{value}\""
        )));
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.reason.starts_with("malformed token_sha256"), "{e}");
        assert!(e.reason.contains(found), "{e}");
        assert!(!e.to_string().contains(&value), "{e}");
    }
    // Upper-case hex is hex.
    parse(&principal(&format!(
        "roles = [\"admin\"]\ntoken_sha256 = \"{}\"",
        HASH.to_uppercase()
    )))
    .unwrap();
}

#[test]
fn a_string_in_the_wrong_place_is_not_repeated() {
    let token = pasted_key();
    let e = error(&principal(&format!(
        "token_sha256 = \"{HASH}\"\nroles = \"{token}\""
    )));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.reason.contains("invalid type: string"), "{e}");
    assert!(!e.reason.contains(&token), "{e}");
}

#[test]
fn duplicates_are_named_with_both_lines() {
    let one =
        format!("[[principal]]\nname = \"p\"\ntoken_sha256 = \"{HASH}\"\nroles = [\"admin\"]\n");
    let other =
        "[[principal]]\nname = \"p\"\ncertificate_uri = \"spiffe://x\"\nroles = [\"admin\"]\n";
    assert_eq!(
        error(&format!("{one}{other}")).to_string(),
        "line 6: duplicate principal name \"p\" (first on line 2)"
    );
    let again = one.replace("name = \"p\"", "name = \"q\"");
    assert_eq!(
        error(&format!("{one}{again}")).to_string(),
        "line 7: principal \"q\" has the same token_sha256 as principal \"p\" (line 3)"
    );
    let i = issuer("jwks_file = \"j\"");
    let e = error(&format!("{i}{i}"));
    assert_eq!(
        e.to_string(),
        "line 6: duplicate issuer \"https://idp\" (first on line 2)"
    );
    let e = error(&issuer(
        "jwks_file = \"j\"\n[[issuer.subject]]\nsubject = \"s\"\n[[issuer.subject]]\nsubject = \"s\"",
    ));
    assert_eq!(
        e.to_string(),
        "line 8: duplicate subject \"s\" (first on line 6)"
    );
}

#[test]
fn an_unknown_field_is_named_with_its_line() {
    let e = error(&principal(&format!(
        "token_sha256 = \"{HASH}\"\nroles = [\"admin\"]\nrole = \"admin\""
    )));
    assert_eq!(e.line, Some(6), "{e}");
    assert!(e.reason.contains("unknown field `role`"), "{e}");
    let e = error(&issuer("jwks_file = \"j\"\nalgorithm = \"RS256\""));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.reason.contains("unknown field `algorithm`"), "{e}");
    let e = error("[[principals]]\nname = \"p\"\n");
    assert_eq!(e.line, Some(1), "{e}");
    assert!(e.reason.contains("unknown field `principals`"), "{e}");
    let e = error(&principal("roles = [\"admin\"]\nroles = [\"admin\"]"));
    assert_eq!(e.line, Some(5), "{e}");
}

#[test]
fn a_principal_has_exactly_one_credential_and_a_role() {
    let e = error(&principal(&format!(
        "token_sha256 = \"{HASH}\"\nroles = [\"admin\"]\ncertificate_subject = \"CN=x\""
    )));
    assert_eq!(
        e.to_string(),
        "line 6: principal \"p\" has two credentials (token_sha256 and certificate_subject): \
         give one"
    );
    let e = error(&principal("roles = [\"admin\"]"));
    assert!(e.reason.contains("has no credential"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
    let e = error(&principal(&format!(
        "token_sha256 = \"{HASH}\"\nroles = []"
    )));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.reason.contains("has no roles"), "{e}");
    let e = error(&principal(&format!("token_sha256 = \"{HASH}\"")));
    assert!(e.reason.contains("missing field `roles`"), "{e}");
    let e = error(&principal("certificate_uri = \"\"\nroles = [\"admin\"]"));
    assert_eq!(e.to_string(), "line 4: certificate_uri is empty");
}

#[test]
fn a_scope_is_checked_on_its_line() {
    let base = format!("token_sha256 = \"{HASH}\"\nroles = [\"admin\"]");
    let e = error(&principal(&format!("{base}\napplications = []")));
    assert_eq!(
        e.to_string(),
        "line 6: applications is empty: leave it out for every one"
    );
    let e = error(&principal(&format!("{base}\nenvironments = [\"prod\"]")));
    assert_eq!(e.line, Some(6), "{e}");
    assert!(e.reason.contains("\"prod\""), "{e}");
    let e = error(&principal(&format!("{base}\napplications = [\"a*b\"]")));
    assert_eq!(e.line, Some(6), "{e}");
}

#[test]
fn a_jwks_url_and_file_are_checked_on_their_lines() {
    parse(&issuer("jwks_url = \"http://127.0.0.1:8080/jwks\"")).unwrap();
    let e = error(&issuer("jwks_url = \"http://idp.example.com/jwks\""));
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.reason.contains("must be https"), "{e}");
    let e = error(&issuer("jwks_url = \"https://x\"\njwks_file = \"j\""));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.reason.contains("both jwks_url and jwks_file"), "{e}");
    let e = error(&issuer(""));
    assert!(e.reason.contains("no jwks_url or jwks_file"), "{e}");
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn only_public_key_algorithms_are_allowed() {
    for bad in ["none", "HS256", "HS512", "rs256", "ES512"] {
        let e = error(&issuer(&format!(
            "jwks_file = \"j\"\nalgorithms = [\"RS256\", \"{bad}\"]"
        )));
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.reason
                .starts_with(&format!("algorithm \"{bad}\" refused")),
            "{e}"
        );
    }
    let e = error(&issuer("jwks_file = \"j\"\nalgorithms = []"));
    assert!(e.reason.contains("algorithms is empty"), "{e}");
}

#[test]
fn a_syntax_error_has_its_line_too() {
    let e = error("[[principal]]\nname = \"p\"\nroles = [\"admin\"\n");
    assert!(e.line.is_some_and(|l| l >= 3), "{e}");
}

/// The cluster example of `deploy/kubernetes` loads as written (#22: the portal backend's
/// service-account token, the console's identity provider, an auditor).
#[test]
fn the_deploy_example_loads() {
    let file = parse(include_str!(
        "../../../../deploy/kubernetes/principals.example.toml"
    ))
    .expect("deploy/kubernetes/principals.example.toml loads");
    let cluster = &file.issuers[0];
    let backend = cluster
        .subject("system:serviceaccount:portal:backend")
        .expect("the portal backend's subject");
    assert!(backend.roles.contains(Role::Revoke));
    assert!(!backend.roles.contains(Role::Admin));
    assert_eq!(file.issuers.len(), 2);
}
