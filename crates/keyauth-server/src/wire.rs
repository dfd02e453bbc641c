//! The one place that converts between wire types (`pb`) and the domain. Structural checks of
//! requests happen here (required fields, enum values, time ranges), each naming its field.

use std::time::Duration;

use keyauth_contract::principal::Principal;
use keyauth_core::Error;
use keyauth_core::authority::{ExposureOutcome, NewKey};
use keyauth_core::catalog::{Catalog, CatalogCheck, RequestedPermission};
use keyauth_core::clock::Timestamp;
use keyauth_core::model::{
    ApplicationId, Denial, Environment, KeyRecord, KeyState, Verdict, check_metadata, parse_name,
};
use keyauth_core::model::{KeyId, KeyStates};
use keyauth_core::store::{
    ApplicationSummary, AuditEvent, EventKind, Granularity, KeyCounts, KeyUpdate,
};
use keyauth_core::usage_counts::Counts;
use keyauth_proto as pb;

pub fn environment_in(value: i32, field: &str) -> Result<Option<Environment>, Error> {
    match pb::Environment::try_from(value) {
        Ok(pb::Environment::Unspecified) => Ok(None),
        Ok(pb::Environment::Test) => Ok(Some(Environment::Test)),
        Ok(pb::Environment::Live) => Ok(Some(Environment::Live)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{value} is not an Environment (use ENVIRONMENT_TEST or ENVIRONMENT_LIVE)"),
        )),
    }
}

/// Entries a repeated enum field (ListKeys' `states`, ListKeyEvents' `types`) or UpdateKey's
/// `update_mask.paths` may hold at most; within it, duplicates fold.
pub const MAX_REPEATED_ENUMS: usize = 16;

/// Refuses a repeated field longer than `max`, before any entry is looked at.
fn at_most<T>(values: &[T], max: usize, field: &str) -> Result<(), Error> {
    if values.len() > max {
        return Err(Error::invalid(
            field,
            format!("lists {} entries; at most {max}", values.len()),
        ));
    }
    Ok(())
}

/// ListKeys' `states`: each a `KeyState` other than UNSPECIFIED; none for every state.
pub fn states_in(values: &[i32], field: &str) -> Result<KeyStates, Error> {
    at_most(values, MAX_REPEATED_ENUMS, field)?;
    let states = values
        .iter()
        .map(|&value| match pb::KeyState::try_from(value) {
            Ok(pb::KeyState::Active) => Ok(KeyState::Active),
            Ok(pb::KeyState::Expired) => Ok(KeyState::Expired),
            Ok(pb::KeyState::Revoked) => Ok(KeyState::Revoked),
            _ => Err(Error::invalid(
                field,
                format!(
                    "{value} is not a key state (use KEY_STATE_ACTIVE, KEY_STATE_EXPIRED or \
                     KEY_STATE_REVOKED)"
                ),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KeyStates::of(states))
}

pub fn required_environment(value: i32, field: &str) -> Result<Environment, Error> {
    environment_in(value, field)?
        .ok_or_else(|| Error::invalid(field, "is required: ENVIRONMENT_TEST or ENVIRONMENT_LIVE"))
}

fn environment_out(env: Environment) -> pb::Environment {
    match env {
        Environment::Test => pb::Environment::Test,
        Environment::Live => pb::Environment::Live,
    }
}

/// GetKeyUsage's range and granularity (whose usage is the caller's to decide: it checks the
/// scope). A missing time or granularity is an error naming it.
pub fn usage_range_in(
    req: &pb::GetKeyUsageRequest,
) -> Result<(Timestamp, Timestamp, Granularity), Error> {
    let time = |t: &Option<prost_types::Timestamp>, field| {
        optional_timestamp_in(t, field)?.ok_or_else(|| Error::invalid(field, "is required"))
    };
    let granularity = match pb::UsageGranularity::try_from(req.granularity) {
        Ok(pb::UsageGranularity::Hour) => Ok(Granularity::Hour),
        Ok(pb::UsageGranularity::Day) => Ok(Granularity::Day),
        _ => Err(Error::invalid(
            "granularity",
            "is required: USAGE_GRANULARITY_HOUR or USAGE_GRANULARITY_DAY",
        )),
    };
    match (
        time(&req.start_time, "start_time"),
        time(&req.end_time, "end_time"),
        granularity,
    ) {
        (Ok(start), Ok(end), Ok(granularity)) => Ok((start, end, granularity)),
        (start, end, granularity) => Err(Error::merge(
            [start.err(), end.err(), granularity.err()]
                .into_iter()
                .flatten(),
        )),
    }
}

/// One bucket of GetKeyUsage: the denials by their seed codes, zeros left out.
pub fn usage_bucket_out((start, counts): &(Timestamp, Counts)) -> pb::UsageBucket {
    pb::UsageBucket {
        start_time: Some(timestamp_out(*start)),
        valid: i64::try_from(counts.valid()).unwrap_or(i64::MAX),
        denied: Denial::ALL
            .into_iter()
            .filter(|d| counts.denied(*d) > 0)
            .map(|d| {
                (
                    d.code().to_owned(),
                    i64::try_from(counts.denied(d)).unwrap_or(i64::MAX),
                )
            })
            .collect(),
    }
}

/// Latest time accepted: 9999-12-31T23:59:59Z, as in google.protobuf.Timestamp.
const MAX_SECONDS: i64 = 253_402_300_799;

pub fn timestamp_in(t: &prost_types::Timestamp, field: &str) -> Result<Timestamp, Error> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(field, "nanos must be within 0..999999999"));
    }
    if !(0..=MAX_SECONDS).contains(&t.seconds) {
        return Err(Error::invalid(
            field,
            "must be between 1970-01-01 and 9999-12-31",
        ));
    }
    Ok(Timestamp::from_micros(
        t.seconds * 1_000_000 + i64::from(t.nanos / 1_000),
    ))
}

