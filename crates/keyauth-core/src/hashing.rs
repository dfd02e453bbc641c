//! argon2id hashing of key secrets, on a bounded pool off the async threads.
//!
//! The pool runs at most `workers` hashes at once (one per core by default) and lets at most
//! `max_waiting` more wait; past that a call fails at once with [`Error::Overloaded`]
//! (UNAVAILABLE, retryable) instead of queueing past its caller's deadline.
//!
//! argon2id needs `m_cost` KiB of working memory per hash (4 MiB by default). Allocated and
//! freed per hash, those blocks end up in the allocator's per-thread arenas of whichever
//! blocking threads ran a hash, and stay resident there. A verification instead borrows a
//! block buffer from [`BlockPool`], one per worker at most (the permits bound how many are in
//! use), wiped after each use: the memory argon2 keeps is `workers × m_cost`, once. A
//! verification recomputes the raw hash with the PHC string's salt and parameters and
//! compares it in constant time (`subtle`); a new hash (issue, roll) is computed the same way
//! with a fresh salt and written as a PHC string.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use std::sync::Mutex;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use zeroize::{Zeroize, Zeroizing};

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
    blocks: Arc<BlockPool>,
    /// Secrets checked by argon2 so far (for tests and the benchmark).
    verifications: std::sync::atomic::AtomicU64,
}

/// Reusable argon2 block buffers: at most one per worker is ever out (the permits), so the
/// pool holds at most `workers` of them.
pub struct BlockPool {
    free: Mutex<Vec<Vec<Block>>>,
    /// Buffers larger than this many blocks (a hash with a much larger `m_cost` than ours)
    /// are used once and freed.
    keep_up_to: usize,
}

impl BlockPool {
    fn new(params: &Params) -> Self {
        BlockPool {
            free: Mutex::new(Vec::new()),
            keep_up_to: params.block_count().max(16 * 1024),
        }
    }

    /// Runs `work` on `count` blocks of a pooled buffer, wiped afterwards.
    fn with<T>(&self, count: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
        let pooled = count <= self.keep_up_to;
        let mut buffer = if pooled {
            self.free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if buffer.len() < count {
            buffer.resize(count, Block::default());
        }
        let out = work(&mut buffer[..count]);
        // argon2's memory is derived from the secret: wipe it before it waits for reuse.
        buffer[..count].iter_mut().for_each(Zeroize::zeroize);
        if pooled {
            self.free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buffer);
        }
        out
    }

    /// Buffers waiting for reuse (for tests).
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// An argon2id PHC string of `secret` under `params` and a fresh salt, computed in `pool`'s
/// memory.
fn hash_phc(pool: &BlockPool, params: &Params, secret: &[u8]) -> Result<String, Error> {
    use argon2::password_hash::phc::{Output, ParamsString, Salt};
    use rand::TryRng;
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut salt)
        .map_err(Error::internal)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = Zeroizing::new(vec![
        0u8;
        params
            .output_len()
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN)
    ]);
    pool.with(params.block_count(), |blocks| {
        argon2.hash_password_into_with_memory(secret, &salt, &mut out, blocks)
    })
    .map_err(Error::internal)?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(Error::internal)?,
        salt: Some(Salt::new(&salt).map_err(Error::internal)?),
        hash: Some(Output::new(&out).map_err(Error::internal)?),
    };
    Ok(phc.to_string())
}

/// Salt bytes of a new hash (the PHC recommendation).
const SALT_LEN: usize = 16;

/// Whether `secret` hashes to the PHC string's hash under its own salt and parameters,
/// computed in `pool`'s memory and compared in constant time.
fn verify_phc(pool: &BlockPool, secret: &[u8], phc: &str) -> Result<bool, Error> {
    let hash = PasswordHash::new(phc).map_err(Error::internal)?;
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return Err(Error::internal("a stored PHC string has no salt or hash"));
    };
    let algorithm = Algorithm::try_from(hash.algorithm.as_str()).map_err(Error::internal)?;
    let version = hash
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(Error::internal)?
        .unwrap_or_default();
    let params = Params::try_from(&hash).map_err(Error::internal)?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let expected = expected.as_bytes();
    let mut computed = Zeroizing::new(vec![0u8; expected.len()]);
    pool.with(params.block_count(), |blocks| {
        argon2.hash_password_into_with_memory(secret, salt.as_ref(), &mut computed, blocks)
    })
    .map_err(Error::internal)?;
    Ok(bool::from(computed.as_slice().ct_eq(expected)))
}

impl Hasher {
    pub fn new(params: HashParams, workers: usize, max_waiting: usize) -> Result<Self, String> {
        let params = params.validate()?;
        Ok(Hasher {
            blocks: Arc::new(BlockPool::new(&params)),
            params,
            workers: workers.max(1),
            permits: Arc::new(Semaphore::new(workers.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
            verifications: Default::default(),
        })
    }

    /// Hashes a secret into a PHC string with a fresh random salt.
    pub async fn hash(&self, secret: &[u8], deadline: Option<Instant>) -> Result<String, Error> {
        let params = self.params.clone();
        let blocks = self.blocks.clone();
        self.run(secret, deadline, move |secret| {
            hash_phc(&blocks, &params, secret)
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
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let phc = phc.to_owned();
        let blocks = self.blocks.clone();
        self.run(secret, deadline, move |secret| {
            verify_phc(&blocks, secret, &phc)
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

    /// Secrets checked by argon2 since start (for tests and the benchmark).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
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
    async fn verification_reuses_one_buffer_per_worker_and_agrees_with_the_crate() {
        use argon2::password_hash::PasswordVerifier;
        let h = Hasher::new(HashParams::DEFAULT, 2, 8).unwrap();
        let phc = h.hash(b"secret-part", None).await.unwrap();
        assert_ne!(
            phc,
            h.hash(b"secret-part", None).await.unwrap(),
            "fresh salts"
        );
        for _ in 0..10 {
            assert!(h.verify(b"secret-part", &phc, None).await.unwrap());
            assert!(!h.verify(b"secret-parx", &phc, None).await.unwrap());
        }
        assert_eq!(h.blocks.idle(), 1, "one buffer, reused");
        // The same verdicts as the argon2 crate's own verifier.
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"secret-part", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"secret-parx", &parsed)
                .is_err()
        );
        // Malformed stored strings are errors, not verdicts.
        assert!(h.verify(b"s", "not a phc string", None).await.is_err());
        assert!(
            h.verify(b"s", "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHQ", None)
                .await
                .is_err()
        );
    }

    #[test]
    fn pooled_buffers_are_wiped_and_bounded() {
        let pool = BlockPool::new(&HashParams::DEFAULT.validate().unwrap());
        pool.with(8, |blocks| {
            for b in blocks.iter_mut() {
                *b = {
                    let mut x = Block::new();
                    x.as_mut()[0] = 7;
                    x
                }
            }
        });
        pool.with(8, |blocks| {
            assert!(blocks.iter().all(|b| b.as_ref()[0] == 0))
        });
        assert_eq!(pool.idle(), 1);
        // A much larger buffer than ours is not kept.
        pool.with(pool.keep_up_to + 1, |_| ());
        assert_eq!(pool.idle(), 1);
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
