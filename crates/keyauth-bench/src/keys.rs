//! The keys the benchmark issues over gRPC and proves before measuring (set-up, not measured).

use std::sync::Arc;

use keyauth_client::Client;
use keyauth_proto as pb;
use tokio::task::JoinSet;

use crate::error::{BoxError, Result};

/// Calls in flight while issuing keys and warming the cache (setup, not measured).
pub const SETUP_PARALLELISM: usize = 8;

pub const APPLICATION: &str = "bench-app";

/// Runs `job(i)` for every `i` in `0..n`, `SETUP_PARALLELISM` calls in flight: task `w` takes
/// `w`, `w + SETUP_PARALLELISM`, … in turn. Returns each `(i, answer)`, in no given order.
pub async fn spread<T, F, Fut>(n: usize, job: F) -> Result<Vec<(usize, T)>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let job = job.clone();
        tasks.spawn(async move {
            let mut done = Vec::new();
            for i in (worker..n).step_by(SETUP_PARALLELISM) {
                done.push((i, job(i).await?));
            }
            Ok::<_, BoxError>(done)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined??);
    }
    Ok(all)
}

/// Issues `n` keys, odd ones restricted to `patients: [read]`; returns the full keys in issue
/// order.
pub async fn issue_keys(client: &Client, n: usize) -> Result<Vec<String>> {
    let client = client.clone();
    let issued = spread(n, move |i| {
        let client = client.clone();
        async move {
            let restricted = i % 2 == 1;
            let response = client.issue_key(issue_message("bench", i)).await?;
            if response.key.as_ref().map(|k| k.restricted) != Some(restricted) {
                return Err(format!("IssueKey {i}: unexpected answer").into());
            }
            Ok(response.secret)
        }
    })
    .await?;
    let mut keys = vec![String::new(); n];
    for (i, key) in issued {
        keys[i] = key;
    }
    Ok(keys)
}

/// The `i`th key the benchmark issues (`{prefix}-{i}`): odd ones restricted to `patients:read`,
/// even ones standard.
pub fn issue_message(prefix: &str, i: usize) -> pb::IssueKeyRequest {
    let permissions = if i % 2 == 1 {
        vec![pb::Permission {
            resource: "patients".into(),
            actions: vec!["read".into()],
        }]
    } else {
        Vec::new()
    };
    pb::IssueKeyRequest {
        application_id: APPLICATION.into(),
        environment: pb::Environment::Test as i32,
        name: format!("{prefix}-{i}"),
        permissions,
        ..Default::default()
    }
}

/// Verifies every key once, so that each is proven and cached.
pub async fn warm_cache(client: &Client, keys: &[String]) -> Result<()> {
    let keys: Arc<[String]> = keys.into();
    let client = client.clone();
    spread(keys.len(), move |i| {
        let client = client.clone();
        let request = verify_request(&keys[i]);
        async move {
            if !client.verify(request).await?.valid {
                return Err("warming: an issued key did not verify".into());
            }
            Ok(())
        }
    })
    .await?;
    Ok(())
}

pub fn verify_request(key: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        key: key.to_owned(),
        required_permissions: Vec::new(),
    }
}
