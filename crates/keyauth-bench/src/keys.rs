//! The keys the benchmark issues over gRPC and proves before measuring (set-up, not measured).

use std::sync::Arc;

use keyauth_proto as pb;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;
use tokio::task::JoinSet;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::error::{BoxError, Result};

/// Calls in flight while issuing keys and warming the cache (setup, not measured).
pub const SETUP_PARALLELISM: usize = 8;

pub const APPLICATION: &str = "bench-app";

/// Issues `n` keys over gRPC, odd ones restricted to `patients: [read]`; returns the full
/// keys in issue order.
pub async fn issue_keys(channel: &Channel, n: usize, admin_token: &str) -> Result<Vec<String>> {
    let bearer: MetadataValue<_> = format!("Bearer {admin_token}").parse()?;
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let mut client = KeyAuthorityServiceClient::new(channel.clone());
        let bearer = bearer.clone();
        tasks.spawn(async move {
            let mut issued = Vec::new();
            for i in (worker..n).step_by(SETUP_PARALLELISM) {
                let restricted = i % 2 == 1;
                let request = issue_request("bench", i, &bearer);
                let response = client.issue_key(request).await?.into_inner();
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
pub fn issue_request(
    prefix: &str,
    i: usize,
    bearer: &MetadataValue<tonic::metadata::Ascii>,
) -> Request<pb::IssueKeyRequest> {
    let permissions = if i % 2 == 1 {
        vec![pb::Permission {
            resource: "patients".into(),
            actions: vec!["read".into()],
        }]
    } else {
        Vec::new()
    };
    let mut request = Request::new(pb::IssueKeyRequest {
        application_id: APPLICATION.into(),
        environment: pb::Environment::Test as i32,
        name: format!("{prefix}-{i}"),
        permissions,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// Verifies every key once, so that each is proven and cached.
pub async fn warm_cache(channel: &Channel, keys: &[String]) -> Result<()> {
    let keys: Arc<[String]> = keys.into();
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let mut client = KeyAuthorityServiceClient::new(channel.clone());
        let keys = keys.clone();
        tasks.spawn(async move {
            for key in keys.iter().skip(worker).step_by(SETUP_PARALLELISM) {
                let answer = client.verify(verify_request(key)).await?.into_inner();
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
