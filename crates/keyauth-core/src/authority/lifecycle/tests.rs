//! A key's life through the authority, on both stores: states and refusals, idempotent
//! replay, and concurrent changes to one key (no write is lost).

use std::sync::Arc;
use std::time::Duration;

use crate::authority::{ExposureOutcome, Idempotency, Replay};
use crate::error::Error;
use crate::model::{KeyId, KeyState, Metadata};
use crate::on_both_stores;
use crate::sealing::IdempotencyKey;
use crate::store::{Changed, EventFilter, EventKind, EventQuery, Exposure, KeyUpdate};
use crate::testing::{self, StoreKind, TestAuthority, new_key, refusal, who};
use keyauth_contract::principal::Scope;

const HOUR: Duration = Duration::from_secs(3600);

on_both_stores!(
    issue_roll_grace_end_expired_revoked,
    a_roll_never_extends_a_lifetime,
    update_is_refused_on_revoked_keys_and_for_the_expiry_of_rolled_ones,
    an_idempotent_call_replays_and_other_requests_under_its_key_are_refused,
    roll_and_update_lose_no_write,
    roll_and_revoke_lose_no_write,
    roll_and_expose_lose_no_write,
    update_and_update_lose_no_write,
);

async fn issue_roll_grace_end_expired_revoked(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let issued = a.issue(new_key("app_life"), &who(), None).await.unwrap();
    let old_id = issued.record.id.clone();
    assert_eq!(issued.record.state(a.now()), KeyState::Active);

    let (new, old) = a
        .roll(&old_id, Some(HOUR), None, &who(), None)
        .await
        .unwrap();
    let new_id = new.record.id.clone();
    assert_eq!(old.replaced_by.as_ref(), Some(&new_id));
    assert_eq!(old.expire_time, Some(a.now().saturating_add(HOUR)));
    assert_eq!(old.state(a.now()), KeyState::Active, "in its grace period");
    assert_eq!(new.record.expire_time, None, "the old key never expired");
    assert_eq!(new.record.name, issued.record.name);

    a.clock.advance(HOUR);
    let old = a.get(&old_id).await.unwrap();
    assert_eq!(
        old.state(a.now()),
        KeyState::Expired,
        "the grace period ended"
    );
    assert_eq!(
        a.get(&new_id).await.unwrap().state(a.now()),
        KeyState::Active
    );
    let again = a.roll(&old_id, None, None, &who(), None).await;
    assert_eq!(refusal(again), "KEY_ALREADY_ROLLED");

    let revoked = a.revoke(&new_id, Some("done"), &who(), None).await.unwrap();
    assert_eq!(revoked.state(a.now()), KeyState::Revoked);
    assert_eq!(revoked.revoke_reason.as_deref(), Some("done"));
    let roll_revoked = a.roll(&new_id, None, None, &who(), None).await;
    assert_eq!(refusal(roll_revoked), "KEY_REVOKED");

    let missing = KeyId::parse("key_AAAAAAAAAAAA", "id").unwrap();
    let roll_missing = a.roll(&missing, None, None, &who(), None).await;
    assert!(matches!(roll_missing, Err(Error::KeyNotFound(_))));
    let too_long = a
        .roll(&new_id, Some(8 * 24 * HOUR), None, &who(), None)
        .await;
    assert!(matches!(too_long, Err(Error::InvalidArgument(_))));

    let kinds: Vec<EventKind> = events_of(&a, &old_id).await;
    assert_eq!(
        kinds,
        [EventKind::Rolled, EventKind::Issued],
        "newest first"
    );
}

async fn a_roll_never_extends_a_lifetime(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let soon = a.now().saturating_add(Duration::from_secs(600));
    let mut request = new_key("app_life");
    request.expire_time = Some(soon);
    let issued = a.issue(request, &who(), None).await.unwrap();
    let (new, old) = a
        .roll(&issued.record.id, Some(HOUR), None, &who(), None)
        .await
        .unwrap();
    assert_eq!(
        old.expire_time,
        Some(soon),
        "the grace ends no later than the key"
    );
    assert_eq!(
        new.record.expire_time,
        Some(soon),
        "the new key expires when the old would have"
    );
    a.clock.advance(Duration::from_secs(600));
    let expired = a.roll(&new.record.id, None, None, &who(), None).await;
    assert_eq!(refusal(expired), "KEY_EXPIRED");
}

