//! JWT → principal: the algorithms, the refusals, the JWKS's fetches, the claims mapping and
//! the cache, against keys served over HTTP on 127.0.0.1.

mod mapping;
pub(crate) mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::Header;
use keyauth_contract::principal::Scope;
use serde_json::json;

use super::*;
use support::*;

fn settings(server: &JwksServer) -> IssuerSettings {
    IssuerSettings::new(ISSUER, AUDIENCE, JwksSource::Url(server.url.clone()))
}

async fn issuers(settings: IssuerSettings) -> JwtIssuers {
    JwtIssuers::new(vec![settings]).await.unwrap()
}

fn scope(apps: &[&str], envs: &[&str]) -> Scope {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Scope::new(owned(apps), owned(envs)).unwrap()
}

#[tokio::test]
async fn accepts_rs256_es256_and_eddsa() {
    let keys = [
        TestKey::rsa("rsa-1"),
        TestKey::p256("ec-1"),
        TestKey::ed25519("ed-1"),
    ];
    let server = JwksServer::start(&keys.iter().collect::<Vec<_>>()).await;
    let jwt = issuers(settings(&server)).await;
    for key in &keys {
        let token = key.sign(&claims(&format!("user-{}", key.kid)));
        assert!(looks_like_jwt(&token));
        let p = jwt
            .authenticate(&token)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.alg));
        assert_eq!(p.subject, format!("user-{}", key.kid));
        assert_eq!(p.name, p.subject, "the name is `sub` by default");
        assert_eq!(p.issuer, ISSUER);
        assert!(p.roles.is_empty() && p.scope.is_everything());
    }
    assert_eq!(server.hits(), 1, "fetched once, at start");
}

#[tokio::test]
async fn refuses_wrong_issuer_audience_and_times() {
    let key = TestKey::p256("ec-1");
    let server = JwksServer::start(&[&key]).await;
    let jwt = issuers(settings(&server)).await;
    let with = |patch: serde_json::Value| {
        let mut c = claims("alice");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        key.sign(&c)
    };
    let cases = [
        (
            json!({"iss": "https://other.test"}),
            JwtRefusal::UnknownIssuer("https://other.test".into()),
        ),
        (json!({"aud": "someone-else"}), JwtRefusal::WrongAudience),
        (json!({"aud": ["a", "b"]}), JwtRefusal::WrongAudience),
        (json!({"exp": now() - 120}), JwtRefusal::Expired),
        (json!({"nbf": now() + 300}), JwtRefusal::NotYetValid),
        (json!({"exp": null}), JwtRefusal::MissingClaim("exp".into())),
        (json!({"aud": null}), JwtRefusal::MissingClaim("aud".into())),
        (json!({"sub": null}), JwtRefusal::MissingClaim("sub".into())),
    ];
    for (patch, refusal) in cases {
        let token = with(patch.clone());
        assert_eq!(
            jwt.authenticate(&token).await.unwrap_err(),
            refusal,
            "{patch}"
        );
    }
    // Within the 60 s leeway; an audience among others.
    for patch in [
        json!({"exp": now() - 30}),
        json!({"nbf": now() + 30}),
        json!({"aud": ["other", AUDIENCE]}),
    ] {
        jwt.authenticate(&with(patch.clone()))
            .await
            .unwrap_or_else(|e| panic!("{patch}: {e}"));
    }
}