/// An optional time field: unset is `None`.
pub fn optional_timestamp_in(
    t: &Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<Timestamp>, Error> {
    t.as_ref().map(|t| timestamp_in(t, field)).transpose()
}

pub fn timestamp_out(t: Timestamp) -> prost_types::Timestamp {
    let micros = t.as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    }
}

pub fn duration_in(d: &prost_types::Duration, field: &str) -> Result<Duration, Error> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "nanos must be within 0..999999999"));
    }
    Ok(Duration::new(
        d.seconds.unsigned_abs(),
        d.nanos.unsigned_abs(),
    ))
}

/// [`permissions_in`], the strings moved out of the message instead of copied.
pub fn permissions_from(list: Vec<pb::Permission>) -> Vec<RequestedPermission> {
    list.into_iter()
        .map(|p| RequestedPermission {
            resource: p.resource,
            actions: p.actions,
        })
        .collect()
}

pub fn permissions_in(list: &[pb::Permission]) -> Vec<RequestedPermission> {
    list.iter()
        .map(|p| RequestedPermission {
            resource: p.resource.clone(),
            actions: p.actions.clone(),
        })
        .collect()
}

/// An IssueKey request, every field checked so that one answer names every problem.
pub fn new_key_in(req: &pb::IssueKeyRequest, catalog: &Catalog) -> Result<NewKey, Error> {
    let metadata = req
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match (
        ApplicationId::parse(&req.application_id, "application_id"),
        required_environment(req.environment, "environment"),
        parse_name(&req.name, "name"),
        catalog.permissions(&permissions_in(&req.permissions), "permissions"),
        optional_timestamp_in(&req.expire_time, "expire_time"),
        check_metadata(&metadata, "metadata"),
    ) {
        (
            Ok(application_id),
            Ok(environment),
            Ok(name),
            Ok(permissions),
            Ok(expire_time),
            Ok(()),
        ) => Ok(NewKey {
            application_id,
            environment,
            name,
            permissions,
            expire_time,
            metadata,
        }),
        (a, e, n, p, x, m) => Err(Error::merge(
            [a.err(), e.err(), n.err(), p.err(), x.err(), m.err()]
                .into_iter()
                .flatten(),
        )),
    }
}

pub fn key_out(record: &KeyRecord, now: Timestamp) -> pb::ApiKey {
    key_out_as(record, record.state(now))
}

/// `record` as an `ApiKey` in `state` (the state a verdict judged it in).
pub fn key_out_as(record: &KeyRecord, state: KeyState) -> pb::ApiKey {
    let state = match state {
        KeyState::Active => pb::KeyState::Active,
        KeyState::Expired => pb::KeyState::Expired,
        KeyState::Revoked => pb::KeyState::Revoked,
    };
    pb::ApiKey {
        id: record.id.as_str().to_owned(),
        application_id: record.application_id.as_str().to_owned(),
        environment: environment_out(record.environment).into(),
        name: record.name.clone(),
        redacted: record.redacted.clone(),
        restricted: record.restricted,
        permissions: record
            .permissions
            .iter()
            .map(|(resource, actions)| pb::Permission {
                resource: resource.to_owned(),
                actions: actions.map(str::to_owned).collect(),
            })
            .collect(),
        metadata: record
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        create_time: Some(timestamp_out(record.create_time)),
        expire_time: record.expire_time.map(timestamp_out),
        revoke_time: record.revoke_time.map(timestamp_out),
        last_used_time: record.last_used_time.map(timestamp_out),
        replaced_by_key_id: record
            .replaced_by
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        state: state.into(),
        revoke_reason: record.revoke_reason.clone().unwrap_or_default(),
    }
}

