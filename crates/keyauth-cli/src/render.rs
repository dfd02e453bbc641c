//! Rendering answers: aligned tables for people, one JSON object for scripts.

use serde_json::{Map, Value, json};

use keyauth_proto as pb;

pub(crate) fn env_name(value: i32) -> &'static str {
    match pb::Environment::try_from(value) {
        Ok(pb::Environment::Test) => "test",
        Ok(pb::Environment::Live) => "live",
        _ => "unspecified",
    }
}

pub(crate) fn state_name(value: i32) -> &'static str {
    match pb::KeyState::try_from(value) {
        Ok(pb::KeyState::Active) => "active",
        Ok(pb::KeyState::Expired) => "expired",
        Ok(pb::KeyState::Revoked) => "revoked",
        _ => "unspecified",
    }
}

pub(crate) fn event_type_name(value: i32) -> &'static str {
    match pb::KeyEventType::try_from(value) {
        Ok(pb::KeyEventType::Issued) => "issued",
        Ok(pb::KeyEventType::Rolled) => "rolled",
        Ok(pb::KeyEventType::Revoked) => "revoked",
        Ok(pb::KeyEventType::OperatorAuthFailed) => "operator_auth_failed",
        Ok(pb::KeyEventType::Exposed) => "exposed",
        Ok(pb::KeyEventType::Updated) => "updated",
        Ok(pb::KeyEventType::PermissionDenied) => "permission_denied",
        Ok(pb::KeyEventType::Expiring) => "expiring",
        _ => "unspecified",
    }
}

/// An empty proto string (unset) as JSON null.
pub(crate) fn empty_as_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// An empty proto string as `-`, for tables.
pub(crate) fn text_or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        printable(s)
    }
}

/// RFC 3339 with the server's precision, for JSON.
pub(crate) fn time_json(t: Option<&prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// RFC 3339 to the second, or `-`, for tables.
pub(crate) fn time_or_dash(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| {
            prost_types::Timestamp {
                seconds: t.seconds,
                nanos: 0,
            }
            .to_string()
        },
    )
}

pub(crate) fn permission_text(p: &pb::Permission) -> String {
    format!("{}:{}", p.resource, p.actions.join(","))
}

pub(crate) fn sorted_metadata(key: &pb::ApiKey) -> Vec<(&String, &String)> {
    let mut entries: Vec<_> = key.metadata.iter().collect();
    entries.sort();
    entries
}

/// One key as JSON, every field present (null when unset), in the proto's field names.
pub fn key_json(key: &pb::ApiKey) -> Value {
    let mut metadata = Map::new();
    for (k, v) in sorted_metadata(key) {
        metadata.insert(k.clone(), Value::String(v.clone()));
    }
    json!({
        "id": key.id,
        "application_id": key.application_id,
        "environment": env_name(key.environment),
        "name": key.name,
        "redacted": key.redacted,
        "state": state_name(key.state),
        "restricted": key.restricted,
        "permissions": key.permissions.iter().map(|p| json!({
            "resource": p.resource,
            "actions": p.actions,
        })).collect::<Vec<_>>(),
        "metadata": Value::Object(metadata),
        "create_time": time_json(key.create_time.as_ref()),
        "expire_time": time_json(key.expire_time.as_ref()),
        "revoke_time": time_json(key.revoke_time.as_ref()),
        "revoke_reason": empty_as_null(&key.revoke_reason),
        "last_used_time": time_json(key.last_used_time.as_ref()),
        "replaced_by_key_id": empty_as_null(&key.replaced_by_key_id),
    })
}

