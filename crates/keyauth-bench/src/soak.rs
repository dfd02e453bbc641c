//! `--soak SECONDS`: the real server under a mixed load for a long while, its resident memory
//! sampled as it goes, to show that memory follows what is kept, not how long it ran.
//!
//! The server is built as `keyauth serve` builds it (default argon2id, cache, hash workers),
//! on its own runtime in this process. `--concurrency` client tasks send, each in a fixed
//! cycle of 100 calls: warm Verify (50) and CheckPermission (10) of keys in a shared pool;
//! Verify with a bad checksum (4), with an unknown key id and a valid checksum (4), with a
//! pool key's id and a wrong secret (2); IssueKey, half with an idempotency key, each new key
//! verified at once, cold (6); RevokeKey (2); RollKey without grace, the new key verified (2);
//! UpdateKey (2); GetKey (4); ListKeys (4); ListKeyEvents (2); an operator call with a wrong
//! token (4); health Check (4). The pool keeps the latest 2,000 keys; a key that leaves it is
//! revoked, so the store grows all along while the set of live keys does not.
//!
//! Every `SAMPLE` it prints VmRSS and VmHWM of this process (client included) with the calls
//! made so far; at the end, the calls per kind, the answers that were not the expected ones,
//! and the RSS growth over the second half of the run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyauth_core::hashing::HashParams;
use keyauth_core::key::PresentedKey;
use keyauth_core::model::Environment;
use keyauth_proto as pb;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;
use prost_types::FieldMask;
use tokio::task::JoinSet;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::Result;
use crate::keys::{APPLICATION, issue_message, verify_request};
use crate::procfs::MemorySample;
use crate::servers::{connect, warm_server};

/// Keys the pool holds at most; the oldest is revoked when a new one joins.
const POOL: usize = 2_000;

/// Kinds of call in the cycle, with how many of each per 100.
const CYCLE: [(Kind, usize); KINDS] = [
    (Kind::Verify, 50),
    (Kind::Check, 10),
    (Kind::BadChecksum, 4),
    (Kind::UnknownId, 4),
    (Kind::WrongSecret, 2),
    (Kind::Issue, 6),
    (Kind::Revoke, 2),
    (Kind::Roll, 2),
    (Kind::Update, 2),
    (Kind::Get, 4),
    (Kind::List, 4),
    (Kind::Events, 2),
    (Kind::Refused, 4),
    (Kind::Health, 4),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Verify,
    Check,
    BadChecksum,
    UnknownId,
    WrongSecret,
    Issue,
    Revoke,
    Roll,
    Update,
    Get,
    List,
    Events,
    Refused,
    Health,
}

const KINDS: usize = 14;

impl Kind {
    const ALL: [Kind; KINDS] = [
        Kind::Verify,
        Kind::Check,
        Kind::BadChecksum,
        Kind::UnknownId,
        Kind::WrongSecret,
        Kind::Issue,
        Kind::Revoke,
        Kind::Roll,
        Kind::Update,
        Kind::Get,
        Kind::List,
        Kind::Events,
        Kind::Refused,
        Kind::Health,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Verify => "Verify (pool key)",
            Kind::Check => "CheckPermission (pool key)",
            Kind::BadChecksum => "Verify, bad checksum",
            Kind::UnknownId => "Verify, unknown id",
            Kind::WrongSecret => "Verify, wrong secret",
            Kind::Issue => "IssueKey + cold Verify",
            Kind::Revoke => "RevokeKey",
            Kind::Roll => "RollKey + cold Verify",
            Kind::Update => "UpdateKey",
            Kind::Get => "GetKey",
            Kind::List => "ListKeys",
            Kind::Events => "ListKeyEvents",
            Kind::Refused => "operator call, wrong token",
            Kind::Health => "Health/Check",
        }
    }

    /// The kind of the `i`th call of a task's cycle.
    fn of(i: usize) -> Kind {
        let mut at = i % 100;
        for (kind, n) in CYCLE {
            if at < n {
                return kind;
            }
            at -= n;
        }
        Kind::Verify
    }
}

/// A live key: its id and its full secret key.
#[derive(Clone)]
struct Live {
    id: String,
    key: String,
}

struct Shared {
    pool: Mutex<VecDeque<Live>>,
    calls: [AtomicU64; KINDS],
    /// Answers that were not the expected ones, per kind.
    unexpected: [AtomicU64; KINDS],
    first_unexpected: Mutex<Option<String>>,
    issued: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn pick(&self, seed: &mut u64) -> Option<Live> {
        let pool = self.pool.lock().expect("pool lock");
        if pool.is_empty() {
            return None;
        }
        pool.get(next(seed) as usize % pool.len()).cloned()
    }