async fn update_is_refused_on_revoked_keys_and_for_the_expiry_of_rolled_ones(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let rename = KeyUpdate {
        name: Some("renamed".into()),
        ..KeyUpdate::default()
    };
    let later = KeyUpdate {
        expire_time: Some(Some(a.now().saturating_add(HOUR))),
        ..KeyUpdate::default()
    };
    let revoked = a.issue(new_key("app_upd"), &who(), None).await.unwrap();
    a.revoke(&revoked.record.id, None, &who(), None)
        .await
        .unwrap();
    let refused = a.update(&revoked.record.id, &rename, &who(), None).await;
    assert_eq!(refusal(refused), "KEY_REVOKED");

    let rolled = a.issue(new_key("app_upd"), &who(), None).await.unwrap();
    let id = rolled.record.id.clone();
    a.roll(&id, None, None, &who(), None).await.unwrap();
    let refused = a.update(&id, &later, &who(), None).await;
    assert_eq!(refusal(refused), "KEY_ALREADY_ROLLED");
    let renamed = a.update(&id, &rename, &who(), None).await.unwrap();
    assert_eq!(
        renamed.name, "renamed",
        "a rolled key still takes other changes"
    );

    let nothing = a.update(&id, &KeyUpdate::default(), &who(), None).await;
    assert!(matches!(nothing, Err(Error::InvalidArgument(_))));
    let past = KeyUpdate {
        expire_time: Some(Some(a.now())),
        ..KeyUpdate::default()
    };
    let past = a.update(&id, &past, &who(), None).await;
    assert!(matches!(past, Err(Error::InvalidArgument(_))));
    let missing = KeyId::parse("key_AAAAAAAAAAAA", "id").unwrap();
    let missing = a.update(&missing, &rename, &who(), None).await;
    assert!(matches!(missing, Err(Error::KeyNotFound(_))));
}

/// Encodes what a change produced as the tests' "response": the kind and the key id.
fn respond(changed: &Changed<'_>) -> Vec<u8> {
    let (kind, id) = match changed {
        Changed::Issued(r) => ("issued", &r.id),
        Changed::Rolled { new, .. } => ("rolled", &new.id),
        Changed::Revoked(r) => ("revoked", &r.id),
        Changed::Updated(r) => ("updated", &r.id),
    };
    answer(kind, id)
}

fn answer(kind: &str, id: &KeyId) -> Vec<u8> {
    format!("{kind} {id}").into_bytes()
}

async fn replayed(a: &TestAuthority, idem: &Idempotency<'_>) -> Replay {
    a.replay(idem).await.unwrap().expect("a stored response")
}

fn idempotency<'a>(operator: &'a str, key: &'a IdempotencyKey, request: &str) -> Idempotency<'a> {
    Idempotency {
        operator,
        key,
        fingerprint: request.to_owned(),
        respond: &respond,
    }
}

async fn an_idempotent_call_replays_and_other_requests_under_its_key_are_refused(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let key = IdempotencyKey::parse(b"retry-1").unwrap();
    let issue = idempotency("op", &key, "issue app_idem");
    assert!(
        a.replay(&issue).await.unwrap().is_none(),
        "nothing stored yet"
    );
    let issued = a
        .issue(new_key("app_idem"), &who(), Some(&issue))
        .await
        .unwrap();

    let replay = replayed(&a, &issue).await;
    assert_eq!(replay.response, answer("issued", &issued.record.id));
    assert_eq!(
        replay.secret.as_deref().map(String::as_str),
        Some(issued.key.expose())
    );

    let other = idempotency("op", &key, "issue app_other");
    assert!(matches!(
        a.replay(&other).await,
        Err(Error::IdempotencyKeyReused)
    ));
    let keys_before = a.store.count_keys().await.unwrap();
    let twice = a.issue(new_key("app_idem"), &who(), Some(&issue)).await;
    assert!(matches!(twice, Err(Error::IdempotencyRace)));
    assert_eq!(
        a.store.count_keys().await.unwrap(),
        keys_before,
        "rolled back"
    );

    let theirs = idempotency("op2", &key, "issue app_other");
    assert!(
        a.replay(&theirs).await.unwrap().is_none(),
        "keys are per operator"
    );

    let revoke_key = IdempotencyKey::parse(b"retry-2").unwrap();
    let revoke = idempotency("op", &revoke_key, "revoke");
    a.revoke(&issued.record.id, None, &who(), Some(&revoke))
        .await
        .unwrap();
    let replay = replayed(&a, &revoke).await;
    assert_eq!(replay.response, answer("revoked", &issued.record.id));
    assert!(replay.secret.is_none(), "a revoke has no secret");

    a.clock.advance(crate::authority::DEFAULT_IDEMPOTENCY_TTL);
    assert!(a.replay(&issue).await.unwrap().is_none(), "expired");
    assert!(
        a.replay(&other).await.unwrap().is_none(),
        "the key is free again"
    );
}

/// The kinds of a key's events, newest first.
async fn events_of(a: &TestAuthority, id: &KeyId) -> Vec<EventKind> {
    let query = EventQuery::of(EventFilter::Key(id.clone()));
    let (events, _) = a
        .list_events(&query, 0, "", &Scope::everything())
        .await
        .unwrap();
    events.iter().map(|e| e.kind).collect()
}