pub fn event_type_out(kind: EventKind) -> pb::KeyEventType {
    match kind {
        EventKind::Issued => pb::KeyEventType::Issued,
        EventKind::Rolled => pb::KeyEventType::Rolled,
        EventKind::Revoked => pb::KeyEventType::Revoked,
        EventKind::OperatorAuthFailed => pb::KeyEventType::OperatorAuthFailed,
        EventKind::Exposed => pb::KeyEventType::Exposed,
        EventKind::Updated => pb::KeyEventType::Updated,
        EventKind::PermissionDenied => pb::KeyEventType::PermissionDenied,
        EventKind::Expiring => pb::KeyEventType::Expiring,
    }
}

/// ListKeyEvents' `types`: each a known type other than UNSPECIFIED.
pub fn event_types_in(values: &[i32], field: &str) -> Result<Vec<EventKind>, Error> {
    at_most(values, MAX_REPEATED_ENUMS, field)?;
    values
        .iter()
        .map(|&value| match pb::KeyEventType::try_from(value) {
            Ok(pb::KeyEventType::Issued) => Ok(EventKind::Issued),
            Ok(pb::KeyEventType::Rolled) => Ok(EventKind::Rolled),
            Ok(pb::KeyEventType::Revoked) => Ok(EventKind::Revoked),
            Ok(pb::KeyEventType::OperatorAuthFailed) => Ok(EventKind::OperatorAuthFailed),
            Ok(pb::KeyEventType::Exposed) => Ok(EventKind::Exposed),
            Ok(pb::KeyEventType::Updated) => Ok(EventKind::Updated),
            Ok(pb::KeyEventType::PermissionDenied) => Ok(EventKind::PermissionDenied),
            Ok(pb::KeyEventType::Expiring) => Ok(EventKind::Expiring),
            Ok(pb::KeyEventType::Unspecified) | Err(_) => Err(Error::invalid(
                field,
                format!("{value} is not a KeyEventType (e.g. KEY_EVENT_TYPE_ISSUED)"),
            )),
        })
        .collect()
}

/// The paths UpdateKey can change (AIP-134).
pub const UPDATABLE_PATHS: [&str; 4] = ["name", "metadata", "permissions", "expire_time"];

/// An UpdateKey request: the key's id and the changes its mask names, each value checked as
/// in IssueKey. An empty mask, `*`, or a path that is not updatable is refused, naming it.
pub fn key_update_in(
    req: &pb::UpdateKeyRequest,
    catalog: &Catalog,
) -> Result<(KeyId, KeyUpdate), Error> {
    let key = req
        .key
        .as_ref()
        .ok_or_else(|| Error::invalid("key", "is required (with its `id`)"))?;
    let id = KeyId::parse(&key.id, "key.id");
    let paths = req
        .update_mask
        .as_ref()
        .map(|m| m.paths.as_slice())
        .unwrap_or_default();
    at_most(paths, MAX_REPEATED_ENUMS, "update_mask.paths")?;
    let mut problems = Vec::new();
    if paths.is_empty() {
        problems.push(Error::invalid(
            "update_mask",
            format!(
                "is required: name the fields to change ({})",
                UPDATABLE_PATHS.join(", ")
            ),
        ));
    }
    let mut update = KeyUpdate::default();
    for path in paths {
        let result = match path.as_str() {
            "name" => parse_name(&key.name, "key.name").map(|n| update.name = Some(n)),
            "metadata" => {
                let metadata = key
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                check_metadata(&metadata, "key.metadata").map(|()| update.metadata = Some(metadata))
            }
            "permissions" => catalog
                .permissions(&permissions_in(&key.permissions), "key.permissions")
                .map(|p| update.permissions = Some(p)),
            "expire_time" => key
                .expire_time
                .as_ref()
                .map(|t| timestamp_in(t, "key.expire_time"))
                .transpose()
                .map(|t| update.expire_time = Some(t)),
            "*" => Err(Error::invalid(
                "update_mask",
                format!(
                    "`*` is not supported: name the fields to change ({})",
                    UPDATABLE_PATHS.join(", ")
                ),
            )),
            other => Err(Error::invalid(
                "update_mask",
                format!(
                    "`{}` cannot be updated: the updatable fields are {}",
                    keyauth_core::error::echo(other),
                    UPDATABLE_PATHS.join(", ")
                ),
            )),
        };
        if let Err(e) = result {
            problems.push(e);
        }
    }
    match id {
        Ok(id) if problems.is_empty() => Ok((id, update)),
        id => Err(Error::merge(id.err().into_iter().chain(problems))),
    }
}

/// The permission catalog: every resource with its actions, sorted.
pub fn catalog_out(catalog: &Catalog) -> pb::GetCatalogResponse {
    pb::GetCatalogResponse {
        resources: catalog
            .resources()
            .map(|(name, actions)| pb::CatalogResource {
                name: name.to_owned(),
                actions: actions.map(str::to_owned).collect(),
            })
            .collect(),
    }
}

