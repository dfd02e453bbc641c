//! argon2id hashing of key secrets, on a bounded pool off the async threads.
//!
//! The pool runs at most `workers` hashes at once (one per core by default) and lets at most
//! `max_waiting` more wait; past that a call fails at once with [`Error::Overloaded`]
//! (UNAVAILABLE, retryable) instead of queueing past its caller's deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::error::Error;

/// argon2id cost parameters for new hashes. Existing hashes keep the parameters in their PHC
/// string, so changing these never breaks a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl HashParams {
    /// The secret is 190 random bits, so cost buys nothing against guessing; keep it cheap.
    pub const DEFAULT: HashParams = HashParams {
        m_cost: 4096,
        t_cost: 1,
        p_cost: 1,
    };

    pub fn validate(self) -> Result<Params, String> {
        Params::new(self.m_cost, self.t_cost, self.p_cost, None).map_err(|e| e.to_string())
    }
}

pub struct Hasher {
    params: Params,
    workers: usize,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Hasher {
    pub fn new(params: HashParams, workers: usize, max_waiting: usize) -> Result<Self, String> {
        Ok(Hasher {
            params: params.validate()?,
            workers: workers.max(1),
            permits: Arc::new(Semaphore::new(workers.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        })
    }

    /// Hashes a secret into a PHC string with a fresh random salt.
    pub async fn hash(&self, secret: &[u8], deadline: Option<Instant>) -> Result<String, Error> {
        let params = self.params.clone();
        self.run(secret, deadline, move |secret| {
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(secret)
                .map(|h| h.to_string())
                .map_err(Error::internal)
        })
        .await
    }

    /// Checks a secret against a PHC string (whatever its parameters).
    pub async fn verify(
        &self,
        secret: &[u8],
        phc: &str,
        deadline: Option<Instant>,
    ) -> Result<bool, Error> {
        let phc = phc.to_owned();
        self.run(secret, deadline, move |secret| {
            let hash = PasswordHash::new(&phc).map_err(Error::internal)?;
            Ok(Argon2::default().verify_password(secret, &hash).is_ok())
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        secret: &[u8],
        deadline: Option<Instant>,
        work: impl FnOnce(&[u8]) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(Error::Overloaded);
                }
                let _waiting = WaitingGuard(&self.waiting);
                let acquire = self.permits.clone().acquire_owned();
                match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), acquire)
                        .await
                        .map_err(|_| Error::DeadlineExceeded)?,
                    None => acquire.await,
                }
                .map_err(Error::internal)?
            }
        };
        let secret = Zeroizing::new(secret.to_vec());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&secret)
        })
        .await
        .map_err(Error::internal)?
    }

    /// Hashes waiting for a worker right now (for metrics and tests).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Workers hashing right now (for metrics).
    pub fn busy(&self) -> usize {
        self.workers
            .saturating_sub(self.permits.available_permits())
    }
}

struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = Hasher::new(HashParams::DEFAULT, 2, 8).unwrap();
        let phc = h.hash(b"secret-part", None).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=4096,t=1,p=1$"), "{phc}");
        assert!(!phc.contains("secret-part"));
        assert!(h.verify(b"secret-part", &phc, None).await.unwrap());
        assert!(!h.verify(b"secret-parT", &phc, None).await.unwrap());
    }

    #[tokio::test]
    async fn old_parameters_still_verify() {
        let old = Hasher::new(
            HashParams {
                m_cost: 8192,
                t_cost: 2,
                p_cost: 1,
            },
            1,
            1,
        )
        .unwrap();
        let phc = old.hash(b"s", None).await.unwrap();
        let new = Hasher::new(HashParams::DEFAULT, 1, 1).unwrap();
        assert!(new.verify(b"s", &phc, None).await.unwrap());
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(
            Hasher::new(
                HashParams {
                    m_cost: 1,
                    t_cost: 1,
                    p_cost: 1
                },
                1,
                1
            )
            .is_err()
        );
        assert!(
            Hasher::new(
                HashParams {
                    m_cost: 4096,
                    t_cost: 0,
                    p_cost: 1
                },
                1,
                1
            )
            .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_fails_fast() {
        // One worker, nobody may wait: while a slow hash runs, the next call is refused.
        let h = Arc::new(
            Hasher::new(
                HashParams {
                    m_cost: 65536,
                    t_cost: 4,
                    p_cost: 1,
                },
                1,
                0,
            )
            .unwrap(),
        );
        let slow = {
            let h = h.clone();
            tokio::spawn(async move { h.hash(b"a", None).await })
        };
        // Wait until the slow hash holds the only worker.
        while h.permits.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(h.hash(b"b", None).await, Err(Error::Overloaded)));
        assert!(slow.await.unwrap().is_ok());
    }
}
