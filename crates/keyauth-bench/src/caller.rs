//! The caller's view (`--caller`): what a service that verifies keys with `keyauth-client`
//! pays, against in-process servers on loopback.
//!
//! - in-process warm verify: `Verifier::verify` of cached keys, ns per call (p50/p99/mean);
//! - the seed's REST endpoint `GET /api/v1/patients` behind `KeyAuthLayer` vs the same endpoint
//!   without it (axum over HTTP/1.1 keep-alive, the same load, alternating rounds): RPS, p99;
//! - revocation seen by the caller: from `RevokeKey` returning to the first request the
//!   protected endpoint refuses, over many keys, on one instance (SQLite) and across two
//!   instances on one PostgreSQL database (`KEYAUTH_BENCH_DATABASE_URL`, else skipped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyauth_client::routes::Permission;
use keyauth_client::{Client, KeyAuthLayer, Verifier, VerifierOptions};
use keyauth_core::clock::Clock;
use keyauth_core::store::{self, StoreOptions};
use keyauth_proto as pb;
use keyauth_server::server::{self, AuthoritySettings, Running, ServeOptions};
use keyauth_server::service::Credentials;
use tokio::task::JoinSet;

use crate::error::{BoxError, Result};

const PATIENTS: &str = r#"{"object":"list","url":"/api/v1/patients","has_more":false,"data":[{"id":"pat_1234567890","object":"patient","uhid":"UG123456789A"}]}"#;

/// Settings of the caller phase.
pub struct CallerSettings {
    pub seconds: f64,
    pub rounds: u32,
    pub concurrency: u32,
    pub revocations: usize,
    pub postgres: Option<String>,
}

async fn start_server(database: &str, admin: &str) -> Result<Running> {
    let store = store::connect(database, &StoreOptions::default()).await?;
    let authority = server::authority(store, AuthoritySettings::default(), Clock::system()).await?;
    let options = ServeOptions {
        shutdown_grace: Duration::from_secs(5),
        credentials: Credentials::from_tokens(Some(admin), None)?,
        ..ServeOptions::default()
    };
    Ok(server::start("127.0.0.1:0".parse()?, authority, options).await?)
}

async fn client(addr: SocketAddr, admin: &str) -> Result<Client> {
    Ok(Client::builder(format!("http://{addr}"))
        .operator_token(admin)
        .idempotency(false)
        .connect()
        .await?)
}

async fn issue(client: &Client, n: usize) -> Result<Vec<(String, String)>> {
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let issued = client
            .issue_key(pb::IssueKeyRequest {
                application_id: "bench-caller".into(),
                environment: pb::Environment::Test.into(),
                name: format!("caller {i}"),
                ..Default::default()
            })
            .await?;
        keys.push((issued.key.map(|k| k.id).unwrap_or_default(), issued.secret));
    }
    Ok(keys)
}