fn counts_out(counts: KeyCounts) -> pb::KeyCounts {
    pb::KeyCounts {
        active: counts.active,
        expired: counts.expired,
        revoked: counts.revoked,
    }
}

pub fn application_out(app: &ApplicationSummary) -> pb::ApplicationSummary {
    pb::ApplicationSummary {
        application_id: app.application_id.as_str().to_owned(),
        test: Some(counts_out(app.test)),
        live: Some(counts_out(app.live)),
    }
}

pub fn event_out(event: &AuditEvent) -> pb::KeyEvent {
    let kind = event_type_out(event.kind);
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    pb::KeyEvent {
        actor: event.actor.as_ref().map(|a| pb::Principal {
            name: a.name.clone(),
            subject: a.subject.clone(),
            issuer: a.issuer.clone(),
            ..Default::default()
        }),
        sequence: event.seq,
        r#type: kind.into(),
        key_id: event
            .key_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        related_key_id: event
            .related_key_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        application_id: text(&event.application_id),
        operator_id: text(&event.operator),
        peer: text(&event.peer),
        request_id: text(&event.request_id),
        event_time: Some(timestamp_out(event.event_time)),
        source: text(&event.source),
        url: text(&event.url),
        count: event.count,
        changed_paths: event.changed_paths.clone(),
    }
}

/// One outcome of ReportExposedKeys (never the key: its id and redaction at most).
pub fn exposure_out(outcome: &ExposureOutcome) -> pb::ExposedKeyResult {
    let known = |kind: pb::ExposureOutcome, record: &KeyRecord| pb::ExposedKeyResult {
        outcome: kind.into(),
        key_id: record.id.to_string(),
        redacted: record.redacted.clone(),
        application_id: record.application_id.as_str().to_owned(),
    };
    match outcome {
        ExposureOutcome::NotAKey => pb::ExposedKeyResult {
            outcome: pb::ExposureOutcome::NotAKey.into(),
            ..Default::default()
        },
        ExposureOutcome::Unknown { id, redacted } => pb::ExposedKeyResult {
            outcome: pb::ExposureOutcome::Unknown.into(),
            key_id: id.to_string(),
            redacted: redacted.clone(),
            application_id: String::new(),
        },
        ExposureOutcome::Revoked(record) => known(pb::ExposureOutcome::Revoked, record),
        ExposureOutcome::AlreadyRevoked(record) => {
            known(pb::ExposureOutcome::AlreadyRevoked, record)
        }
    }
}

fn error_out(denial: Denial) -> pb::ApiError {
    pb::ApiError {
        code: denial.code().to_owned(),
        message: denial.message().to_owned(),
        r#type: denial.error_type().to_owned(),
    }
}

/// A verdict's fields other than the key: (valid, error, http_status).
pub fn verdict_out(verdict: &Verdict) -> (bool, Option<pb::ApiError>, i32) {
    (
        verdict.is_valid(),
        verdict.denial.map(error_out),
        verdict.denial.map_or(200, Denial::http_status),
    )
}

/// A principal as GetPrincipal shows it: who it is, its roles and its scope.
pub fn principal_out(principal: &Principal) -> pb::Principal {
    pb::Principal {
        name: principal.name.clone(),
        subject: principal.subject.clone(),
        issuer: principal.issuer.clone(),
        roles: principal
            .roles
            .iter()
            .map(|r| r.name().to_owned())
            .collect(),
        applications: principal.scope.applications().to_vec(),
        environments: principal
            .scope
            .environments()
            .iter()
            .filter_map(|e| Environment::from_store(e))
            .map(|e| environment_out(e) as i32)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_microseconds() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_000,
        };
        assert_eq!(timestamp_out(timestamp_in(&t, "t").unwrap()), t);
        for bad in [
            prost_types::Timestamp {
                seconds: -1,
                nanos: 0,
            },
            prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            },
            prost_types::Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            },
            prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
        ] {
            assert!(timestamp_in(&bad, "t").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_must_be_non_negative() {
        let d = prost_types::Duration {
            seconds: 5,
            nanos: 0,
        };
        assert_eq!(duration_in(&d, "d").unwrap(), Duration::from_secs(5));
        assert!(
            duration_in(
                &prost_types::Duration {
                    seconds: -5,
                    nanos: 0
                },
                "d"
            )
            .is_err()
        );
        assert!(
            duration_in(
                &prost_types::Duration {
                    seconds: 0,
                    nanos: -5
                },
                "d"
            )
            .is_err()
        );
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        assert!(environment_in(7, "environment").is_err());
        assert!(required_environment(0, "environment").is_err());
        assert_eq!(required_environment(2, "e").unwrap(), Environment::Live);
    }
}
