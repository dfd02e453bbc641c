//! Claims → roles and scope; the settings' checks; the shape of a JWT.

use keyauth_contract::principal::{Role, Roles, Scope};
use serde_json::json;

use super::*;

#[tokio::test]
async fn claims_map_to_roles_and_scope() {
    let key = TestKey::p256("ec-1");
    let server = JwksServer::start(&[&key]).await;
    let mut idp = settings(&server);
    idp.name_claim = "email".into();
    idp.roles_claim = Some("keyauth_roles".into());
    idp.applications_claim = Some("keyauth_applications".into());
    idp.environments_claim = Some("keyauth_environments".into());
    idp.roles = Roles::of([Role::Read]);
    let sa = "system:serviceaccount:portal:backend";
    idp.subjects = vec![SubjectSettings {
        subject: sa.into(),
        roles: Roles::of([Role::Issue, Role::Revoke]),
        scope: scope(&["app_billing"], &[]),
    }];
    let mut k8s = IssuerSettings::new(
        "https://k8s.test",
        "keyauth",
        JwksSource::Url(server.url.clone()),
    );
    k8s.algorithms = vec![Algorithm::ES256];
    let jwt = JwtIssuers::new(vec![idp, k8s]).await.unwrap();
    let auth = |extra: serde_json::Value| {
        let mut c = claims("alice");
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let token = key.sign(&c);
        let jwt = &jwt;
        async move { jwt.authenticate(&token).await }
    };

    let alice = auth(
        json!({"email": "alice@example.com", "keyauth_roles": ["keys.verify", "keys.bogus"],
        "keyauth_applications": ["app_lab_*"], "keyauth_environments": "test"}),
    )
    .await
    .unwrap();
    assert_eq!(alice.name, "alice@example.com");
    assert_eq!(alice.subject, "alice");
    assert_eq!(alice.roles, Roles::of([Role::Read, Role::Verify]));
    assert_eq!(alice.scope, scope(&["app_lab_*"], &["test"]));

    // The subject entry's roles are added and its scope wins over the claims.
    let backend = auth(json!({"sub": sa, "keyauth_applications": ["app_x"]}))
        .await
        .unwrap();
    assert_eq!(backend.name, sa, "no name claim: named by its sub");
    assert_eq!(
        backend.roles,
        Roles::of([Role::Read, Role::Issue, Role::Revoke])
    );
    assert_eq!(backend.scope, scope(&["app_billing"], &[]));

    // Another issuer, no role at all: still a principal.
    let pod = auth(json!({"iss": "https://k8s.test", "keyauth_roles": ["admin"]}))
        .await
        .unwrap();
    assert_eq!(
        (pod.issuer.as_str(), pod.roles),
        ("https://k8s.test", Roles::NONE)
    );
    assert!(pod.scope.is_everything());

    for bad in [
        json!({"keyauth_environments": ["prod"]}),
        json!({"keyauth_applications": []}),
        json!({"keyauth_roles": 7}),
    ] {
        assert!(
            matches!(auth(bad.clone()).await, Err(JwtRefusal::InvalidClaim(_))),
            "{bad}"
        );
    }
    assert!(jwt.can_grant(Role::Verify) && jwt.can_grant(Role::Admin));
    let mut fixed = settings(&server);
    fixed.roles = Roles::of([Role::Read]);
    fixed.subjects = vec![SubjectSettings {
        subject: sa.into(),
        roles: Roles::of([Role::Issue]),
        scope: Scope::everything(),
    }];
    let fixed = issuers(fixed).await;
    assert!(
        fixed.can_grant(Role::Read)
            && fixed.can_grant(Role::Issue)
            && !fixed.can_grant(Role::Verify)
    );
}

#[tokio::test]
async fn settings_are_checked() {
    let url = |u: &str| IssuerSettings::new(ISSUER, AUDIENCE, JwksSource::Url(u.into()));
    for ok in [
        "https://idp.example.com/jwks",
        "http://127.0.0.1:8080/jwks",
        "http://[::1]/k",
        "http://localhost/k",
    ] {
        url(ok).check().unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "http://idp.example.com/jwks",
        "http://10.0.0.1/jwks",
        "ftp://idp.example.com/",
        "jwks.json",
    ] {
        assert!(url(bad).check().is_err(), "{bad}");
    }
    let mut hs = url("https://idp.example.com/jwks");
    hs.algorithms = vec![Algorithm::ES256, Algorithm::HS256];
    assert!(hs.check().unwrap_err().contains("HS256"));
    hs.algorithms.clear();
    assert!(hs.check().is_err());
    let file = || {
        IssuerSettings::new(
            ISSUER,
            AUDIENCE,
            JwksSource::File("/nonexistent/jwks.json".into()),
        )
    };
    assert!(
        JwtIssuers::new(vec![file(), file()])
            .await
            .unwrap_err()
            .contains("twice")
    );
}

#[test]
fn what_looks_like_a_jwt() {
    for yes in ["a.b.c", "eyJ0.eyJz.", "A-_z.0-9_.sig-_"] {
        assert!(looks_like_jwt(yes), "{yes}");
    }
    for no in [
        "",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a.b.c=",
        "a b.c.d",
        "ka_live_abc",
        "a.b/c.d",
    ] {
        assert!(!looks_like_jwt(no), "{no}");
    }
}
