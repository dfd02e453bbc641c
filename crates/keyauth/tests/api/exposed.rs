//! Leaked keys revoke themselves: ReportExposedKeys (operators) and the GitHub secret-scanning
//! webhook on the HTTP listener, both answered by one `Authority` method.

use std::time::Duration;

use keyauth_core::key::{Environment, PresentedKey};
use keyauth_proto as pb;
use tonic::{Code, Request};

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    a_report_revokes_the_keys_it_proves,
    a_report_needs_the_operator_token_and_sane_limits,
);

pub const APP: &str = "leaky";

/// A report holding every kind of string a scanner may find, in this order: a well-formed key
/// with a real key's id but another secret, a live key, a revoked key, a rolled key inside its
/// grace period, a string with a bad checksum and a well-formed key nobody issued.
pub struct Leaks {
    pub wrong_secret: String,
    pub live: (pb::ApiKey, String),
    pub revoked: (pb::ApiKey, String),
    pub rolled: (pb::ApiKey, String),
    pub bad_checksum: String,
    pub unknown: String,
}

impl Leaks {
    pub async fn issue(app: &TestApp) -> Leaks {
        let live = app
            .issue(standard(APP, pb::Environment::Live))
            .await
            .unwrap();
        let revoked = app
            .issue(standard(APP, pb::Environment::Live))
            .await
            .unwrap();
        app.revoke(&revoked.0.id).await.unwrap();
        let rolled = app
            .issue(standard(APP, pb::Environment::Test))
            .await
            .unwrap();
        app.roll(&rolled.0.id, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        let rolled = (app.get(&rolled.0.id).await.unwrap(), rolled.1);
        assert_eq!(rolled.0.state, pb::KeyState::Active as i32, "in its grace");

        let live_key = PresentedKey::parse(&live.1).unwrap();
        let other = PresentedKey::generate(Environment::Live).unwrap();
        let other_secret = std::str::from_utf8(other.secret()).unwrap();
        let wrong_secret =
            PresentedKey::from_parts(Environment::Live, live_key.lookup(), other_secret).unwrap();
        let unknown = PresentedKey::generate(Environment::Live).unwrap();
        let typo = PresentedKey::generate(Environment::Live).unwrap();
        let mut bad_checksum = typo.expose().to_owned();
        let last = bad_checksum.pop().unwrap();
        bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
        assert!(PresentedKey::parse(&bad_checksum).is_none());
        for secret in [wrong_secret.expose(), unknown.expose(), typo.expose()] {
            register_secret(secret);
        }
        Leaks {
            wrong_secret: wrong_secret.expose().to_owned(),
            live,
            revoked,
            rolled,
            bad_checksum,
            unknown: unknown.expose().to_owned(),
        }
    }

    pub fn tokens(&self) -> Vec<String> {
        vec![
            self.wrong_secret.clone(),
            self.live.1.clone(),
            self.revoked.1.clone(),
            self.rolled.1.clone(),
            self.bad_checksum.clone(),
            self.unknown.clone(),
        ]
    }
}

/// Every audit event of the test application, newest first.
pub async fn events(app: &TestApp) -> Vec<pb::KeyEvent> {
    app.client
        .clone()
        .list_key_events(op(pb::ListKeyEventsRequest {
            application_id: APP.into(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events
}

/// The `exposed` events among `events`.
pub fn exposed(events: &[pb::KeyEvent]) -> Vec<&pb::KeyEvent> {
    events
        .iter()
        .filter(|e| e.r#type == pb::KeyEventType::Exposed as i32)
        .collect()
}

fn report(keys: Vec<String>, source: &str, url: &str) -> pb::ReportExposedKeysRequest {
    pb::ReportExposedKeysRequest {
        keys,
        source: source.into(),
        url: url.into(),
    }
}

async fn a_report_revokes_the_keys_it_proves(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let leaks = Leaks::issue(&app).await;
    // The live and the rolled key are proven (and cached) before the report.
    assert!(app.verify(&leaks.live.1).await.valid);
    assert!(app.verify(&leaks.rolled.1).await.valid);
    let before = events(&app).await;
    let url = "https://paste.example/raw/abc";

    let answer = app
        .client
        .clone()
        .report_exposed_keys(op(report(leaks.tokens(), "paste-monitor", url)))
        .await
        .unwrap()
        .into_inner();
    use pb::ExposureOutcome as O;
    let outcomes: Vec<_> = answer.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            O::Unknown as i32,
            O::Revoked as i32,
            O::AlreadyRevoked as i32,
            O::Revoked as i32,
            O::NotAKey as i32,
            O::Unknown as i32,
        ]
    );
    let live_key = PresentedKey::parse(&leaks.live.1).unwrap();
    assert_eq!(
        answer.results[0].key_id, leaks.live.0.id,
        "its id, not its key"
    );
    assert_eq!(answer.results[1].key_id, leaks.live.0.id);
    assert_eq!(answer.results[1].redacted, live_key.redacted());
    assert_eq!(answer.results[1].application_id, APP);
    assert_eq!(answer.results[3].key_id, leaks.rolled.0.id);
    assert_eq!(
        answer.results[4],
        pb::ExposedKeyResult {
            outcome: O::NotAKey as i32,
            ..Default::default()
        }
    );
    let shown = format!("{answer:?}");
    for token in leaks.tokens() {
        assert!(!shown.contains(&token), "the answer holds a reported key");
    }

    // Revoked at once, the caches notwithstanding.
    for secret in [&leaks.live.1, &leaks.rolled.1] {
        let verdict = app.verify(secret).await;
        assert_eq!(error_code(&verdict), Some("api_key_revoked"), "{verdict:?}");
    }
    let after = events(&app).await;
    assert_eq!(after.len(), before.len() + 2);
    let new = exposed(&after);
    assert_eq!(new.len(), 2);
    let mut ids: Vec<_> = new.iter().map(|e| e.key_id.clone()).collect();
    ids.sort();
    let mut want = vec![leaks.live.0.id.clone(), leaks.rolled.0.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    for e in new {
        assert_eq!((e.source.as_str(), e.url.as_str()), ("paste-monitor", url));
        assert!(e.operator_id.starts_with("op_"), "{e:?}");
        assert_eq!(e.application_id, APP);
    }
    let key = app.get(&leaks.live.0.id).await.unwrap();
    assert_eq!(key.state, pb::KeyState::Revoked as i32);
    assert!(key.revoke_reason.contains("paste-monitor"), "{key:?}");
    // The key whose id was reported with another secret is untouched by that entry.
    assert_eq!(
        app.get(&leaks.revoked.0.id).await.unwrap().revoke_reason,
        "compromised",
        "an earlier revocation is kept"
    );

    // The same report again changes nothing.
    let again = app
        .client
        .clone()
        .report_exposed_keys(op(report(leaks.tokens(), "paste-monitor", url)))
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = again.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            O::Unknown as i32,
            O::AlreadyRevoked as i32,
            O::AlreadyRevoked as i32,
            O::AlreadyRevoked as i32,
            O::NotAKey as i32,
            O::Unknown as i32,
        ]
    );
    assert_eq!(events(&app).await, after, "no second event");
    app.stop().await;
}

async fn a_report_needs_the_operator_token_and_sane_limits(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, secret) = app
        .issue(standard(APP, pb::Environment::Live))
        .await
        .unwrap();
    let mut client = app.client.clone();

    let anonymous = client
        .report_exposed_keys(Request::new(report(vec![secret.clone()], "x", "")))
        .await;
    assert_status(anonymous, Code::Unauthenticated, None);
    let mut wrong = Request::new(report(vec![secret.clone()], "x", ""));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-token".parse().unwrap());
    assert_status(
        client.report_exposed_keys(wrong).await,
        Code::Unauthenticated,
        None,
    );

    let refused = [
        (report(vec![], "x", ""), "keys"),
        (report(vec![secret.clone(); 1001], "x", ""), "keys"),
        (report(vec![secret.clone()], "", ""), "source"),
        (
            report(vec![secret.clone()], &"s".repeat(2001), ""),
            "source",
        ),
        (report(vec![secret.clone()], "x", &"u".repeat(2001)), "url"),
        (report(vec![secret.clone()], "x", "line\nbreak"), "url"),
    ];
    for (request, field) in refused {
        let status = assert_status(
            client.report_exposed_keys(op(request)).await,
            Code::InvalidArgument,
            None,
        );
        assert_eq!(violated_fields(&status), [field], "{status:?}");
        assert!(!status.message().contains(&secret));
    }
    assert!(app.verify(&secret).await.valid, "nothing was revoked");
    assert!(exposed(&events(&app).await).is_empty());
    assert_eq!(
        app.get(&key.id).await.unwrap().state,
        pb::KeyState::Active as i32
    );

    // 1000 keys is within the limit.
    let mut many = vec!["garbage".to_owned(); 999];
    many.push(secret.clone());
    let answer = client
        .report_exposed_keys(op(report(many, "bulk", "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.results.len(), 1000);
    assert_eq!(
        answer.results[999].outcome,
        pb::ExposureOutcome::Revoked as i32
    );
    app.stop().await;
}
