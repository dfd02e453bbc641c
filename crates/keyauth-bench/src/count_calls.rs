//! `--count-calls N`: exactly N calls of one workload against a warm server (two keys issued
//! and proven first), for instruction counts per call under callgrind: run it with 0 calls and
//! with N, and divide the difference by N.

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::error::Result;
use crate::keys::{issue_keys, warm_cache};
use crate::load::Clients;
use crate::servers::{connect, operator_client, warm_server};
use crate::tally::Outcome;
use crate::workloads::{Inputs, Workload};

pub async fn run(workload: &str, calls: usize, cores: usize) -> Result<()> {
    const TASKS: usize = 16;
    let workload = match workload {
        "health" => Workload::Floor,
        "verify" => Workload::WarmVerify,
        "check" => Workload::WarmCheck,
        "bad-checksum" => Workload::BadChecksum,
        other => return Err(format!("unknown --count-workload {other:?}").into()),
    };
    let (_dir, admin_token, server) = warm_server(cores).await?;
    let channels = connect(server.addr, 2).await?;
    let keys = {
        let client = operator_client(server.addr, &admin_token).await?;
        let keys = issue_keys(&client, 2).await?;
        warm_cache(&client, &keys).await?;
        keys
    };
    let inputs = Arc::new(Inputs::new(keys.clone(), keys)?);
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let mut clients = Clients::new(channels[task % channels.len()].clone());
        let inputs = inputs.clone();
        let n = calls / TASKS + usize::from(task < calls % TASKS);
        tasks.spawn(async move {
            let mut problems = 0usize;
            for i in 0..n {
                let (_, call) = inputs.call(workload, task, TASKS, i);
                if !matches!(clients.send(call).await, Outcome::Expected) {
                    problems += 1;
                }
            }
            problems
        });
    }
    let mut problems = 0;
    while let Some(joined) = tasks.join_next().await {
        problems += joined?;
    }
    eprintln!(
        "{calls} calls of {}, {problems} unexpected",
        workload.label()
    );
    drop(channels);
    server.stop().await
}
