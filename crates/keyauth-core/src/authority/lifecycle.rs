//! Changes to keys: issue, roll, revoke, update, report exposed; each with its idempotent
//! replay, and every cache of this instance invalidated before it returns.

use std::time::Duration;

use super::types::{ExposureOutcome, Idempotency, Issued, NewKey, Replay};
use super::{Authority, DEFAULT_GRACE, EXPOSURE_TEXT_MAX, MAX_EXPOSED_KEYS, MAX_GRACE};
use crate::check_value::Check;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::key::{KeyIdOf, PresentedKey};
use crate::lifetime::LifetimeBounds;
use crate::model::{KeyId, KeyRecord, KeyState, REASON_MAX, check_text};
use crate::store::{
    Exposed, Exposure, IdempotentWrite, KeyUpdate, Provenance, Rolled, Successor, Updated,
};
use keyauth_contract::principal::Scope;

impl Authority {
    /// Generates a key and the record that stores it (hash only).
    async fn mint(&self, new: NewKey, now: Timestamp) -> Result<Issued, Error> {
        let key = PresentedKey::generate(new.environment).map_err(Error::internal)?;
        let secret_hash = self.hasher.hash(key.secret(), None).await?;
        let record = KeyRecord {
            id: key.id(),
            application_id: new.application_id,
            environment: new.environment,
            name: new.name,
            secret_hash,
            secret_check: Some(self.checks.make(key.secret())),
            redacted: key.redacted(),
            restricted: !new.permissions.is_empty(),
            permissions: new.permissions,
            metadata: new.metadata,
            create_time: now,
            expire_time: new.expire_time,
            revoke_time: None,
            revoke_reason: None,
            last_used_time: None,
            replaced_by: None,
            encoded_answer: Default::default(),
        };
        Ok(Issued { record, key })
    }

