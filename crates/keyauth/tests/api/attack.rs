//! Under load and under attack: what an anonymous caller sends can make keyauth neither write,
//! stall, lock an owner out, nor spend more than a bare RPC.

use tonic::Code;
use tonic_types::StatusExt;

use crate::both_stores;
use crate::helpers::*;

both_stores!(caller_strings_are_echoed_cut);

async fn caller_strings_are_echoed_cut(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    // Within the 64 KiB a Verify or CheckPermission may take.
    let huge = "r".repeat(60 * 1024);
    for (resource, action) in [(huge.as_str(), "read"), ("patients", huge.as_str())] {
        let status = assert_status(
            app.check(&secret, resource, action).await,
            Code::InvalidArgument,
            Some("INVALID_ARGUMENT"),
        );
        assert!(status.message().len() < 1024, "{}", status.message().len());
        assert!(status.message().contains("…(cut"), "{}", status.message());
        assert!(status.details().len() < 1024, "{}", status.details().len());
        assert!(!violated_fields(&status).is_empty());
    }
    // Many bad permissions in one Verify: the answer lists a bounded number of them.
    let many: Vec<_> = (0..60)
        .map(|i| permission(&format!("nope{i}-{}", "x".repeat(300)), &["read"]))
        .collect();
    let status = assert_status(
        app.verify_with(&secret, many).await,
        Code::InvalidArgument,
        None,
    );
    assert!(
        status.message().len() < 8 * 1024,
        "{}",
        status.message().len()
    );
    let details = status.get_error_details();
    assert!(details.bad_request().unwrap().field_violations.len() <= 10);
    app.stop().await;
}

both_stores!(
    a_guessed_key_id_does_not_lock_its_owner_out,
    random_key_ids_cost_no_store_read,
    concurrent_first_verifies_of_one_key_read_the_store_once,
    concurrent_refreshes_of_one_key_read_the_store_once,
    too_many_cold_lookups_answer_unavailable_at_once,
);

/// A wrong secret for `key`'s id, with a valid checksum (it passes parsing).
fn guess(key: &str, i: usize) -> String {
    use keyauth_core::key::PresentedKey;
    let real = PresentedKey::parse(key).unwrap();
    let secret = format!("{:0>32}", format!("guess{i}"));
    PresentedKey::from_parts(real.environment(), real.lookup(), &secret)
        .unwrap()
        .expose()
        .to_owned()
}

async fn a_guessed_key_id_does_not_lock_its_owner_out(backend: Backend) {
    // The owner's key is not cached on this instance (a restart, another instance): the
    // attacker knows its public id and sends wrong secrets with valid checksums (F2). Each is
    // refused by the key's check value: never throttled, and the owner is proven at once.
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    let argon2 = app.argon2_checks();
    for i in 0..50 {
        let r = app
            .verify_with(&guess(&secret, i), vec![])
            .await
            .expect("a wrong secret is refused, never throttled");
        assert_eq!(error_code(&r), Some("authentication_error"));
    }
    assert_eq!(app.argon2_checks(), argon2, "no argon2 for a wrong secret");
    assert!(
        app.verify(&secret).await.valid,
        "the owner at the first try"
    );
    // The attack goes on: the owner, now cached, is answered from memory.
    for i in 50..60 {
        let _ = app.verify_with(&guess(&secret, i), vec![]).await;
        assert!(app.verify(&secret).await.valid);
    }
    app.stop().await;
}

async fn random_key_ids_cost_no_store_read(backend: Backend) {
    use keyauth_core::key::PresentedKey;
    use keyauth_core::model::Environment;
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    let reads = app.key_reads();
    for i in 0..1000 {
        let env = if i % 2 == 0 {
            Environment::Test
        } else {
            Environment::Live
        };
        let random = PresentedKey::generate(env).unwrap();
        assert_eq!(
            error_code(&app.verify(random.expose()).await),
            Some("authentication_error")
        );
    }
    let spent = app.key_reads() - reads;
    assert!(spent <= 20, "{spent} store reads for 1,000 random ids");
    // A key issued here passes the filter at once.
    let (_, fresh) = app.issue_test_key().await;
    assert!(app.verify(&fresh).await.valid);
    assert!(app.verify(&secret).await.valid);
    app.stop().await;
}

async fn concurrent_first_verifies_of_one_key_read_the_store_once(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    let reads = app.key_reads();
    for answer in app.verify_concurrently(vec![secret; 20]).await {
        assert!(answer.unwrap().valid);
    }
    assert_eq!(app.key_reads() - reads, 1, "one store read, one argon2");
    app.stop().await;
}

