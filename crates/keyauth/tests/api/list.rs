use std::time::Duration;

use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    lists_newest_first_in_pages,
    refuses_forged_and_mismatched_page_tokens
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
    assert_status(
        list(
            &app,
            pb::ListKeysRequest {
                application_id: "pager".into(),
                page_size: -1,
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        None,
    );
    assert_status(
        list(
            &app,
            pb::ListKeysRequest {
                application_id: "".into(),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        None,
    );
    assert_status(
        list(
            &app,
            pb::ListKeysRequest {
                application_id: "pager".into(),
                environment: 5,
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        None,
    );
    app.stop().await;
}