    /// The idempotency record to write with a change, the secret (if any) sealed.
    fn idempotent_write<'a>(
        &self,
        idem: Option<&'a Idempotency<'a>>,
        secret: Option<&PresentedKey>,
        now: Timestamp,
    ) -> Result<Option<IdempotentWrite<'a>>, Error> {
        let Some(idem) = idem else { return Ok(None) };
        let sealed_secret = match secret {
            Some(key) => Some(self.sealer.seal(key.expose(), &idem.context())?),
            None => None,
        };
        Ok(Some(IdempotentWrite {
            operator: idem.operator,
            key: idem.key.as_str(),
            fingerprint: &idem.fingerprint,
            sealed_secret,
            create_time: now,
            expire_time: now.saturating_add(self.idempotency_ttl),
            respond: idem.respond,
        }))
    }

    /// The stored response of an earlier call with this idempotency key, if any. A different
    /// request under the same key is refused.
    pub async fn replay(&self, idem: &Idempotency<'_>) -> Result<Option<Replay>, Error> {
        let Some(record) = self
            .store
            .idempotency_record(idem.operator, idem.key.as_str(), self.idempotency_now())
            .await?
        else {
            return Ok(None);
        };
        if record.fingerprint != idem.fingerprint {
            return Err(Error::IdempotencyKeyReused);
        }
        let secret = match &record.sealed_secret {
            Some(sealed) => Some(zeroize::Zeroizing::new(
                self.sealer.open(sealed, &idem.context())?,
            )),
            None => None,
        };
        tracing::info!(
            idempotency_key = crate::error::echo(idem.key.as_str()),
            "replaying a stored response"
        );
        Ok(Some(Replay {
            response: record.response,
            secret,
        }))
    }

    pub async fn issue(
        &self,
        mut new: NewKey,
        who: &Provenance,
        idem: Option<&Idempotency<'_>>,
    ) -> Result<Issued, Error> {
        let now = self.now();
        if new.expire_time.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        new.expire_time =
            self.lifetimes
                .expiry(new.environment, now, new.expire_time, "expire_time")?;
        let issued = self.mint(new, now).await?;
        let write = self.idempotent_write(idem, Some(&issued.key), now)?;
        self.store
            .insert_key(&issued.record, who, write.as_ref())
            .await?;
        // After the commit, not before: a filter rebuild that listed the store before the
        // commit is under way now, and keeps what is added meanwhile (added before it
        // started, the key would be in neither its listing nor its additions). The caller
        // learns the key only from this call's answer, after this line.
        self.key_filter.insert(&issued.record.id);
        self.cache.forget(&issued.record.id);
        self.changes.note_commit();
        tracing::info!(key_id = %issued.record.id, application_id = issued.record.application_id.as_str(), "key issued");
        Ok(issued)
    }

    /// Rolls `id`: returns the new key and the old key as it now stands. The new key expires
    /// at `expire_time` if given (in the future), else when the old key would have: a roll
    /// never extends a key's lifetime by itself.
    pub async fn roll(
        &self,
        id: &KeyId,
        grace: Option<Duration>,
        expire_time: Option<Timestamp>,
        who: &Provenance,
        idem: Option<&Idempotency<'_>>,
    ) -> Result<(Issued, KeyRecord), Error> {
        let grace = grace.unwrap_or(DEFAULT_GRACE);
        if grace > MAX_GRACE {
            return Err(Error::invalid(
                "grace_period",
                "must be at most 7 days (604800s)",
            ));
        }
        let now = self.now();
        if expire_time.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        // Read here only to refuse early, before argon2's time is spent: what the new key
        // inherits is read again by the store inside the transaction that claims `old`, so a
        // change committed meanwhile (UpdateKey) is carried over, never undone.
        let old = self
            .store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::KeyNotFound(id.to_string()))?;
        refuse_roll(&old, now)?;
        if expire_time.is_some() {
            self.lifetimes
                .expiry(old.environment, now, expire_time, "expire_time")?;
        }
        let key = PresentedKey::generate(old.environment).map_err(Error::internal)?;
        let successor = Successor {
            id: key.id(),
            secret_hash: self.hasher.hash(key.secret(), None).await?,
            secret_check: Some(self.checks.make(key.secret())),
            redacted: key.redacted(),
            create_time: now,
            expire_time,
            latest_expire: self.lifetimes.latest(old.environment, now),
        };
        let write = self.idempotent_write(idem, Some(&key), now)?;
        let outcome = self
            .store
            .roll_key(
                id,
                &successor,
                now.saturating_add(grace),
                now,
                who,
                write.as_ref(),
            )
            .await;
        self.cache.forget(id);
        match outcome? {
            Rolled::Done { new, previous } => {
                // After the commit (see `issue`).
                self.key_filter.insert(&new.id);
                self.changes.note_commit();
                tracing::info!(key_id = %id, new_key_id = %new.id, grace_secs = grace.as_secs(), "key rolled");
                Ok((Issued { record: new, key }, previous))
            }
            Rolled::NotFound => Err(Error::KeyNotFound(id.to_string())),
            Rolled::Refused(current) => {
                refuse_roll(&current, now)?;
                Err(Error::internal("roll refused for an active, unrolled key"))
            }
        }
    }

    pub async fn revoke(
        &self,
        id: &KeyId,
        reason: Option<&str>,
        who: &Provenance,
        idem: Option<&Idempotency<'_>>,
    ) -> Result<KeyRecord, Error> {
        let now = self.now();
        let write = self.idempotent_write(idem, None, now)?;
        let outcome = self
            .store
            .revoke_key(id, now, reason, who, write.as_ref())
            .await;
        self.cache.forget(id);
        let record = outcome?.ok_or_else(|| Error::KeyNotFound(id.to_string()))?;
        self.changes.note_commit();
        tracing::info!(key_id = %id, "key revoked");
        // As stored: an idempotent retry replays exactly this.
        Ok(record)
    }

    /// Changes a key's name, metadata, permissions or expiry (UpdateKey), with an `updated`
    /// event; every cache of this instance forgets the key before this returns (other
    /// instances hear of it through the event). A revoked key is refused, and so is a new
    /// expiry for a rolled key (its expiry is the end of its grace period).
    pub async fn update(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
        who: &Provenance,
        idem: Option<&Idempotency<'_>>,
    ) -> Result<KeyRecord, Error> {
        let now = self.now();
        if update.paths().is_empty() {
            return Err(Error::invalid("update_mask", "names no field to update"));
        }
        if let Some(Some(t)) = update.expire_time
            && t <= now
        {
            return Err(Error::invalid("key.expire_time", "must be in the future"));
        }
        let bounded;
        let update = match update.expire_time {
            Some(requested) if self.lifetimes != LifetimeBounds::NONE => {
                // The bound is the environment's: read it (it never changes).
                let environment = self
                    .store
                    .get_key(id)
                    .await?
                    .ok_or_else(|| Error::KeyNotFound(id.to_string()))?
                    .environment;
                bounded = KeyUpdate {
                    expire_time: Some(self.lifetimes.expiry(
                        environment,
                        now,
                        requested,
                        "key.expire_time",
                    )?),
                    ..update.clone()
                };
                &bounded
            }
            _ => update,
        };
        let write = self.idempotent_write(idem, None, now)?;
        let outcome = self
            .store
            .update_key(id, update, now, who, write.as_ref())
            .await;
        self.cache.forget(id);
        match outcome? {
            Updated::Done(record) => {
                self.changes.note_commit();
                tracing::info!(key_id = %id, paths = ?update.paths(), "key updated");
                Ok(record)
            }
            Updated::NotFound => Err(Error::KeyNotFound(id.to_string())),
            Updated::Refused(current) if current.revoke_time.is_some() => {
                Err(Error::FailedPrecondition {
                    reason: "KEY_REVOKED",
                    message: format!("key {id} cannot be updated: it is revoked"),
                })
            }
            Updated::Refused(current) => Err(Error::FailedPrecondition {
                reason: "KEY_ALREADY_ROLLED",
                message: format!(
                    "the expiry of key {id} cannot be changed: it was rolled to {} and expires \
                     at the end of its grace period",
                    current
                        .replaced_by
                        .as_ref()
                        .map_or_else(String::new, ToString::to_string)
                ),
            }),
        }
    }

    /// Handles a report of leaked keys (a secret scanner's, or an operator's): every key of
    /// this authority among `presented` that is not revoked yet is revoked, each in one
    /// transaction with an `exposed` event saying where it was found (`exposure`), and dropped
    /// from the cache. Reporting a key again changes nothing. A key counts as ours only once
    /// its secret is proven (argon2id), so a made-up string with a known id and a valid
    /// checksum cannot revoke anyone's key. One outcome per presented string, in order.
    pub async fn report_exposed(
        &self,
        presented: &[impl AsRef<str>],
        exposure: Exposure<'_>,
        who: &Provenance,
    ) -> Result<Vec<ExposureOutcome>, Error> {
        self.report_exposed_in(presented, exposure, who, &Scope::everything())
            .await
    }

    /// [`Authority::report_exposed`] by a principal limited to `scope`: a key outside it is
    /// left alone and answered as not ours ([`ExposureOutcome::Unknown`]), so a scoped
    /// principal can neither revoke nor learn of another application's key.
    pub async fn report_exposed_in(
        &self,
        presented: &[impl AsRef<str>],
        exposure: Exposure<'_>,
        who: &Provenance,
        scope: &Scope,
    ) -> Result<Vec<ExposureOutcome>, Error> {
        if presented.is_empty() {
            return Err(Error::invalid("keys", "at least one key is required"));
        }
        if presented.len() > MAX_EXPOSED_KEYS {
            return Err(Error::invalid(
                "keys",
                format!("at most {MAX_EXPOSED_KEYS} keys per report"),
            ));
        }
        check_text(exposure.source, "source", EXPOSURE_TEXT_MAX)?;
        if exposure.source.trim().is_empty() {
            return Err(Error::invalid("source", "is required"));
        }
        check_text(exposure.url, "url", EXPOSURE_TEXT_MAX)?;
        let reason = cut(
            &format!("exposed: reported as leaked by {}", exposure.source),
            REASON_MAX,
        );
        let mut outcomes = Vec::with_capacity(presented.len());
        for text in presented {
            let Some(key) = PresentedKey::parse(text.as_ref()) else {
                outcomes.push(ExposureOutcome::NotAKey);
                continue;
            };
            outcomes.push(self.expose(&key, &reason, exposure, who, scope).await?);
        }
        Ok(outcomes)
    }

    /// Revokes one reported key if it is ours and not revoked yet. Not `prove`: its negative
    /// cache and failure window would let a burst of wrong secrets for an id keep the real,
    /// leaked key from being revoked.
    async fn expose(
        &self,
        key: &PresentedKey,
        reason: &str,
        exposure: Exposure<'_>,
        who: &Provenance,
        scope: &Scope,
    ) -> Result<ExposureOutcome, Error> {
        let id = key.id();
        let unknown = || ExposureOutcome::Unknown {
            id: key.id(),
            redacted: key.redacted(),
        };
        let Some(record) = self.store.get_key(&id).await? else {
            return Ok(unknown());
        };
        let checked = self
            .checks
            .judge(record.secret_check.as_deref(), key.secret());
        if record.environment != key.environment()
            || !scope.has(record.application_id.as_str(), record.environment.as_str())
            || checked == Check::Mismatch
            || !self
                .hasher
                .verify(key.secret(), &record.secret_hash, None)
                .await?
        {
            tracing::info!(key_id = %id, source = exposure.source, "reported key is not one this caller may revoke (another secret, environment or scope): left alone");
            return Ok(unknown());
        }
        let now = self.now();
        let outcome = self.store.expose_key(&id, now, reason, exposure, who).await;
        self.cache.forget(&id);
        Ok(match outcome? {
            Exposed::Revoked(record) => {
                tracing::warn!(key_id = %id, application_id = record.application_id.as_str(), source = exposure.source, url = exposure.url, "key reported as leaked: revoked");
                ExposureOutcome::Revoked(record)
            }
            Exposed::AlreadyRevoked(record) => {
                tracing::info!(key_id = %id, source = exposure.source, "key reported as leaked was already revoked");
                ExposureOutcome::AlreadyRevoked(record)
            }
            Exposed::NotFound => unknown(),
        })
    }
}

/// `text` cut to at most `max` characters.
fn cut(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Why `key` cannot be rolled at `now`, if it cannot.
fn refuse_roll(key: &KeyRecord, now: Timestamp) -> Result<(), Error> {
    let (reason, why) = match (key.state(now), &key.replaced_by) {
        (KeyState::Revoked, _) => ("KEY_REVOKED", "it is revoked".to_owned()),
        (_, Some(by)) => (
            "KEY_ALREADY_ROLLED",
            format!("it was already rolled to {by}"),
        ),
        (KeyState::Expired, None) => ("KEY_EXPIRED", "it has expired".to_owned()),
        (KeyState::Active, None) => return Ok(()),
    };
    Err(Error::FailedPrecondition {
        reason,
        message: format!("key {} cannot be rolled: {why}", key.id),
    })
}

#[cfg(test)]
mod tests;