async fn fresh_verifier(addr: SocketAddr) -> Result<Verifier> {
    let client = Client::builder(format!("http://{addr}")).connect().await?;
    let verifier = Verifier::new(client, VerifierOptions::default());
    let give_up = Instant::now() + Duration::from_secs(10);
    while !verifier.is_fresh() {
        if Instant::now() > give_up {
            return Err("the verifier never heard the change stream".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(verifier)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

async fn serve(router: Router) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

fn app() -> Router {
    Router::new().route("/api/v1/patients", get(|| async { PATIENTS }))
}

type Http = HttpClient<HttpConnector, Empty<bytes::Bytes>>;

async fn get_status(http: &Http, addr: SocketAddr, key: &str) -> Result<u16> {
    let request = http::Request::get(format!("http://{addr}/api/v1/patients"))
        .header("authorization", format!("Bearer {key}"))
        .body(Empty::new())?;
    let response = http.request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// Drives `addr` at the configured concurrency for `seconds`: (calls, histogram of µs).
async fn load(
    http: &Http,
    addr: SocketAddr,
    keys: &Arc<Vec<(String, String)>>,
    concurrency: u32,
    seconds: f64,
) -> Result<(u64, Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for task in 0..concurrency as usize {
        let (http, keys, stop) = (http.clone(), keys.clone(), stop.clone());
        tasks.spawn(async move {
            let mut h = histogram();
            let mut i = task;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()].1;
                i += concurrency as usize;
                let started = Instant::now();
                match get_status(&http, addr, key).await {
                    Ok(200) => h.record(started.elapsed().as_micros().max(1) as u64)?,
                    Ok(other) => return Err(format!("HTTP {other} from {addr}").into()),
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, BoxError>(h)
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = histogram();
    for h in tasks.join_all().await {
        all.add(h?)?;
    }
    Ok((all.len(), all))
}

/// Milliseconds from RevokeKey returning to the first refusal by `protected`, per key.
async fn revocation_latency(
    admin: &Client,
    http: &Http,
    protected: SocketAddr,
    keys: &[(String, String)],
) -> Result<Histogram<u64>> {
    let mut h = histogram();
    for (id, secret) in keys {
        // Cached by the verifier first: the case that matters is the in-memory answer.
        if get_status(http, protected, secret).await? != 200 {
            return Err(format!("{id} was not valid before its revocation").into());
        }
        admin
            .revoke_key(pb::RevokeKeyRequest {
                key_id: id.clone(),
                reason: "bench".into(),
            })
            .await?;
        let revoked_at = Instant::now();
        loop {
            if get_status(http, protected, secret).await? == 401 {
                h.record(revoked_at.elapsed().as_micros().max(1) as u64)?;
                break;
            }
            if revoked_at.elapsed() > Duration::from_secs(10) {
                return Err(format!("{id} still accepted 10 s after its revocation").into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    Ok(h)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub async fn run(settings: CallerSettings) -> Result<()> {
    let admin = keyauth_core::key::random_base62(32)?;
    let dir = tempfile::Builder::new()
        .prefix("keyauth-bench-caller-")
        .tempdir()?;
    let db = format!("sqlite://{}", dir.path().join("caller.db").display());
    let server = start_server(&db, &admin).await?;
    let operator = client(server.addr, &admin).await?;
    eprintln!("caller phase: issuing keys…");
    let keys = Arc::new(issue(&operator, 200).await?);

    // 1. In-process warm verify.
    let verifier = fresh_verifier(server.addr).await?;
    let required = [Permission::new("patients", "read")];
    for (_, secret) in keys.iter() {
        verifier.verify(secret, &required).await?;
    }
    let mut inproc = histogram();
    let calls = 200_000;
    let started = Instant::now();
    for i in 0..calls {
        let t = Instant::now();
        let verdict = verifier.verify(&keys[i % keys.len()].1, &required).await?;
        inproc.record(t.elapsed().as_nanos().max(1) as u64)?;
        if !verdict.is_valid() {
            return Err("a warm key was refused".into());
        }
    }
    let mean_ns = started.elapsed().as_nanos() as f64 / calls as f64;
    let mut rpc = histogram();
    for i in 0..2_000 {
        let t = Instant::now();
        operator
            .verify(pb::VerifyRequest {
                key: keys[i % keys.len()].1.clone(),
                required_permissions: vec![],
            })
            .await?;
        rpc.record(t.elapsed().as_nanos().max(1) as u64)?;
    }

    // 2. The REST endpoint with and without the layer, alternating.
    let protected = serve(app().layer(KeyAuthLayer::new(verifier.clone()))).await?;
    let open = serve(app()).await?;
    let http: Http = HttpClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(settings.concurrency as usize)
        .build_http();
    load(&http, protected, &keys, settings.concurrency, 0.5).await?;
    load(&http, open, &keys, settings.concurrency, 0.5).await?;
    let (mut with_calls, mut with_h) = (0, histogram());
    let (mut without_calls, mut without_h) = (0, histogram());
    for round in 0..settings.rounds {
        let (n, h) = load(
            &http,
            protected,
            &keys,
            settings.concurrency,
            settings.seconds,
        )
        .await?;
        with_calls += n;
        with_h.add(h)?;
        let (n, h) = load(&http, open, &keys, settings.concurrency, settings.seconds).await?;
        without_calls += n;
        without_h.add(h)?;
        eprintln!("caller round {}/{} done", round + 1, settings.rounds);
    }
    let total = settings.seconds * f64::from(settings.rounds);
    let with_rps = with_calls as f64 / total;
    let without_rps = without_calls as f64 / total;

    // 3. Revocation seen by the caller, one instance.
    let doomed = issue(&operator, settings.revocations).await?;
    let one = revocation_latency(&operator, &http, protected, &doomed).await?;

    // 4. Across two instances on PostgreSQL: revoke on A, the caller watches B.
    let across = match &settings.postgres {
        Some(url) => Some(across_instances(url, &admin, &http, settings.revocations).await?),
        None => None,
    };

    println!();
    println!(
        "caller view (keyauth-client), {} cores, client and servers in this process",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "in-process warm verify: p50 {} ns, p99 {} ns, mean {:.0} ns ({} calls; target p99 ≤ 2 µs)",
        inproc.value_at_quantile(0.5),
        inproc.value_at_quantile(0.99),
        mean_ns,
        calls
    );
    println!(
        "Verify RPC (one call at a time, for comparison): p50 {:.0} µs, p99 {:.0} µs",
        rpc.value_at_quantile(0.5) as f64 / 1000.0,
        rpc.value_at_quantile(0.99) as f64 / 1000.0
    );
    println!(
        "REST GET /api/v1/patients, c={}: protected {:.0} RPS p99 {:.2} ms; unprotected {:.0} RPS p99 {:.2} ms; ratio {:.3} (target ≥ 0.9)",
        settings.concurrency,
        with_rps,
        ms(with_h.value_at_quantile(0.99)),
        without_rps,
        ms(without_h.value_at_quantile(0.99)),
        with_rps / without_rps
    );
    println!(
        "revocation seen by the caller, one instance ({} keys): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 ≤ 100 ms)",
        one.len(),
        ms(one.value_at_quantile(0.5)),
        ms(one.value_at_quantile(0.99)),
        ms(one.max())
    );
    match across {
        Some(h) => println!(
            "revocation seen by the caller, across two instances on PostgreSQL ({} keys): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 ≤ 1 s)",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        ),
        None => println!(
            "revocation across instances: skipped (set KEYAUTH_BENCH_DATABASE_URL to a PostgreSQL database to measure it)"
        ),
    }
    drop(verifier);
    server.stop().await?;
    Ok(())
}

async fn across_instances(url: &str, admin: &str, http: &Http, n: usize) -> Result<Histogram<u64>> {
    // A fresh database of its own, dropped after.
    use sqlx::Connection;
    let name = format!(
        "keyauth_bench_{}",
        keyauth_core::key::random_base62(10)?.to_lowercase()
    );
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    let db = format!("{base}/{name}");
    let outcome = async {
        let a = start_server(&db, admin).await?;
        let b = start_server(&db, admin).await?;
        let on_a = client(a.addr, admin).await?;
        let verifier = fresh_verifier(b.addr).await?;
        let protected = serve(app().layer(KeyAuthLayer::new(verifier.clone()))).await?;
        let keys = issue(&on_a, n).await?;
        let h = revocation_latency(&on_a, http, protected, &keys).await?;
        drop(verifier);
        a.stop().await?;
        b.stop().await?;
        Ok::<_, BoxError>(h)
    }
    .await;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await;
    outcome
}
