use std::time::Duration;

use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    lists_newest_first_in_pages,
    refuses_forged_and_mismatched_page_tokens,
    filters_by_state_at_the_time_of_the_call
);

async fn list(
    app: &TestApp,
    request: pb::ListKeysRequest,
) -> Result<pb::ListKeysResponse, tonic::Status> {
    Ok(app
        .client
        .clone()
        .list_keys(op(request))
        .await?
        .into_inner())
}

async fn lists_newest_first_in_pages(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut issued = Vec::new();
    for i in 0..5 {
        let env = if i % 2 == 0 {
            pb::Environment::Test
        } else {
            pb::Environment::Live
        };
        issued.push(app.issue(standard("lister", env)).await.unwrap().0);
        app.clock.advance(Duration::from_millis(10));
    }
    // Two keys in the same microsecond still page correctly (ties broken by id).
    issued.push(
        app.issue(standard("lister", pb::Environment::Test))
            .await
            .unwrap()
            .0,
    );
    issued.push(
        app.issue(standard("lister", pb::Environment::Test))
            .await
            .unwrap()
            .0,
    );
    app.issue(standard("someone_else", pb::Environment::Test))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &app,
            pb::ListKeysRequest {
                application_id: "lister".into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys);
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 7);
    let order: Vec<_> = seen
        .iter()
        .map(|k| (secs_micros(k), k.id.clone()))
        .collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted, "newest first");
    let mut ids: Vec<_> = seen.iter().map(|k| k.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 7, "no key twice");

    let live = list(
        &app,
        pb::ListKeysRequest {
            application_id: "lister".into(),
            environment: pb::Environment::Live.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(live.keys.len(), 2);
    assert!(live.next_page_token.is_empty());
    assert!(
        live.keys
            .iter()
            .all(|k| k.environment == pb::Environment::Live as i32)
    );

    let big = list(
        &app,
        pb::ListKeysRequest {
            application_id: "lister".into(),
            page_size: 5000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        big.keys.len(),
        7,
        "page_size above 1000 is capped, not refused"
    );
    app.stop().await;
}

fn secs_micros(k: &pb::ApiKey) -> (i64, i32) {
    let t = k.create_time.unwrap();
    (t.seconds, t.nanos)
}

async fn refuses_forged_and_mismatched_page_tokens(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    for _ in 0..3 {
        app.issue(standard("pager", pb::Environment::Test))
            .await
            .unwrap();
    }
    let first = list(
        &app,
        pb::ListKeysRequest {
            application_id: "pager".into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let token = first.next_page_token;
    assert!(!token.is_empty());
    let mut tampered = token.clone().into_bytes();
    tampered[2] ^= 1;
    for bad in [
        "garbage".to_string(),
        String::from_utf8(tampered).unwrap(),
        format!("{token}x"),
        "MTIzLmtleV9BQUFBQUFBQUFBQUE.AAAAAAAAAAAAAAAAAAAAAA".into(),
    ] {
        let status = assert_status(
            list(
                &app,
                pb::ListKeysRequest {
                    application_id: "pager".into(),
                    page_token: bad,
                    ..Default::default()
                },
            )
            .await,
            Code::InvalidArgument,
            Some("INVALID_PAGE_TOKEN"),
        );
        assert_eq!(violated_fields(&status), ["page_token"]);
    }
    // A token is bound to the filters it was issued for.
    let other_app = list(
        &app,
        pb::ListKeysRequest {
            application_id: "other".into(),
            page_token: token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_status(other_app, Code::InvalidArgument, None);
    let other_env = list(
        &app,
        pb::ListKeysRequest {
            application_id: "pager".into(),
            environment: pb::Environment::Test.into(),
            page_token: token,
            ..Default::default()
        },
    )
    .await;
    assert_status(other_env, Code::InvalidArgument, None);
    for bad in [
        pb::ListKeysRequest {
            application_id: "pager".into(),
            page_size: -1,
            ..Default::default()
        },
        pb::ListKeysRequest {
            application_id: "".into(),
            ..Default::default()
        },
        pb::ListKeysRequest {
            application_id: "pager".into(),
            environment: 5,
            ..Default::default()
        },
    ] {
        assert_status(list(&app, bad).await, Code::InvalidArgument, None);
    }
    app.stop().await;
}

/// The ids listed for `states`, following every page of `page_size`.
async fn ids_in(app: &TestApp, states: &[pb::KeyState], page_size: i32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = list(
            app,
            pb::ListKeysRequest {
                application_id: "states".into(),
                states: states.iter().map(|&s| s as i32).collect(),
                page_size,
                page_token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for key in &page.keys {
            let listed = states.is_empty() || states.iter().any(|&s| s as i32 == key.state);
            assert!(listed, "{states:?}: {key:?}");
        }
        ids.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

async fn filters_by_state_at_the_time_of_the_call(backend: Backend) {
    use pb::KeyState::{Active, Expired, Revoked};
    let Some(app) = spawn(backend).await else {
        return;
    };
    let issue = |expires: Option<Duration>| {
        let mut request = standard("states", pb::Environment::Test);
        request.expire_time = expires.map(|d| {
            let at = app.clock.now().as_micros() + d.as_micros() as i64;
            prost_types::Timestamp {
                seconds: at.div_euclid(1_000_000),
                nanos: (at.rem_euclid(1_000_000) * 1000) as i32,
            }
        });
        app.issue(request)
    };
    let forever = issue(None).await.unwrap().0.id;
    let short = issue(Some(Duration::from_secs(60))).await.unwrap().0.id;
    let revoked = issue(None).await.unwrap().0.id;
    app.revoke(&revoked).await.unwrap();
    for _ in 0..3 {
        issue(None).await.unwrap();
    }

    let all = ids_in(&app, &[], 2).await;
    assert_eq!(all.len(), 6);
    assert_eq!(ids_in(&app, &[Revoked], 2).await, vec![revoked.clone()]);
    assert!(ids_in(&app, &[Expired], 2).await.is_empty());
    let now_active = ids_in(&app, &[Active], 2).await;
    assert_eq!(now_active.len(), 5, "paged through the filter");
    assert!(now_active.contains(&short) && now_active.contains(&forever));

    // A minute later the short-lived key has expired: the filter follows the clock.
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(ids_in(&app, &[Expired], 2).await, vec![short.clone()]);
    assert_eq!(ids_in(&app, &[Active], 100).await.len(), 4);
    let mut over = ids_in(&app, &[Expired, Revoked], 1).await;
    over.sort();
    let mut expected = vec![short, revoked];
    expected.sort();
    assert_eq!(over, expected);

    // A token is bound to its filter; an unknown state is INVALID_ARGUMENT.
    let first = list(
        &app,
        pb::ListKeysRequest {
            application_id: "states".into(),
            states: vec![Active as i32],
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mismatched = list(
        &app,
        pb::ListKeysRequest {
            application_id: "states".into(),
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(mismatched.code(), Code::InvalidArgument);
    for bad in [0, 9] {
        let refused = list(
            &app,
            pb::ListKeysRequest {
                application_id: "states".into(),
                states: vec![bad],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&refused), vec!["states".to_owned()]);
    }
    app.stop().await;
}

/// The security review's F9: a ListKeyEvents with 40,000 repeated `types` was INTERNAL ("too
/// many SQL variables"). Now more than 16 is INVALID_ARGUMENT naming `types` (F6: every repeated
/// field has a bound), and repeated types within it are one set.
async fn repeated_event_types_are_one_filter(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, _) = app.issue_test_key().await;
    let list = |types: Vec<i32>| {
        let mut client = app.client.clone();
        let key_id = key.id.clone();
        async move {
            client
                .list_key_events(op(pb::ListKeyEventsRequest {
                    key_id,
                    types,
                    ..Default::default()
                }))
                .await
        }
    };
    let refused = list(vec![pb::KeyEventType::Issued as i32; 40_000])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(violated_fields(&refused), vec!["types".to_owned()]);
    let events = list(vec![pb::KeyEventType::Issued as i32; 16])
        .await
        .expect("answered")
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].r#type, pb::KeyEventType::Issued as i32);
    app.stop().await;
}

both_stores!(repeated_event_types_are_one_filter);