async fn concurrent_refreshes_of_one_key_read_the_store_once(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    assert!(app.verify(&secret).await.valid);
    app.clock.advance(std::time::Duration::from_secs(31));
    let reads = app.key_reads();
    for answer in app.verify_concurrently(vec![secret; 20]).await {
        assert!(answer.unwrap().valid);
    }
    assert_eq!(
        app.key_reads() - reads,
        1,
        "the TTL refresh read the store once"
    );
    app.stop().await;
}

async fn too_many_cold_lookups_answer_unavailable_at_once(backend: Backend) {
    // One cold lookup at a time, a slow hash, no cache: concurrent cold calls are refused at
    // once (not queued), and no answer is a guess.
    let mut options = slow_and_uncached();
    options.hash_queue = 64;
    options.cache.max_cold_lookups = 1;
    assert_a_cold_rush_is_refused(backend, options, Some("OVERLOADED")).await;
}

both_stores!(refused_operator_calls_write_nothing_inline_and_are_limited);

/// The refused-operator-call rows of the audit trail: (peer, request id, occurrences).
async fn auth_failure_rows(db: &TestDb) -> Vec<(String, Option<String>, i64)> {
    use sqlx::Connection;
    const SQL: &str = "SELECT peer, request_id, occurrences FROM key_events \
                       WHERE event = 'operator_auth_failed' ORDER BY seq";
    match db {
        TestDb::Sqlite { .. } => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.unwrap();
            sqlx::query_as(SQL).fetch_all(&mut conn).await.unwrap()
        }
        TestDb::Postgres { .. } => {
            let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
            sqlx::query_as(SQL).fetch_all(&mut conn).await.unwrap()
        }
    }
}

async fn refused_operator_calls_write_nothing_inline_and_are_limited(backend: Backend) {
    use keyauth_proto as pb;
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, _) = app.issue_test_key().await;
    let limit = keyauth_core::auth_failures::AuthFailureSettings::DEFAULT_LIMIT as usize;
    let mut codes = Vec::new();
    for i in 0..limit + 10 {
        let mut bad = tonic::Request::new(pb::GetKeyRequest {
            key_id: key.id.clone(),
        });
        if i % 2 == 0 {
            bad.metadata_mut()
                .insert("authorization", "Bearer wrong".parse().unwrap());
        }
        bad.metadata_mut()
            .insert("x-request-id", format!("req-intruder-{i}").parse().unwrap());
        let refused = app.client.clone().get_key(bad).await.unwrap_err();
        if refused.code() == Code::ResourceExhausted {
            let details = refused.get_error_details();
            assert_eq!(
                details.error_info().unwrap().reason,
                "TOO_MANY_AUTH_FAILURES"
            );
            let delay = details.retry_info().unwrap().retry_delay.unwrap();
            assert!(delay <= std::time::Duration::from_secs(60), "{delay:?}");
        }
        codes.push(refused.code());
    }
    assert!(codes[..limit].iter().all(|c| *c == Code::Unauthenticated));
    assert!(codes[limit..].iter().all(|c| *c == Code::ResourceExhausted));
    // Nothing was written by the refused calls themselves.
    assert!(auth_failure_rows(&app.db).await.is_empty());

    // The housekeeping task writes one row for the peer, with the count.
    assert_eq!(
        app.authority.flush_auth_failures().await.unwrap(),
        (limit + 10) as u64
    );
    let last = format!("req-intruder-{}", limit + 9);
    assert_eq!(
        auth_failure_rows(&app.db).await,
        vec![("127.0.0.1".to_owned(), Some(last), (limit + 10) as i64)]
    );
    assert_eq!(app.authority.flush_auth_failures().await.unwrap(), 0);
    assert_eq!(auth_failure_rows(&app.db).await.len(), 1);
    // F8: past the limit, nothing from that address has its token compared until the window
    // passes, so guessing stops there: even the right token is refused.
    let blocked = assert_status(
        app.get(&key.id).await,
        Code::ResourceExhausted,
        Some("TOO_MANY_AUTH_FAILURES"),
    );
    assert!(blocked.get_error_details().retry_info().is_some());
    // The limit's window passes: the right token works, refusals are UNAUTHENTICATED again.
    app.clock.advance(std::time::Duration::from_secs(60));
    assert_eq!(app.get(&key.id).await.unwrap().id, key.id);
    let refused = app
        .client
        .clone()
        .get_key(tonic::Request::new(pb::GetKeyRequest {
            key_id: key.id.clone(),
        }))
        .await;
    assert_status(refused, Code::Unauthenticated, None);

    // Kept for the retention (30 days), then purged.
    app.clock
        .advance(std::time::Duration::from_secs(29 * 24 * 3600));
    assert_eq!(app.authority.purge_auth_failures().await.unwrap(), 0);
    app.clock.advance(std::time::Duration::from_secs(24 * 3600));
    assert_eq!(app.authority.purge_auth_failures().await.unwrap(), 1);
    assert!(auth_failure_rows(&app.db).await.is_empty());
    app.stop().await;
}

