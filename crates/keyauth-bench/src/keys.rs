//! The keys the benchmark issues over gRPC and proves before measuring (set-up, not measured).

use std::sync::Arc;

use keyauth_client::Client;
use keyauth_proto as pb;
use tokio::task::JoinSet;

use crate::error::{BoxError, Result};

/// Calls in flight while issuing keys and warming the cache (setup, not measured).
pub const SETUP_PARALLELISM: usize = 8;

pub const APPLICATION: &str = "bench-app";

/// Issues `n` keys, odd ones restricted to `patients: [read]`; returns the full keys in issue
/// order.
pub async fn issue_keys(client: &Client, n: usize) -> Result<Vec<String>> {
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let client = client.clone();
        tasks.spawn(async move {
            let mut issued = Vec::new();
            for i in (worker..n).step_by(SETUP_PARALLELISM) {
                let restricted = i % 2 == 1;
                let response = client.issue_key(issue_message("bench", i)).await?;
                if response.key.as_ref().map(|k| k.restricted) != Some(restricted) {
                    return Err::<_, BoxError>(format!("IssueKey {i}: unexpected answer").into());
                }
                issued.push((i, response.secret));
            }
            Ok(issued)
        });
    }
    let mut keys = vec![String::new(); n];
    while let Some(joined) = tasks.join_next().await {
        for (i, key) in joined?? {
            keys[i] = key;
        }
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
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let client = client.clone();
        let keys = keys.clone();
        tasks.spawn(async move {
            for key in keys.iter().skip(worker).step_by(SETUP_PARALLELISM) {
                let answer = client.verify(verify_request(key)).await?;
                if !answer.valid {
                    return Err::<_, BoxError>("warming: an issued key did not verify".into());
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

pub fn verify_request(key: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        key: key.to_owned(),
        required_permissions: Vec::new(),
    }
}