    /// Takes a random key out of the pool (to revoke or roll it).
    fn take(&self, seed: &mut u64) -> Option<Live> {
        let mut pool = self.pool.lock().expect("pool lock");
        if pool.is_empty() {
            return None;
        }
        let at = next(seed) as usize % pool.len();
        pool.swap_remove_back(at)
    }

    /// Adds a key; returns the one it pushed out, to be revoked.
    fn add(&self, live: Live) -> Option<Live> {
        let mut pool = self.pool.lock().expect("pool lock");
        pool.push_back(live);
        (pool.len() > POOL).then(|| pool.pop_front()).flatten()
    }

    fn note(&self, kind: Kind, outcome: Result<(), String>) {
        let k = kind as usize;
        self.calls[k].fetch_add(1, Ordering::Relaxed);
        if let Err(what) = outcome {
            self.unexpected[k].fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_unexpected.lock().expect("lock");
            first.get_or_insert_with(|| format!("{}: {what}", kind.label()));
        }
    }

    fn total(&self) -> u64 {
        self.calls.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// xorshift64: spreads the tasks' picks over the pool (not a secret).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// One client task's connection and token. Raw tonic clients, not keyauth-client's: this is
/// the load itself, and it sends what `Client` would not (a wrong token, idempotency keys of
/// its own choosing, no retries).
struct Client {
    keys: KeyAuthorityServiceClient<Channel>,
    health: HealthClient<Channel>,
    bearer: MetadataValue<tonic::metadata::Ascii>,
    wrong: MetadataValue<tonic::metadata::Ascii>,
}

impl Client {
    fn operator<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request
    }

    /// Verifies `key`, expecting `valid` (a 401 when not).
    async fn verify(&mut self, key: &str, valid: bool) -> Result<(), String> {
        let answer = self
            .keys
            .verify(verify_request(key))
            .await
            .map_err(|s| format!("{:?} {}", s.code(), s.message()))?
            .into_inner();
        let status = if valid { 200 } else { 401 };
        if answer.valid == valid && answer.http_status == status {
            Ok(())
        } else {
            Err(format!(
                "valid {} http_status {} error {:?}",
                answer.valid,
                answer.http_status,
                answer.error.map(|e| e.code)
            ))
        }
    }

    async fn revoke(&mut self, id: String) -> Result<(), String> {
        let request = self.operator(pb::RevokeKeyRequest {
            key_id: id,
            reason: "soak".into(),
        });
        self.keys.revoke_key(request).await.map_err(status)?;
        Ok(())
    }

    /// A key just issued or rolled: verified at once (cold), then put in the pool; the key it
    /// pushes out is revoked.
    async fn pool_new(
        &mut self,
        shared: &Shared,
        key: Option<pb::ApiKey>,
        secret: String,
    ) -> Result<(), String> {
        let id = key.map(|k| k.id).unwrap_or_default();
        self.verify(&secret, true).await?;
        if let Some(out) = shared.add(Live { id, key: secret }) {
            self.revoke(out.id).await?;
        }
        Ok(())
    }

    /// One call of `kind`; what the answer was, if not the expected one.
    async fn call(
        &mut self,
        kind: Kind,
        i: usize,
        shared: &Shared,
        seed: &mut u64,
    ) -> Result<(), String> {
        match kind {
            Kind::Verify => match shared.pick(seed) {
                // A key may be revoked or rolled by another task between pick and answer.
                Some(live) => self
                    .verify(&live.key, true)
                    .await
                    .or_else(|e| raced(shared, &live, e)),
                None => Ok(()),
            },
            Kind::Check => {
                let Some(live) = shared.pick(seed) else {
                    return Ok(());
                };
                let request = pb::CheckPermissionRequest {
                    key: live.key.clone(),
                    resource: "patients".into(),
                    action: "read".into(),
                };
                let answer = self.keys.check_permission(request).await.map_err(status)?;
                if answer.get_ref().allowed {
                    Ok(())
                } else {
                    raced(shared, &live, "not allowed".into())
                }
            }
            Kind::BadChecksum => {
                let mut key = PresentedKey::generate(Environment::Test)
                    .map_err(|e| e.to_string())?
                    .expose()
                    .to_owned();
                let last = key.pop().unwrap_or('0');
                key.push(if last == 'A' { 'B' } else { 'A' });
                self.verify(&key, false).await
            }
            Kind::UnknownId => {
                let key = PresentedKey::generate(Environment::Test).map_err(|e| e.to_string())?;
                self.verify(key.expose(), false).await
            }
            Kind::WrongSecret => {
                let Some(live) = shared.pick(seed) else {
                    return Ok(());
                };
                let key = PresentedKey::parse(&live.key).ok_or("a pool key does not parse")?;
                let secret = keyauth_core::key::random_base62(keyauth_core::key::SECRET_LEN)
                    .map_err(|e| e.to_string())?;
                let wrong = PresentedKey::from_parts(key.environment(), key.lookup(), &secret)
                    .ok_or("cannot build a key from a pool key's lookup")?;
                self.verify(wrong.expose(), false).await
            }
            Kind::Issue => {
                let n = shared.issued.fetch_add(1, Ordering::Relaxed) as usize;
                let mut request = self.operator(issue_message("soak", n));
                if n.is_multiple_of(2) {
                    let idempotency: MetadataValue<_> =
                        format!("soak-{n}").parse().map_err(|_| "idempotency key")?;
                    request
                        .metadata_mut()
                        .insert(keyauth_core::sealing::HEADER, idempotency);
                }
                let issued = self
                    .keys
                    .issue_key(request)
                    .await
                    .map_err(status)?
                    .into_inner();
                self.pool_new(shared, issued.key, issued.secret).await
            }
            Kind::Revoke => match shared.take(seed) {
                Some(live) => {
                    self.revoke(live.id).await?;
                    self.verify(&live.key, false).await
                }
                None => Ok(()),
            },
            Kind::Roll => {
                let Some(live) = shared.take(seed) else {
                    return Ok(());
                };
                let request = self.operator(pb::RollKeyRequest {
                    key_id: live.id,
                    grace_period: Some(prost_types::Duration::default()),
                    expire_time: None,
                });
                let rolled = self
                    .keys
                    .roll_key(request)
                    .await
                    .map_err(status)?
                    .into_inner();
                self.pool_new(shared, rolled.key, rolled.secret).await
            }
            Kind::Update => {
                let Some(live) = shared.pick(seed) else {
                    return Ok(());
                };
                let request = self.operator(pb::UpdateKeyRequest {
                    key: Some(pb::ApiKey {
                        id: live.id.clone(),
                        name: format!("soak-updated-{i}"),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["name".into()],
                    }),
                });
                match self.keys.update_key(request).await {
                    Ok(_) => Ok(()),
                    // Revoked by another task meanwhile.
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => Ok(()),
                    Err(s) => Err(status(s)),
                }
            }
            Kind::Get => {
                let Some(live) = shared.pick(seed) else {
                    return Ok(());
                };
                let request = self.operator(pb::GetKeyRequest { key_id: live.id });
                self.keys.get_key(request).await.map_err(status)?;
                Ok(())
            }
            Kind::List => {
                let states = if i.is_multiple_of(2) {
                    vec![pb::KeyState::Active as i32]
                } else {
                    Vec::new()
                };
                let request = self.operator(pb::ListKeysRequest {
                    application_id: APPLICATION.into(),
                    environment: pb::Environment::Test as i32,
                    page_size: 50,
                    states,
                    ..Default::default()
                });
                self.keys.list_keys(request).await.map_err(status)?;
                Ok(())
            }
            Kind::Events => {
                let Some(live) = shared.pick(seed) else {
                    return Ok(());
                };
                let request = self.operator(pb::ListKeyEventsRequest {
                    key_id: live.id,
                    page_size: 20,
                    ..Default::default()
                });
                self.keys.list_key_events(request).await.map_err(status)?;
                Ok(())
            }
            Kind::Refused => {
                let mut request = Request::new(pb::GetKeyRequest {
                    key_id: "key_0000000000000000".into(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", self.wrong.clone());
                match self.keys.get_key(request).await {
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        Ok(())
                    }
                    Ok(_) => Err("a wrong operator token was accepted".into()),
                    Err(s) => Err(status(s)),
                }
            }
            Kind::Health => {
                let answer = self
                    .health
                    .check(HealthCheckRequest::default())
                    .await
                    .map_err(status)?;
                if answer.get_ref().status == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(format!("health status {}", answer.get_ref().status))
                }
            }
        }
    }
}

fn status(s: tonic::Status) -> String {
    format!("{:?} {}", s.code(), s.message())
}

/// A pool key's denial is expected when another task took the key out of the pool (to revoke
/// or roll it) since it was picked.
fn raced(shared: &Shared, live: &Live, what: String) -> Result<(), String> {
    let pool = shared.pool.lock().expect("pool lock");
    if pool.iter().any(|l| l.id == live.id) {
        Err(what)
    } else {
        Ok(())
    }
}

pub(crate) async fn run(seconds: f64, concurrency: usize, cores: usize) -> Result<()> {
    let arenas = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset".into());
    let before = MemorySample::read()?;
    let (_dir, admin_token, server) = warm_server(cores).await?;
    let channels = connect(server.addr, 4).await?;
    let idle = MemorySample::read()?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "soak: {seconds:.0} s, {concurrency} client tasks over {} connections, argon2id m={} KiB, \
         {cores} hash workers, MALLOC_ARENA_MAX={arenas}; VmRSS {:.1} MiB before the server, {:.1} \
         MiB with it idle",
        channels.len(),
        HashParams::DEFAULT.m_cost,
        mib(before.rss_kib),
        mib(idle.rss_kib),
    );

    let shared = Arc::new(Shared {
        pool: Mutex::new(VecDeque::with_capacity(POOL + 1)),
        calls: std::array::from_fn(|_| AtomicU64::new(0)),
        unexpected: std::array::from_fn(|_| AtomicU64::new(0)),
        first_unexpected: Mutex::new(None),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let bearer: MetadataValue<_> = format!("Bearer {admin_token}").parse()?;
    let wrong: MetadataValue<_> =
        format!("Bearer {}", keyauth_core::key::random_base62(32)?).parse()?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..concurrency {
        let channel = channels[task % channels.len()].clone();
        let mut client = Client {
            keys: KeyAuthorityServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            bearer: bearer.clone(),
            wrong: wrong.clone(),
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (task as u64 + 1);
            // Tasks start at different points of the cycle, so the mix holds at every moment.
            let mut i = task * 100 / concurrency.max(1);
            while !shared.stop.load(Ordering::Relaxed) {
                let kind = Kind::of(i);
                let outcome = client.call(kind, i, &shared, &mut seed).await;
                shared.note(kind, outcome);
                i += 1;
            }
        });
    }

    let duration = Duration::from_secs_f64(seconds);
    let sample_every = Duration::from_secs_f64((seconds / 20.0).clamp(1.0, 30.0));
    let mut samples: Vec<(Duration, MemorySample)> = Vec::new();
    println!(
        "{:>8} {:>10} {:>8} {:>10} {:>10}",
        "elapsed", "calls", "keys", "VmRSS", "VmHWM"
    );
    loop {
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        tokio::time::sleep(sample_every.min(duration - elapsed)).await;
        let sample = MemorySample::read()?;
        println!(
            "{:>7.0}s {:>10} {:>8} {:>6.1} MiB {:>6.1} MiB",
            started.elapsed().as_secs_f64(),
            shared.total(),
            shared.issued.load(Ordering::Relaxed),
            mib(sample.rss_kib),
            mib(sample.hwm_kib),
        );
        samples.push((started.elapsed(), sample));
    }
    shared.stop.store(true, Ordering::Relaxed);
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    let took = started.elapsed().as_secs_f64();

    println!(
        "\n{:<30} {:>10} {:>8} {:>11}",
        "call", "calls", "per s", "unexpected"
    );
    for kind in Kind::ALL {
        let calls = shared.calls[kind as usize].load(Ordering::Relaxed);
        println!(
            "{:<30} {:>10} {:>8.0} {:>11}",
            kind.label(),
            calls,
            calls as f64 / took,
            shared.unexpected[kind as usize].load(Ordering::Relaxed)
        );
    }
    if let Some(first) = shared.first_unexpected.lock().expect("lock").as_ref() {
        println!("first unexpected answer: {first}");
    }
    let last = samples
        .last()
        .map(|(_, s)| s.rss_kib)
        .unwrap_or(idle.rss_kib);
    let half = samples
        .iter()
        .find(|(at, _)| at.as_secs_f64() >= took / 2.0)
        .map(|(_, s)| s.rss_kib)
        .unwrap_or(last);
    let after = MemorySample::read()?;
    println!(
        "\nsoak: {} calls in {took:.0} s, {} keys issued (the latest {POOL} live, the rest \
         revoked); VmRSS {:.1} MiB at half time, {:.1} MiB at the end ({:+.1} MiB over the second \
         half); peak (VmHWM) {:.1} MiB",
        shared.total(),
        shared.issued.load(Ordering::Relaxed),
        mib(half),
        mib(last),
        mib(last) - mib(half),
        mib(after.hwm_kib),
    );
    drop(channels);
    server.stop().await?;
    let unexpected: u64 = shared
        .unexpected
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    if unexpected > 0 {
        return Err(format!("{unexpected} unexpected answers during the soak").into());
    }
    Ok(())
}