both_stores!(the_key_filter_holds_every_page_of_the_store);

/// The record the authority would store for a standard `paged` test key just issued (never
/// used, changed, nor revoked): for writing straight to the store, behind a server's back.
fn fresh_record(
    key: &keyauth_core::key::PresentedKey,
    name: String,
    secret_hash: String,
    create_time: keyauth_core::clock::Timestamp,
) -> keyauth_core::model::KeyRecord {
    use keyauth_core::key::KeyIdOf;
    use keyauth_core::model::{ApplicationId, Environment, KeyRecord, Metadata, Permissions};
    KeyRecord {
        // Who it is.
        id: key.id(),
        redacted: key.redacted(),
        secret_hash,
        secret_check: None,
        application_id: ApplicationId::parse("paged", "application_id").unwrap(),
        environment: Environment::Test,
        name,
        // A standard key: every permission, no metadata.
        restricted: false,
        permissions: Permissions::default(),
        metadata: Metadata::new(),
        // Its life so far: made, nothing since.
        create_time,
        replaced_by: None,
        expire_time: None,
        revoke_time: None,
        revoke_reason: None,
        last_used_time: None,
        encoded_answer: Default::default(),
    }
}

async fn the_key_filter_holds_every_page_of_the_store(backend: Backend) {
    use keyauth_core::hashing::{HashParams, Hasher};
    use keyauth_core::key::PresentedKey;
    use keyauth_core::model::Environment;
    use keyauth_core::store::Provenance;
    let cheap = HashParams {
        m_cost: 8,
        t_cost: 1,
        p_cost: 1,
    };
    let options = Options {
        hash: cheap,
        ..Options::default()
    };
    let Some(app) = spawn_with(backend, options.clone()).await else {
        return;
    };
    // 2,500 keys written behind this instance's back (as another instance would): the filter
    // is read from the store in pages of 1,000.
    let secret = "S".repeat(32);
    let hash = Hasher::new(cheap, 1, 1)
        .unwrap()
        .hash(secret.as_bytes(), None)
        .await
        .unwrap();
    let mut keys = Vec::new();
    for i in 0..2500 {
        let key =
            PresentedKey::from_parts(Environment::Test, &format!("page{i:08}"), &secret).unwrap();
        let record = fresh_record(
            &key,
            format!("paged {i}"),
            hash.clone(),
            app.authority.now(),
        );
        app.authority
            .store()
            .insert_key(&record, &Provenance::default(), None)
            .await
            .unwrap();
        keys.push(key.expose().to_owned());
    }
    register_secret(&keys[0]);
    // A restarted instance builds its filter from the store: the keys at every page boundary,
    // and far more keys than the few absent ids a second it would read anyway, pass it.
    let db = app.stop().await;
    let app = spawn_on(db, options).await;
    let boundaries = [0, 998, 999, 1000, 1001, 1999, 2000, 2001, 2499];
    for i in (0..2500).step_by(25).chain(boundaries) {
        assert!(app.verify(&keys[i]).await.valid, "key {i}");
    }
    app.stop().await;
}

both_stores!(keys_issued_during_a_filter_rebuild_are_kept);

async fn keys_issued_during_a_filter_rebuild_are_kept(backend: Backend) {
    use keyauth_core::hashing::HashParams;
    use keyauth_core::key::PresentedKey;
    use keyauth_core::model::Environment;
    let options = Options {
        hash: HashParams {
            m_cost: 8,
            t_cost: 1,
            p_cost: 1,
        },
        ..Options::default()
    };
    let Some(app) = spawn_with(backend, options).await else {
        return;
    };
    // Spend the few store reads a second allowed for ids outside the filter (the test clock
    // stands still, so none come back): from here on a key missing from the filter fails.
    for _ in 0..20 {
        let random = PresentedKey::generate(Environment::Test).unwrap();
        app.verify(random.expose()).await;
    }
    // Keys issued while the filter is rebuilt again and again.
    let authority = app.authority.clone();
    let rebuilding = tokio::spawn(async move {
        for _ in 0..40 {
            authority.rebuild_key_filter().await.unwrap();
        }
    });
    let mut secrets = Vec::new();
    while !rebuilding.is_finished() || secrets.len() < 20 {
        secrets.push(app.issue_test_key().await.1);
    }
    rebuilding.await.unwrap();
    for (i, secret) in secrets.iter().enumerate() {
        assert!(
            app.verify(secret).await.valid,
            "key {i} of {}",
            secrets.len()
        );
    }
    app.stop().await;
}