/// Runs `first` and `second` at once, `ROUNDS` times, each round on a fresh key of its own;
/// `check` sees the key and what both returned.
async fn race<A, B, FA, FB>(
    a: &TestAuthority,
    first: impl Fn(Arc<crate::Authority>, KeyId, String) -> FA,
    second: impl Fn(Arc<crate::Authority>, KeyId, String) -> FB,
    mut check: impl AsyncFnMut(&KeyId, A, B),
) where
    FA: Future<Output = A> + Send + 'static,
    FB: Future<Output = B> + Send + 'static,
    A: Send + 'static,
    B: Send + 'static,
{
    const ROUNDS: usize = 8;
    for _ in 0..ROUNDS {
        let mut request = new_key("app_race");
        request.name = "before".into();
        let issued = a.issue(request, &who(), None).await.unwrap();
        let (id, full) = (issued.record.id.clone(), issued.key.expose().to_owned());
        let one = tokio::spawn(first(a.authority.clone(), id.clone(), full.clone()));
        let two = tokio::spawn(second(a.authority.clone(), id.clone(), full));
        let (one, two) = (one.await.unwrap(), two.await.unwrap());
        check(&id, one, two).await;
    }
}

async fn roll(a: Arc<crate::Authority>, id: KeyId, _: String) -> Result<KeyId, Error> {
    let (new, _) = a.roll(&id, Some(HOUR), None, &who(), None).await?;
    Ok(new.record.id)
}

fn renaming(name: &str) -> KeyUpdate {
    KeyUpdate {
        name: Some(name.into()),
        ..KeyUpdate::default()
    }
}

/// A roll's successor carries an update committed before the roll; one committed after it
/// changes the old key only. Either way the old key has it.
async fn roll_and_update_lose_no_write(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let update = async |a: Arc<crate::Authority>, id: KeyId, _: String| {
        a.update(&id, &renaming("after"), &who(), None).await
    };
    race(&a, roll, update, async |id: &KeyId, rolled, updated| {
        let new_id = rolled.expect("the roll");
        updated.expect("the update");
        assert_eq!(a.get(id).await.unwrap().name, "after");
        let order = events_of(&a, id).await;
        let successor = a.get(&new_id).await.unwrap();
        if order.first() == Some(&EventKind::Rolled) {
            assert_eq!(
                successor.name, "after",
                "updated before the roll: carried over"
            );
        } else {
            assert_eq!(
                successor.name, "before",
                "updated after the roll: the old key only"
            );
        }
    })
    .await;
}

/// Whichever commits first, the old key ends revoked; a roll that won leaves its successor.
async fn roll_and_revoke_lose_no_write(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let revoke = async |a: Arc<crate::Authority>, id: KeyId, _: String| {
        a.revoke(&id, Some("race"), &who(), None).await
    };
    race(&a, roll, revoke, async |id: &KeyId, rolled, revoked| {
        revoked.expect("the revoke");
        let old = a.get(id).await.unwrap();
        assert_eq!(old.state(a.now()), KeyState::Revoked);
        check_roll_outcome(&a, &old, rolled).await;
    })
    .await;
}

/// Like a revoke: whichever commits first, the reported key ends revoked.
async fn roll_and_expose_lose_no_write(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let expose = async |a: Arc<crate::Authority>, _: KeyId, full: String| {
        let found = Exposure {
            source: "test",
            url: "",
        };
        a.report_exposed(&[full], found, &who()).await
    };
    race(&a, roll, expose, async |id: &KeyId, rolled, exposed| {
        let outcomes = exposed.expect("the report");
        assert!(
            matches!(outcomes[..], [ExposureOutcome::Revoked(_)]),
            "{outcomes:?}"
        );
        let old = a.get(id).await.unwrap();
        assert_eq!(old.state(a.now()), KeyState::Revoked);
        check_roll_outcome(&a, &old, rolled).await;
    })
    .await;
}

/// A roll that won names its active successor; one that lost was refused and left none.
async fn check_roll_outcome(
    a: &TestAuthority,
    old: &crate::model::KeyRecord,
    rolled: Result<KeyId, Error>,
) {
    match rolled {
        Ok(new_id) => {
            assert_eq!(old.replaced_by.as_ref(), Some(&new_id));
            let successor = a.get(&new_id).await.unwrap();
            assert_eq!(successor.state(a.now()), KeyState::Active);
        }
        Err(e) => {
            assert_eq!(refusal::<()>(Err(e)), "KEY_REVOKED");
            assert_eq!(old.replaced_by, None);
        }
    }
}

/// Two updates of different fields at once: both land.
async fn update_and_update_lose_no_write(kind: StoreKind) {
    let Some(a) = testing::authority(kind).await else {
        return;
    };
    let metadata = Metadata::from([("team".to_owned(), "blue".to_owned())]);
    let rename = async |a: Arc<crate::Authority>, id: KeyId, _: String| {
        a.update(&id, &renaming("after"), &who(), None).await
    };
    let tag = async move |a: Arc<crate::Authority>, id: KeyId, _: String| {
        let update = KeyUpdate {
            metadata: Some(Metadata::from([("team".to_owned(), "blue".to_owned())])),
            ..KeyUpdate::default()
        };
        a.update(&id, &update, &who(), None).await
    };
    race(&a, rename, tag, async |id: &KeyId, renamed, tagged| {
        renamed.expect("the rename");
        tagged.expect("the tag");
        let key = a.get(id).await.unwrap();
        assert_eq!((key.name.as_str(), &key.metadata), ("after", &metadata));
        let order = events_of(&a, id).await;
        assert_eq!(order[..2], [EventKind::Updated, EventKind::Updated]);
    })
    .await;
}