#[tokio::test]
async fn refuses_unsigned_hmac_forged_and_dangerous_headers() {
    let ec = TestKey::p256("ec-1");
    let ed = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&ec, &ed]).await;
    let mut only_es256 = settings(&server);
    only_es256.algorithms = vec![Algorithm::ES256];
    let jwt = issuers(only_es256).await;
    let c = claims("mallory");

    let none = jwt.authenticate(&unsigned(&c)).await.unwrap_err();
    assert!(
        matches!(&none, JwtRefusal::Malformed(why) if why.contains("none")),
        "{none:?}"
    );
    // HS256 keyed with the issuer's public key (the classic algorithm confusion).
    let confused = sign_hs256(&ec.public, &ec.kid, &c);
    let refusal = JwtRefusal::AlgorithmNotAllowed(Algorithm::HS256);
    assert_eq!(jwt.authenticate(&confused).await.unwrap_err(), refusal);
    // Not in this issuer's allow-list.
    let eddsa = ed.sign(&c);
    let refusal = JwtRefusal::AlgorithmNotAllowed(Algorithm::EdDSA);
    assert_eq!(jwt.authenticate(&eddsa).await.unwrap_err(), refusal);
    // A bad signature: the claims of one token with the signature of another.
    let (a, b) = (ec.sign(&c), ec.sign(&claims("admin")));
    let forged = format!(
        "{}.{}",
        b.rsplit_once('.').unwrap().0,
        a.rsplit_once('.').unwrap().1
    );
    assert_eq!(
        jwt.authenticate(&forged).await.unwrap_err(),
        JwtRefusal::BadSignature
    );
    // A key of another type than the token's alg says.
    let mut all = settings(&server);
    all.issuer = "https://all.test".into();
    let any_alg = issuers(all).await;
    let mut mixed = claims("mallory");
    mixed["iss"] = json!("https://all.test");
    let ed_as_ec = ed.sign_with(
        &Header {
            kid: Some(ec.kid.clone()),
            ..ed.header()
        },
        &mixed,
    );
    assert_eq!(
        any_alg.authenticate(&ed_as_ec).await.unwrap_err(),
        JwtRefusal::KeyMismatch
    );

    // Headers that point elsewhere, and `crit`.
    let pointing = [
        (
            "jku",
            Header {
                jku: Some(format!("{}?evil", server.url)),
                ..ec.header()
            },
        ),
        (
            "x5u",
            Header {
                x5u: Some("https://evil.test/cert".into()),
                ..ec.header()
            },
        ),
        (
            "crit",
            Header {
                crit: Some(vec!["exp".into()]),
                ..ec.header()
            },
        ),
    ];
    for (name, header) in pointing {
        let token = ec.sign_with(&header, &c);
        assert_eq!(
            jwt.authenticate(&token).await.unwrap_err(),
            JwtRefusal::ForbiddenHeader(name)
        );
    }
    // Over 16 KiB, before anything is parsed; and garbage.
    let mut big = claims("mallory");
    big["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    assert_eq!(
        jwt.authenticate(&ec.sign(&big)).await.unwrap_err(),
        JwtRefusal::TooLarge
    );
    let garbage = jwt.authenticate("not-a-jwt").await.unwrap_err();
    assert!(matches!(garbage, JwtRefusal::Malformed(_)));
    assert_eq!(
        server.hits(),
        2,
        "one fetch at start for each JwtIssuers, none for a refusal"
    );
    assert_eq!(
        jwt.verifications.load(Ordering::Relaxed),
        1,
        "only the forged one got to a key"
    );
}

#[tokio::test]
async fn an_unknown_kid_refetches_at_most_every_30_seconds() {
    let (old, new, newer) = (
        TestKey::p256("old"),
        TestKey::p256("new"),
        TestKey::ed25519("newer"),
    );
    let server = JwksServer::start(&[&old]).await;
    let mut jwt = issuers(settings(&server)).await;
    // Within 30 s of the fetch at start: no refetch.
    let token = new.sign(&claims("alice"));
    assert_eq!(
        jwt.authenticate(&token).await.unwrap_err(),
        JwtRefusal::UnknownKid("new".into())
    );
    assert_eq!(server.hits(), 1);
    // Later (the interval shortened for the test): a rotation adds the key, the token works.
    jwt.refetch_min = Duration::ZERO;
    server.publish(&[&old, &new]);
    jwt.authenticate(&token).await.unwrap();
    assert_eq!(server.hits(), 2);
    // Still unknown after a refetch: refused.
    jwt.refetch_min = Duration::from_millis(200);
    let unknown = newer.sign(&claims("bob"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        jwt.authenticate(&unknown).await,
        Err(JwtRefusal::UnknownKid(_))
    ));
    assert_eq!(server.hits(), 3);
    assert!(matches!(
        jwt.authenticate(&unknown).await,
        Err(JwtRefusal::UnknownKid(_))
    ));
    assert_eq!(server.hits(), 3, "not again within the interval");

    // A rotation that drops a key: tokens it signed, even cached ones, stop working.
    let by_old = old.sign(&claims("carol"));
    jwt.authenticate(&by_old).await.unwrap();
    server.publish(&[&new]);
    jwt.refresh_all().await;
    let refused = jwt.authenticate(&by_old).await.unwrap_err();
    assert_eq!(refused, JwtRefusal::UnknownKid("old".into()));
}