/// A call on a raw HTTP/2 connection whose body announces a 200 KB message and never sends
/// it: (the answer's headers, if one came within `wait`).
async fn unfinished_call(
    addr: std::net::SocketAddr,
    method: &str,
    authorization: &str,
    wait: std::time::Duration,
) -> Option<hyper::HeaderMap> {
    use http_body_util::StreamBody;
    use hyper::body::{Bytes, Frame};

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    // The gRPC frame header of a 200,000-byte message, then nothing.
    let announced = 200_000u32.to_be_bytes();
    tx.send(Ok(Frame::data(Bytes::from(vec![
        0,
        announced[0],
        announced[1],
        announced[2],
        announced[3],
    ]))))
    .await
    .unwrap();
    let request = hyper::Request::post(format!(
        "http://{addr}/keyauth.v1.KeyAuthorityService/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("authorization", authorization)
    .body(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
    .unwrap();
    let answer = tokio::time::timeout(wait, sender.send_request(request)).await;
    drop(tx);
    answer.ok().map(|r| r.unwrap().headers().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_is_answered_from_its_headers_before_its_body_is_read() {
    let app = spawn_with(
        Backend::Sqlite,
        Options {
            verifier_token: Some("verifier-token-of-the-attack-tests".into()),
            limits: keyauth_server::limits::Limits {
                request_timeout: std::time::Duration::from_secs(60),
                ..Default::default()
            },
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let wait = std::time::Duration::from_secs(5);
    for (method, code) in [
        ("IssueKey", "16"),
        ("ListKeys", "16"),
        ("Verify", "16"),
        ("GetCatalog", "16"),
    ] {
        let headers = unfinished_call(app.addr, method, "Bearer wrong", wait)
            .await
            .unwrap_or_else(|| panic!("{method}: a wrong token waited for the body"));
        assert_eq!(headers["grpc-status"], code, "{method}: {headers:?}");
        assert!(headers.contains_key("x-request-id"), "{method}");
    }
    // The operator's refusals were counted as any refused operator call (IssueKey, ListKeys).
    assert_eq!(app.authority.flush_auth_failures().await.unwrap(), 2);

    // Admitted, the same call waits for its body (here: until the client gives up).
    let admitted = unfinished_call(
        app.addr,
        "IssueKey",
        &format!("Bearer {ADMIN_TOKEN}"),
        std::time::Duration::from_millis(500),
    )
    .await;
    assert!(
        admitted.is_none(),
        "answered without its body: {admitted:?}"
    );
    app.stop().await;
}

/// F6: Verify needs no token, so its repeated fields are bounded before anything is judged.
/// Before, 1,000 permissions × 80 unknown actions (250 KB) cost 100 ms of server time, one
/// violation built per action. Now such a message is refused from its frame header, unread
/// (Verify takes 64 KiB at most), and a list within that size past a bound is one violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_permission_list_is_refused_before_it_is_judged() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    let actions: Vec<&str> = (0..80).map(|_| "x").collect();
    let huge = app
        .verify_with(&secret, vec![permission("patients", &actions); 1000])
        .await
        .unwrap_err();
    assert_status(
        Err::<(), _>(huge),
        Code::ResourceExhausted,
        Some("REQUEST_TOO_LARGE"),
    );
    for (permissions, field) in [
        (
            vec![permission("patients", &actions); 100],
            "required_permissions",
        ),
        (
            vec![permission("patients", &["read"]); 65],
            "required_permissions",
        ),
        (
            vec![
                permission("patients", &["read"]),
                permission("ai", &actions[..17]),
            ],
            "required_permissions[1].actions",
        ),
    ] {
        let refused = app.verify_with(&secret, permissions).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(violated_fields(&refused), vec![field.to_owned()]);
        assert!(refused.message().len() < 200, "{}", refused.message());
    }
    // At the bounds, with duplicates: accepted, folded.
    let folded = app
        .verify_with(&secret, vec![permission("patients", &["read"; 16]); 64])
        .await
        .unwrap();
    assert!(folded.valid, "{folded:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_sent_to_get_principal_count_towards_the_limit() {
    use keyauth_proto as pb;
    // GetPrincipal admits any credential: the console signs in with it, so a guess there is
    // limited like a guess on any operator RPC.
    let app = spawn(Backend::Sqlite).await.unwrap();
    let limit = keyauth_core::auth_failures::AuthFailureSettings::DEFAULT_LIMIT as usize;
    for i in 0..=limit {
        let mut guess = tonic::Request::new(pb::GetPrincipalRequest {});
        guess.metadata_mut().insert(
            "authorization",
            format!("Bearer guess-{i}").parse().unwrap(),
        );
        let refused = app.client.clone().get_principal(guess).await.unwrap_err();
        let want = if i < limit {
            Code::Unauthenticated
        } else {
            Code::ResourceExhausted
        };
        assert_eq!(refused.code(), want, "guess {i}: {refused:?}");
    }
    assert_eq!(
        app.authority.flush_auth_failures().await.unwrap(),
        limit as u64 + 1
    );
    app.stop().await;
}