/// One audit event as JSON, every field present (null when unset), in the proto's field names.
pub fn event_json(event: &pb::KeyEvent) -> Value {
    json!({
        "sequence": event.sequence,
        "type": event_type_name(event.r#type),
        "key_id": empty_as_null(&event.key_id),
        "related_key_id": empty_as_null(&event.related_key_id),
        "application_id": empty_as_null(&event.application_id),
        "operator_id": empty_as_null(&event.operator_id),
        "peer": empty_as_null(&event.peer),
        "request_id": empty_as_null(&event.request_id),
        "event_time": time_json(event.event_time.as_ref()),
        "source": empty_as_null(&event.source),
        "url": empty_as_null(&event.url),
        "changed_paths": event.changed_paths,
    })
}

/// One key as `field  value` rows.
pub(crate) fn key_rows(key: &pb::ApiKey) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = vec![
        ("id".into(), key.id.clone()),
        ("key".into(), key.redacted.clone()),
        ("application".into(), key.application_id.clone()),
        ("env".into(), env_name(key.environment).into()),
        ("name".into(), key.name.clone()),
        ("state".into(), state_name(key.state).into()),
        (
            "restricted".into(),
            if key.restricted { "yes" } else { "no" }.into(),
        ),
    ];
    if key.restricted {
        let permissions: Vec<String> = key.permissions.iter().map(permission_text).collect();
        rows.push(("permissions".into(), permissions.join(" ")));
    }
    rows.push(("created".into(), time_or_dash(key.create_time.as_ref())));
    rows.push(("expires".into(), time_or_dash(key.expire_time.as_ref())));
    rows.push((
        "last used".into(),
        time_or_dash(key.last_used_time.as_ref()),
    ));
    if key.revoke_time.is_some() {
        rows.push(("revoked".into(), time_or_dash(key.revoke_time.as_ref())));
        if !key.revoke_reason.is_empty() {
            rows.push(("revoke reason".into(), key.revoke_reason.clone()));
        }
    }
    if !key.replaced_by_key_id.is_empty() {
        rows.push(("replaced by".into(), key.replaced_by_key_id.clone()));
    }
    for (k, v) in sorted_metadata(key) {
        rows.push((format!("metadata.{k}"), v.clone()));
    }
    rows
}

pub(crate) fn width(s: &str) -> usize {
    s.chars().count()
}

/// Control characters (a name or metadata value can hold none, but be safe) shown escaped, so
/// a value cannot move the cursor or break the alignment.
pub(crate) fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.to_owned()
    }
}

pub(crate) fn render_pairs(rows: &[(String, String)]) -> String {
    let label_width = rows.iter().map(|(l, _)| width(l)).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let pad = label_width - width(label);
        out.push_str(&format!(
            "{label}{}  {}\n",
            " ".repeat(pad),
            printable(value)
        ));
    }
    out
}

/// Columns aligned on the widest cell; the last column is not padded.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(cell));
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells.collect();
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(widths[i] - width(cell) + 2));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().map(|h| (*h).to_owned()));
    for row in rows {
        out.push_str(&line(&mut row.iter().cloned()));
    }
    out
}

pub(crate) fn render_key_table(keys: &[pb::ApiKey]) -> String {
    if keys.is_empty() {
        return "no keys\n".into();
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                env_name(k.environment).into(),
                printable(&k.name),
                state_name(k.state).into(),
                if k.restricted { "yes" } else { "no" }.into(),
                time_or_dash(k.create_time.as_ref()),
                time_or_dash(k.expire_time.as_ref()),
                time_or_dash(k.last_used_time.as_ref()),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "ENV",
            "NAME",
            "STATE",
            "RESTRICTED",
            "CREATED",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    )
}

/// The denial codes of the usage table and JSON, in the contract's order.
const DENIAL_CODES: [&str; 4] = [
    "authentication_error",
    "api_key_revoked",
    "api_key_expired",
    "insufficient_permissions",
];

pub(crate) fn usage_json(b: &pb::UsageBucket) -> Value {
    serde_json::json!({
        "start_time": time_json(b.start_time.as_ref()),
        "valid": b.valid,
        "denied": b.denied,
    })
}

pub(crate) fn render_usage_table(buckets: &[pb::UsageBucket]) -> String {
    if buckets.is_empty() {
        return "no verifications\n".into();
    }
    let rows: Vec<Vec<String>> = buckets
        .iter()
        .map(|b| {
            let mut row = vec![time_or_dash(b.start_time.as_ref()), b.valid.to_string()];
            row.extend(
                DENIAL_CODES
                    .iter()
                    .map(|code| b.denied.get(*code).copied().unwrap_or(0).to_string()),
            );
            row
        })
        .collect();
    render_table(
        &[
            "START",
            "VALID",
            "AUTHENTICATION_ERROR",
            "API_KEY_REVOKED",
            "API_KEY_EXPIRED",
            "INSUFFICIENT_PERMISSIONS",
        ],
        &rows,
    )
}

pub(crate) fn render_event_table(events: &[pb::KeyEvent]) -> String {
    if events.is_empty() {
        return "no events\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.sequence.to_string(),
                time_or_dash(e.event_time.as_ref()),
                event_type_name(e.r#type).into(),
                text_or_dash(&e.key_id),
                text_or_dash(&e.related_key_id),
                text_or_dash(&e.operator_id),
                text_or_dash(&e.peer),
                text_or_dash(&e.request_id),
            ]
        })
        .collect();
    render_table(
        &[
            "SEQUENCE",
            "TIME",
            "TYPE",
            "KEY",
            "RELATED KEY",
            "OPERATOR",
            "PEER",
            "REQUEST ID",
        ],
        &rows,
    )
}