#[tokio::test]
async fn known_keys_keep_working_while_the_jwks_is_unreachable() {
    let (known, unknown) = (TestKey::rsa("rsa-1"), TestKey::p256("ec-2"));
    let mut server = JwksServer::start(&[&known]).await;
    let mut jwt = issuers(settings(&server)).await;
    jwt.refetch_min = Duration::ZERO;
    jwt.authenticate(&known.sign(&claims("alice")))
        .await
        .unwrap();
    server.stop().await;
    jwt.refresh_all().await; // fails, logged
    jwt.authenticate(&known.sign(&claims("bob"))).await.unwrap();
    let refused = jwt
        .authenticate(&unknown.sign(&claims("carol")))
        .await
        .unwrap_err();
    assert_eq!(refused, JwtRefusal::UnknownKid("ec-2".into()));
    jwt.authenticate(&known.sign(&claims("dave")))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_issuer_whose_jwks_is_down_at_start_starts_with_no_keys() {
    let key = TestKey::p256("ec-1");
    let down = IssuerSettings::new(
        ISSUER,
        AUDIENCE,
        JwksSource::Url("http://127.0.0.1:1/jwks".into()),
    );
    let mut jwt = issuers(down).await;
    jwt.refetch_min = Duration::ZERO;
    let refused = jwt
        .authenticate(&key.sign(&claims("alice")))
        .await
        .unwrap_err();
    assert_eq!(refused, JwtRefusal::UnknownKid("ec-1".into()));
}

#[tokio::test]
async fn a_jwks_file_and_the_refresher() {
    let (a, b) = (TestKey::ed25519("a"), TestKey::ed25519("b"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_of(&[&a])).unwrap();
    let jwt = Arc::new(
        issuers(IssuerSettings::new(
            ISSUER,
            AUDIENCE,
            JwksSource::File(path.clone()),
        ))
        .await,
    );
    jwt.authenticate(&a.sign(&claims("alice"))).await.unwrap();
    // `b` appears in the file; within 30 s only the refresher reads it again.
    std::fs::write(&path, jwks_of(&[&a, &b])).unwrap();
    let token = b.sign(&claims("bob"));
    assert!(jwt.authenticate(&token).await.is_err());
    let refresher = spawn_refresh_every(Arc::downgrade(&jwt), Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwt.authenticate(&token).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the refresher never read the file again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(jwt.issuers[0].keys.fetches() >= 2);
    drop(jwt);
    tokio::time::timeout(Duration::from_secs(2), refresher)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_verified_token_is_cached_until_it_expires() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&[&key]).await;
    let jwt = issuers(settings(&server)).await;
    let token = key.sign(&claims("alice"));
    let first = jwt.authenticate(&token).await.unwrap();
    let second = jwt.authenticate(&token).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "the same principal, from the cache"
    );
    assert_eq!(
        jwt.verifications.load(Ordering::Relaxed),
        1,
        "verified once"
    );
    // An entry past its time is verified again (and this token is still valid).
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    jwt.cache.insert(
        digest,
        Verified {
            principal: first,
            until: now() - 1,
        },
    );
    jwt.authenticate(&token).await.unwrap();
    assert_eq!(jwt.verifications.load(Ordering::Relaxed), 2);
    assert_eq!(server.hits(), 1);
}

/// Not an assertion: what a warm-cache authenticate costs.
#[tokio::test]
async fn warm_cache_cost() {
    let key = TestKey::p256("ec-1");
    let server = JwksServer::start(&[&key]).await;
    let jwt = issuers(settings(&server)).await;
    let mut c = claims("system:serviceaccount:portal:backend");
    c["aud"] = json!([AUDIENCE, "https://kubernetes.default.svc"]);
    let token = key.sign(&c);
    jwt.authenticate(&token).await.unwrap();
    const CALLS: u32 = 100_000;
    let started = Instant::now();
    for _ in 0..CALLS {
        std::hint::black_box(
            jwt.authenticate(std::hint::black_box(&token))
                .await
                .unwrap(),
        );
    }
    let per_call = started.elapsed() / CALLS;
    println!(
        "warm-cache JWT authenticate ({} bytes): {} ns/op",
        token.len(),
        per_call.as_nanos()
    );
    assert_eq!(jwt.verifications.load(Ordering::Relaxed), 1);
}
