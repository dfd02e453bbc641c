//! The cost of one argon2id verification at the server's default parameters, and the cold-path
//! target it sets: `0.8 × cores ÷ cost`.

use std::time::{Duration, Instant};

use keyauth_core::hashing::{HashParams, Hasher};
use serde::Serialize;

use crate::error::Result;

/// Single-threaded `Hasher::verify` calls timed to estimate the argon2id cost.
pub const ARGON2_SAMPLES: u32 = 50;

#[derive(Debug, Serialize)]
pub struct Argon2Cost {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// Wall time of one `Hasher::verify`, thread hand-off included: the median (the cost the
    /// target uses: robust to other load on the machine), the mean and the fastest.
    pub median_us: f64,
    pub mean_us: f64,
    pub min_us: f64,
    pub samples: u32,
    pub cores: usize,
    /// 0.8 × cores ÷ median cost: what the cold path should reach with argon2id as its
    /// bottleneck.
    pub cold_target_rps: f64,
    pub cold_measured_rps: Option<f64>,
    pub cold_vs_target: Option<f64>,
}

impl Argon2Cost {
    /// With the cold Verify's measured RPS (when it ran) set against the target.
    pub fn with_measured(mut self, cold_measured_rps: Option<f64>) -> Self {
        self.cold_measured_rps = cold_measured_rps;
        self.cold_vs_target = self.cold_measured_rps.map(|m| m / self.cold_target_rps);
        self
    }
}

/// Times `Hasher::verify` of a default-cost hash, one call at a time.
pub async fn measure_argon2(cores: usize) -> Result<Argon2Cost> {
    let hasher = Hasher::new(HashParams::DEFAULT, 1, 0)?;
    let secret = keyauth_core::key::random_base62(keyauth_core::key::SECRET_LEN)?;
    let phc = hasher.hash(secret.as_bytes(), None).await?;
    // One untimed call: first touches of the blocking pool and the allocator.
    hasher.verify(secret.as_bytes(), &phc, None).await?;
    let mut times = Vec::with_capacity(ARGON2_SAMPLES as usize);
    for _ in 0..ARGON2_SAMPLES {
        let started = Instant::now();
        if !hasher.verify(secret.as_bytes(), &phc, None).await? {
            return Err("argon2id: a secret did not verify against its own hash".into());
        }
        times.push(started.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    let mean = times.iter().sum::<Duration>() / ARGON2_SAMPLES;
    Ok(Argon2Cost {
        m_cost_kib: HashParams::DEFAULT.m_cost,
        t_cost: HashParams::DEFAULT.t_cost,
        p_cost: HashParams::DEFAULT.p_cost,
        median_us: median.as_secs_f64() * 1e6,
        mean_us: mean.as_secs_f64() * 1e6,
        min_us: times[0].as_secs_f64() * 1e6,
        samples: ARGON2_SAMPLES,
        cores,
        cold_target_rps: 0.8 * cores as f64 / median.as_secs_f64(),
        cold_measured_rps: None,
        cold_vs_target: None,
    })
}
