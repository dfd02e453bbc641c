//! Changes to one key racing each other (the review's finding F1): whatever order they commit
//! in, none is lost. A roll's successor inherits the old key as it stood when the roll
//! committed, so an UpdateKey committed first is carried over, never undone.

use tonic::Code;

use crate::both_stores;
use crate::helpers::*;
use keyauth_proto as pb;

both_stores!(
    a_roll_racing_an_update_keeps_the_update,
    a_roll_racing_a_revoke_or_an_exposure_leaves_the_old_key_revoked,
    updates_of_different_fields_racing_each_other_both_land,
);

/// Rounds per test: in the review, 14 of 40 rounds lost the update.
const ROUNDS: usize = 16;

fn narrow_to_read(id: &str) -> pb::UpdateKeyRequest {
    pb::UpdateKeyRequest {
        key: Some(pb::ApiKey {
            id: id.into(),
            name: "narrowed".into(),
            permissions: vec![permission("patients", &["read"])],
            metadata: [("incident".to_owned(), "4711".to_owned())].into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["permissions".into(), "name".into(), "metadata".into()],
        }),
    }
}

fn roll_request(id: &str) -> pb::RollKeyRequest {
    pb::RollKeyRequest {
        key_id: id.into(),
        grace_period: None,
        expire_time: None,
    }
}

async fn issue_read_write(app: &TestApp, application: &str) -> pb::ApiKey {
    let (key, _) = app
        .issue(pb::IssueKeyRequest {
            permissions: vec![permission("patients", &["read", "write"])],
            ..standard(application, pb::Environment::Test)
        })
        .await
        .unwrap();
    key
}

/// What a successor inherits, as a comparable value.
fn inherited(key: &pb::ApiKey) -> (String, Vec<pb::Permission>, Vec<(String, String)>) {
    let mut metadata: Vec<_> = key.metadata.clone().into_iter().collect();
    metadata.sort();
    (key.name.clone(), key.permissions.clone(), metadata)
}

async fn a_roll_racing_an_update_keeps_the_update(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut update_first = 0;
    for _ in 0..ROUNDS {
        let key = issue_read_write(&app, "racing").await;
        let (mut updater, mut roller) = (app.client.clone(), app.client.clone());
        let (update, roll) = tokio::join!(
            updater.update_key(op(narrow_to_read(&key.id))),
            roller.roll_key(op(roll_request(&key.id))),
        );
        let update = update.expect("an update of a rolled key's permissions is allowed");
        let roll = roll
            .expect("the roll wins: nothing revoked or rolled the key")
            .into_inner();
        register_secret(&roll.secret);
        let (new, previous) = (roll.key.unwrap(), roll.previous_key.unwrap());
        assert_eq!(
            inherited(&new),
            inherited(&previous),
            "the successor carries the old key as it stood when the roll committed"
        );
        // Both orders end with the update on the old key; the successor has it only if the
        // update committed first, and then the roll's own answer shows it.
        let old_now = app.get(&key.id).await.unwrap();
        assert_eq!(old_now.permissions, [permission("patients", &["read"])]);
        assert_eq!(old_now.name, "narrowed");
        assert_eq!(old_now.replaced_by_key_id, new.id);
        assert_eq!(inherited(&app.get(&new.id).await.unwrap()), inherited(&new));
        if previous.name == "narrowed" {
            update_first += 1;
        } else {
            assert!(
                update.get_ref().key.as_ref().unwrap().replaced_by_key_id == new.id,
                "an update that committed after the roll saw the key rolled"
            );
        }
    }
    eprintln!("{backend:?}: the update committed first in {update_first} of {ROUNDS} rounds");
    app.stop().await;
}

async fn a_roll_racing_a_revoke_or_an_exposure_leaves_the_old_key_revoked(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    for round in 0..ROUNDS {
        let (key, secret) = app
            .issue(standard("racing", pb::Environment::Test))
            .await
            .unwrap();
        let (mut revoker, mut roller) = (app.client.clone(), app.client.clone());
        let revoke = async {
            if round % 2 == 0 {
                revoker
                    .revoke_key(op(pb::RevokeKeyRequest {
                        key_id: key.id.clone(),
                        reason: "compromised".into(),
                    }))
                    .await
                    .map(|_| ())
            } else {
                revoker
                    .report_exposed_keys(op(pb::ReportExposedKeysRequest {
                        keys: vec![secret.clone()],
                        source: "incident-4711".into(),
                        url: String::new(),
                    }))
                    .await
                    .map(|_| ())
            }
        };
        let (revoked, roll) = tokio::join!(revoke, roller.roll_key(op(roll_request(&key.id))));
        revoked.expect("a revocation of a rolled key is allowed");
        let old_now = app.get(&key.id).await.unwrap();
        assert_eq!(old_now.state, pb::KeyState::Revoked as i32, "never undone");
        match roll {
            Ok(roll) => {
                let roll = roll.into_inner();
                register_secret(&roll.secret);
                let new = roll.key.unwrap();
                assert_eq!(old_now.replaced_by_key_id, new.id);
                assert_eq!(
                    app.get(&new.id).await.unwrap().state,
                    pb::KeyState::Active as i32,
                    "the revocation came after the roll: it is the old key's"
                );
            }
            Err(refused) => {
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                assert_eq!(
                    old_now.replaced_by_key_id, "",
                    "a refused roll writes nothing"
                );
            }
        }
    }
    app.stop().await;
}

async fn updates_of_different_fields_racing_each_other_both_land(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    for _ in 0..ROUNDS {
        let key = issue_read_write(&app, "racing").await;
        let only = |path: &str| {
            let mut request = narrow_to_read(&key.id);
            request.update_mask = Some(prost_types::FieldMask {
                paths: vec![path.into()],
            });
            op(request)
        };
        let (mut a, mut b, mut c) = (app.client.clone(), app.client.clone(), app.client.clone());
        let (x, y, z) = tokio::join!(
            a.update_key(only("permissions")),
            b.update_key(only("name")),
            c.update_key(only("metadata")),
        );
        for result in [x, y, z] {
            result.unwrap();
        }
        let now = app.get(&key.id).await.unwrap();
        assert_eq!(
            inherited(&now),
            inherited(&narrow_to_read(&key.id).key.unwrap())
        );
    }
    app.stop().await;
}
