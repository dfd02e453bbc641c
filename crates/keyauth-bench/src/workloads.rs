//! The workloads and what their calls present: which RPC each sends, with which key, built
//! before the clock starts.

use keyauth_core::key::PresentedKey;
use keyauth_core::model::Environment;

use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Floor,
    WarmVerify,
    WarmCheck,
    ColdVerify,
    GarbageMix,
    /// Verify with a bad checksum only (the CPU phase).
    BadChecksum,
    /// Envoy's ext_authz Check of warm keys (`GET /api/v1/patients`).
    ExtAuthz,
}

impl Workload {
    /// The workloads whose server CPU per call the last phase measures.
    pub const CPU: [Workload; 5] = [
        Workload::Floor,
        Workload::BadChecksum,
        Workload::WarmVerify,
        Workload::WarmCheck,
        Workload::ExtAuthz,
    ];

    /// Run order within a round.
    pub const ALL: [Workload; 6] = [
        Workload::Floor,
        Workload::WarmVerify,
        Workload::WarmCheck,
        Workload::ColdVerify,
        Workload::GarbageMix,
        Workload::ExtAuthz,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Workload::Floor => "a. floor: Health/Check",
            Workload::WarmVerify => "b. warm Verify",
            Workload::WarmCheck => "c. warm CheckPermission",
            Workload::ColdVerify => "d. cold Verify (cache off)",
            Workload::GarbageMix => "e. garbage mix",
            Workload::BadChecksum => "Verify, bad checksum",
            Workload::ExtAuthz => "f. warm ext_authz Check (Envoy)",
        }
    }
}

/// What kind of key a call presents; each kind has its own latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A valid key, or no key at all (the floor).
    Valid,
    BadChecksum,
    UnknownId,
    WrongSecret,
}

pub const CLASSES: usize = 4;

impl Class {
    pub const GARBAGE: [Class; 3] = [Class::BadChecksum, Class::UnknownId, Class::WrongSecret];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The keys the workloads present.
pub struct Inputs {
    warm_keys: Vec<String>,
    cold_keys: Vec<String>,
    /// Warm keys with one character of the secret changed: the checksum no longer matches.
    bad_checksum: Vec<String>,
    /// Warm keys' lookups with another secret and a correct checksum.
    wrong_secret: Vec<String>,
}

impl Inputs {
    pub fn new(warm_keys: Vec<String>, cold_keys: Vec<String>) -> Result<Self> {
        let mut bad_checksum = Vec::with_capacity(warm_keys.len());
        let mut wrong_secret = Vec::with_capacity(warm_keys.len());
        for full in &warm_keys {
            let key = PresentedKey::parse(full).ok_or("an issued key does not parse")?;
            // The secret's first character, just after "sk_test_" and the lookup.
            let at = full.len() - keyauth_core::key::SECRET_LEN - keyauth_core::key::CHECKSUM_LEN;
            let flipped = if full.as_bytes()[at] == b'A' {
                "B"
            } else {
                "A"
            };
            let mut bad = full.clone();
            bad.replace_range(at..=at, flipped);
            bad_checksum.push(bad);
            let other_secret = keyauth_core::key::random_base62(keyauth_core::key::SECRET_LEN)?;
            let wrong = PresentedKey::from_parts(key.environment(), key.lookup(), &other_secret)
                .ok_or("cannot build a key from an issued key's lookup")?;
            wrong_secret.push(wrong.expose().to_owned());
        }
        Ok(Inputs {
            warm_keys,
            cold_keys,
            bad_checksum,
            wrong_secret,
        })
    }

    /// The `i`-th call of load task `task` out of `tasks`. Tasks walk the keys interleaved, so
    /// that between them they present every key in turn.
    pub fn call(&self, workload: Workload, task: usize, tasks: usize, i: usize) -> (Class, Call) {
        let n = i * tasks + task;
        let warm = &self.warm_keys[n % self.warm_keys.len()];
        match workload {
            Workload::Floor => (Class::Valid, Call::Health),
            Workload::BadChecksum => (
                Class::BadChecksum,
                Call::verify(&self.bad_checksum[n % self.bad_checksum.len()], false),
            ),
            Workload::WarmVerify => (Class::Valid, Call::verify(warm, true)),
            Workload::WarmCheck => (Class::Valid, Call::CheckPermission { key: warm.clone() }),
            Workload::ExtAuthz => (Class::Valid, Call::ExtAuthz { key: warm.clone() }),
            Workload::ColdVerify => {
                let cold = &self.cold_keys[n % self.cold_keys.len()];
                (Class::Valid, Call::verify(cold, true))
            }
            // Alternate within each task, so that both halves see the same conditions.
            Workload::GarbageMix if i.is_multiple_of(2) => (Class::Valid, Call::verify(warm, true)),
            Workload::GarbageMix => {
                let j = n % self.warm_keys.len();
                let (class, key) = match (i / 2 + task) % 3 {
                    0 => (Class::BadChecksum, self.bad_checksum[j].clone()),
                    1 => (Class::WrongSecret, self.wrong_secret[j].clone()),
                    // A fresh id each call: an attacker's garbage is in no cache.
                    _ => (
                        Class::UnknownId,
                        PresentedKey::generate(Environment::Test)
                            .expect("the OS random generator works")
                            .expose()
                            .to_owned(),
                    ),
                };
                let call = Call::Verify {
                    key,
                    expect_valid: false,
                };
                (class, call)
            }
        }
    }
}

/// One RPC, built before the clock starts.
pub enum Call {
    Health,
    Verify {
        key: String,
        expect_valid: bool,
    },
    CheckPermission {
        key: String,
    },
    /// Envoy's ext_authz Check of `GET /api/v1/patients` with this key.
    ExtAuthz {
        key: String,
    },
}

impl Call {
    pub fn verify(key: &str, expect_valid: bool) -> Self {
        Call::Verify {
            key: key.to_owned(),
            expect_valid,
        }
    }
}
