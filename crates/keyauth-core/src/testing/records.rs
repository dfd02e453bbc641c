//! Test records and times: plain values, no store.

use keyauth_contract::principal::Scope;

use crate::clock::Timestamp;
use crate::model::{ApplicationId, Environment, KeyId, KeyRecord, Metadata, Permissions};

/// A bare test key record: id `id`, application `app`, created at the epoch, no expiry, never
/// revoked, used or rolled, standard permissions.
pub fn blank_record(id: &str) -> KeyRecord {
    KeyRecord {
        // Whose, and what it may do.
        id: KeyId::from_store(id.into()),
        application_id: ApplicationId::from_store("app".into()),
        environment: Environment::Test,
        restricted: false,
        permissions: Permissions::default(),
        // Its life: made at the epoch, nothing happened since.
        create_time: Timestamp::EPOCH,
        replaced_by: None,
        expire_time: None,
        last_used_time: None,
        revoke_time: None,
        revoke_reason: None,
        // What the operator sees of it.
        name: "n".into(),
        redacted: String::new(),
        metadata: Metadata::new(),
        secret_hash: String::new(),
        secret_check: None,
        encoded_answer: Default::default(),
    }
}

/// `n` seconds after the epoch.
pub fn secs(n: i64) -> Timestamp {
    Timestamp::from_micros(n * 1_000_000)
}

/// A principal's scope of these application patterns and environments; panics on a bad one.
pub fn scope(applications: &[&str], environments: &[&str]) -> Scope {
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Scope::new(owned(applications), owned(environments)).expect("a valid scope")
}
