//! The shared SQL on both stores, query family by family: what each statement reads, writes
//! and refuses. `changes`: the key changes and the records written with them, settings;
//! `reads`: listings and the audit trail.

mod changes;
mod reads;

use std::sync::Arc;

use crate::model::{ApplicationId, Environment, KeyId, KeyRecord};
use crate::store::{Store, Successor};
use crate::testing::{StoreKind, TestDb, blank_record, secs, who};

/// A fresh store of `kind`; `None` where PostgreSQL is skipped.
pub(super) async fn store(kind: StoreKind) -> Option<(TestDb, Arc<dyn Store>)> {
    let db = TestDb::create(kind).await?;
    let store = db.store().await;
    Some((db, store))
}

/// Key number `n` of application `app`, made at second `made`.
pub(super) fn key(n: u32, app: &str, made: i64) -> KeyRecord {
    KeyRecord {
        application_id: ApplicationId::from_store(app.into()),
        create_time: secs(made),
        ..blank_record(&format!("key_{n:012}"))
    }
}

/// Keys 1 to 5 of `apps`, key `n` made at second `n`: 1 live, 2 expiring at 10, 3 revoked at
/// 3, 4 and 5 active.
pub(super) fn one_of_each(apps: [&str; 5]) -> [KeyRecord; 5] {
    let [one, two, three, four, five] = apps;
    [
        KeyRecord {
            environment: Environment::Live,
            ..key(1, one, 1)
        },
        KeyRecord {
            expire_time: Some(secs(10)),
            ..key(2, two, 2)
        },
        KeyRecord {
            revoke_time: Some(secs(3)),
            ..key(3, three, 3)
        },
        key(4, four, 4),
        key(5, five, 5),
    ]
}

pub(super) async fn insert(store: &dyn Store, keys: &[KeyRecord]) {
    for k in keys {
        store.insert_key(k, &who(), None).await.unwrap();
    }
}

pub(super) fn successor(n: u32, at: i64) -> Successor {
    Successor {
        id: KeyId::from_store(format!("key_{n:012}")),
        secret_hash: "hash".into(),
        secret_check: None,
        redacted: "redacted".into(),
        create_time: secs(at),
        expire_time: None,
        latest_expire: None,
    }
}
