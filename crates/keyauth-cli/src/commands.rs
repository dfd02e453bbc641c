//! Running the commands: one RPC per `keys` subcommand (a paging loop for listings), and
//! `verify`; each through a [`Client`] made from the connection flags by [`connect`].

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

use keyauth_client::client::bearer;
use keyauth_client::{Client, ClientBuilder, ConnectError, tls};
use keyauth_proto as pb;

use crate::args::*;
use crate::exit::*;
use crate::render::*;

/// Runs `keyauth keys …`.
pub async fn keys(args: KeysArgs) -> ExitCode {
    match run_keys(&args).await {
        Ok(output) => {
            emit(&output);
            ExitCode::from(EXIT_OK)
        }
        Err(failure) => failure.report(&args.connection),
    }
}

/// Runs `keyauth verify …`: 0 valid, 1 not valid.
pub async fn verify(args: VerifyArgs) -> ExitCode {
    match run_verify(&args).await {
        Ok((output, valid)) => {
            emit(&output);
            ExitCode::from(if valid { EXIT_OK } else { EXIT_DENIED })
        }
        Err(failure) => failure.report(&args.connection),
    }
}

/// What a command prints: stdout, and notes for stderr.
#[derive(Default)]
pub(crate) struct Output {
    pub(crate) stdout: String,
    pub(crate) notes: Vec<String>,
}

pub(crate) fn emit(output: &Output) {
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(output.stdout.as_bytes());
    let _ = stdout.flush();
    for note in &output.notes {
        eprintln!("keyauth: {note}");
    }
}

pub(crate) fn json_output(value: Value) -> Output {
    let mut stdout = serde_json::to_string_pretty(&value).unwrap_or_default();
    stdout.push('\n');
    Output {
        stdout,
        notes: Vec::new(),
    }
}

/// `Ok(token)` to fetch the page after (with `--all`), `Err(token)` when done: the token of
/// the next page, empty on the last.
pub(crate) fn next_page(all: bool, token: String) -> Result<String, String> {
    if all && !token.is_empty() {
        Ok(token)
    } else {
        Err(token)
    }
}

/// The output of a listing (`keys list`, `keys events`): JSON `{what: rows, next_page_token}`,
/// or the table with a note on how to get the next page.
pub(crate) fn listing(
    json: bool,
    what: &str,
    rows: Vec<Value>,
    next: &str,
    table: String,
) -> Output {
    if json {
        return json_output(json!({ what: rows, "next_page_token": next }));
    }
    let notes = if next.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "more {what}: pass --page-token {next} for the next page, or --all"
        )]
    };
    Output {
        stdout: table,
        notes,
    }
}

/// `client` for one operator request: with a request id of its own (`cli-` and 16 random
/// base62 characters) so that the audit trail can be matched with this run.
pub(crate) fn operator(client: &Client) -> Client {
    client.with_request_id(&format!("cli-{}", keyauth_contract::unique_base62(16)))
}

/// Connects eagerly, so that an unreachable server (or a failed TLS handshake) is exit 3 before
/// any request is sent. Bad settings (the URL, a TLS file) are exit 2 before any connection.
/// `tokens` adds the command's token to the [`ClientBuilder`]. The `timeout` bounds reaching
/// the server, its TLS handshake and each call; reads are retried by the client. Changes carry
/// no idempotency key (IssueKey and RollKey with one need the server to have a seal key), so
/// they are sent once.
pub(crate) async fn connect(
    connection: &Connection,
    tokens: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> Result<Client, Failure> {
    let server = connection.server.trim();
    let (scheme, rest) = server.split_once("://").unwrap_or(("http", server));
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(invalid_server(
            server,
            "use http://HOST:PORT (plaintext) or https://HOST:PORT (TLS)",
        ));
    };
    let url = format!("{}://{rest}", if https { "https" } else { "http" });
    let mut builder = tokens(Client::builder(url))
        .connect_timeout(connection.timeout)
        .handshake_timeout(connection.timeout)
        .timeout(connection.timeout)
        .idempotency(false);
    if https {
        // Without --ca-cert the system's root certificates are trusted (as curl and browsers
        // do); a private CA needs --ca-cert.
        if let Some(ca) = &connection.ca_cert {
            builder = builder.ca_certificate(ca);
        }
        match (&connection.client_cert, &connection.client_key) {
            (Some(cert), Some(key)) => builder = builder.identity(cert, key),
            (None, None) => {}
            (Some(_), None) => {
                return Err(half_identity(
                    tls::CLIENT_CERT_SETTING,
                    tls::CLIENT_KEY_SETTING,
                ));
            }
            (None, Some(_)) => {
                return Err(half_identity(
                    tls::CLIENT_KEY_SETTING,
                    tls::CLIENT_CERT_SETTING,
                ));
            }
        }
    } else if connection.ca_cert.is_some()
        || connection.client_cert.is_some()
        || connection.client_key.is_some()
    {
        return Err(Failure::Usage(format!(
            "--ca-cert, --client-cert and --client-key are for TLS, but --server (KEYAUTH_SERVER) {server:?} is plaintext: use https://"
        )));
    }
    builder.connect().await.map_err(|e| match e {
        ConnectError::Url { why, .. } => invalid_server(server, &why),
        ConnectError::Setting(why) => Failure::Usage(why),
        ConnectError::Tls(e) => {
            let what = if connection.client_cert.is_some() {
                format!(
                    "invalid {} with {}",
                    tls::CLIENT_CERT_SETTING,
                    tls::CLIENT_KEY_SETTING
                )
            } else if connection.ca_cert.is_none() {
                format!(
                    "cannot use the system's root certificates for {server} (give the CA with {})",
                    tls::CA_CERT_SETTING
                )
            } else {
                format!("cannot use these TLS settings for {server}")
            };
            Failure::Usage(with_causes(
                format!("{what}: {e}"),
                std::error::Error::source(&e),
            ))
        }
        ConnectError::Unreachable(e) => Failure::Unreachable(with_causes(
            format!("cannot connect to {server}: {e}"),
            std::error::Error::source(&e),
        )),
    })
}

fn invalid_server(server: &str, why: &str) -> Failure {
    Failure::Usage(format!(
        "invalid --server (KEYAUTH_SERVER) {server:?}: {why}"
    ))
}

fn half_identity(given: &str, missing: &str) -> Failure {
    Failure::Usage(format!("{given} is set but {missing} is not"))
}

pub(crate) const SECRET_NOTE: &str =
    "the full key above is shown this once: keyauth keeps only a hash of it. Store it now.";

/// The operator token, trimmed; when there is none, a usage error saying that `who` (plural:
/// "operator commands") need it.
pub(crate) fn operator_token<'a>(token: Option<&'a str>, who: &str) -> Result<&'a str, Failure> {
    let token = match token.map(str::trim) {
        Some(t) if !t.is_empty() => t,
        _ => {
            return Err(Failure::Usage(format!(
                "{who} need the operator token: pass --admin-token or set KEYAUTH_ADMIN_TOKEN"
            )));
        }
    };
    match bearer(token) {
        Some(_) => Ok(token),
        None => Err(Failure::Usage(
            "--admin-token (KEYAUTH_ADMIN_TOKEN) must be printable ASCII".into(),
        )),
    }
}

/// The caller's token: the first line of --token-file (KEYAUTH_TOKEN_FILE), else --token
/// (KEYAUTH_TOKEN), else `fallback` (the command's own token flag).
pub(crate) fn caller_token(
    credential: &TokenArgs,
    fallback: Option<&str>,
) -> Result<Option<String>, Failure> {
    if let Some(path) = &credential.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::Usage(format!(
                "cannot read --token-file (KEYAUTH_TOKEN_FILE) {}: {e}",
                path.display()
            ))
        })?;
        return Ok(text.lines().next().map(|l| l.trim().to_owned()));
    }
    Ok(credential.token.as_deref().or(fallback).map(str::to_owned))
}

pub(crate) async fn run_keys(args: &KeysArgs) -> Result<Output, Failure> {
    let token = caller_token(&args.credential, args.admin_token.as_deref())?;
    let token = operator_token(token.as_deref(), "operator commands")?;
    // Local checks first: a usage error never needs the server.
    let request = prepare(&args.command)?;
    let json = args.connection.json;
    let client = connect(&args.connection, |b| b.operator_token(token)).await?;
    match request {
        Prepared::Issue(req) => {
            let res = operator(&client).issue_key(req).await?;
            let key = res.key.unwrap_or_default();
            if json {
                return Ok(json_output(json!({
                    "secret": res.secret,
                    "key": key_json(&key),
                })));
            }
            let mut rows = vec![("secret".to_owned(), res.secret.clone())];
            rows.extend(key_rows(&key));
            Ok(Output {
                stdout: render_pairs(&rows),
                notes: vec![SECRET_NOTE.into()],
            })
        }
        Prepared::Roll(req) => {
            let res = operator(&client).roll_key(req).await?;
            let key = res.key.unwrap_or_default();
            let previous = res.previous_key.unwrap_or_default();
            if json {
                return Ok(json_output(json!({
                    "secret": res.secret,
                    "key": key_json(&key),
                    "previous_key": key_json(&previous),
                })));
            }
            let mut rows = vec![("secret".to_owned(), res.secret.clone())];
            rows.extend(key_rows(&key));
            let mut stdout = render_pairs(&rows);
            stdout.push_str(&format!(
                "\nprevious key {} ({}) works until {}\n",
                previous.id,
                previous.redacted,
                time_or_dash(previous.expire_time.as_ref())
            ));
            Ok(Output {
                stdout,
                notes: vec![SECRET_NOTE.into()],
            })
        }
        Prepared::Revoke(req) => {
            let res = operator(&client).revoke_key(req).await?;
            Ok(single_key(json, &res.key.unwrap_or_default()))
        }
        Prepared::Get(req) => {
            let res = operator(&client).get_key(req).await?;
            Ok(single_key(json, &res.key.unwrap_or_default()))
        }
        Prepared::List { mut request, all } => {
            let mut pages = Vec::new();
            loop {
                let res = operator(&client).list_keys(request.clone()).await?;
                pages.extend(res.keys);
                match next_page(all, res.next_page_token) {
                    Ok(token) => request.page_token = token,
                    Err(last) => {
                        let rows = pages.iter().map(key_json).collect();
                        return Ok(listing(json, "keys", rows, &last, render_key_table(&pages)));
                    }
                }
            }
        }
        Prepared::Usage(request) => {
            let res = operator(&client).get_key_usage(request).await?;
            if json {
                let buckets: Vec<Value> = res.buckets.iter().map(usage_json).collect();
                return Ok(json_output(json!({ "buckets": buckets })));
            }
            Ok(Output {
                stdout: render_usage_table(&res.buckets),
                notes: Vec::new(),
            })
        }
        Prepared::Events { mut request, all } => {
            let mut pages = Vec::new();
            loop {
                let res = operator(&client).list_key_events(request.clone()).await?;
                pages.extend(res.events);
                match next_page(all, res.next_page_token) {
                    Ok(token) => request.page_token = token,
                    Err(last) => {
                        let rows = pages.iter().map(event_json).collect();
                        let table = render_event_table(&pages);
                        return Ok(listing(json, "events", rows, &last, table));
                    }
                }
            }
        }
    }
}

/// A request built and checked locally.
pub(crate) enum Prepared {
    Issue(pb::IssueKeyRequest),
    Roll(pb::RollKeyRequest),
    Revoke(pb::RevokeKeyRequest),
    Get(pb::GetKeyRequest),
    List {
        request: pb::ListKeysRequest,
        all: bool,
    },
    Events {
        request: pb::ListKeyEventsRequest,
        all: bool,
    },
    Usage(pb::GetKeyUsageRequest),
}

pub(crate) fn prepare(command: &KeysCommand) -> Result<Prepared, Failure> {
    Ok(match command {
        KeysCommand::Issue(a) => {
            let mut metadata = BTreeMap::new();
            for entry in &a.metadata {
                if metadata
                    .insert(entry.key.clone(), entry.value.clone())
                    .is_some()
                {
                    return Err(Failure::Usage(format!(
                        "--metadata {:?} is given twice",
                        entry.key
                    )));
                }
            }
            Prepared::Issue(pb::IssueKeyRequest {
                application_id: a.application.clone(),
                environment: a.env.pb().into(),
                name: a.name.clone(),
                permissions: permissions_out(&a.permissions),
                expire_time: a.expires,
                metadata,
            })
        }
        KeysCommand::Roll(a) => Prepared::Roll(pb::RollKeyRequest {
            key_id: a.key_id.clone(),
            grace_period: a
                .grace
                .map(|g| {
                    prost_types::Duration::try_from(g)
                        .map_err(|_| Failure::Usage(format!("--grace {g:?} is too long")))
                })
                .transpose()?,
            expire_time: a.expires,
        }),
        KeysCommand::Revoke(a) => Prepared::Revoke(pb::RevokeKeyRequest {
            key_id: a.key_id.clone(),
            reason: a.reason.clone().unwrap_or_default(),
        }),
        KeysCommand::Get(a) => Prepared::Get(pb::GetKeyRequest {
            key_id: a.key_id.clone(),
        }),
        KeysCommand::List(a) => Prepared::List {
            request: pb::ListKeysRequest {
                application_id: a.application.clone(),
                environment: a.env.map_or(pb::Environment::Unspecified, Env::pb).into(),
                page_size: a.page.page_size.unwrap_or(0),
                page_token: a.page.page_token.clone().unwrap_or_default(),
                states: a.states.iter().map(|s| s.pb().into()).collect(),
                last_used_before: a
                    .unused_for
                    .map(|d| {
                        std::time::SystemTime::now()
                            .checked_sub(d)
                            .map(prost_types::Timestamp::from)
                            .ok_or_else(|| {
                                Failure::Usage(format!("--unused-for {d:?} is too long"))
                            })
                    })
                    .transpose()?,
            },
            all: a.page.all,
        },
        KeysCommand::Usage(a) => Prepared::Usage(usage_request(a)?),
        KeysCommand::Events(a) => Prepared::Events {
            request: pb::ListKeyEventsRequest {
                key_id: a.key_id.clone().unwrap_or_default(),
                application_id: a.application.clone().unwrap_or_default(),
                page_size: a.page.page_size.unwrap_or(0),
                page_token: a.page.page_token.clone().unwrap_or_default(),
                types: a.types.iter().map(|t| t.pb().into()).collect(),
                start_time: a.since,
                end_time: a.until,
                actor: String::new(),
            },
            all: a.page.all,
        },
    })
}

pub(crate) fn single_key(json: bool, key: &pb::ApiKey) -> Output {
    if json {
        return json_output(json!({ "key": key_json(key) }));
    }
    Output {
        stdout: render_pairs(&key_rows(key)),
        notes: Vec::new(),
    }
}

pub(crate) async fn run_verify(args: &VerifyArgs) -> Result<(Output, bool), Failure> {
    let key = if args.key == "-" {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::Usage(format!("cannot read the key from stdin: {e}")))?;
        line.trim().to_owned()
    } else {
        args.key.trim().to_owned()
    };
    if key.is_empty() {
        return Err(Failure::Usage("KEY is empty".into()));
    }
    let request = pb::VerifyRequest {
        key,
        required_permissions: permissions_out(&args.permissions),
    };
    let token = caller_token(&args.credential, args.verifier_token.as_deref())?;
    let token = match token.as_deref().map(str::trim) {
        Some(token) if !token.is_empty() => {
            if bearer(token).is_none() {
                return Err(Failure::Usage(
                    "--verifier-token (KEYAUTH_VERIFIER_TOKEN) must be printable ASCII".into(),
                ));
            }
            Some(token)
        }
        _ => None,
    };
    let client = connect(&args.connection, |b| match token {
        Some(token) => b.verifier_token(token),
        None => b,
    })
    .await?;
    let res = client.verify(request).await?;
    let output = if args.connection.json {
        json_output(json!({
            "valid": res.valid,
            "http_status": res.http_status,
            "error": res.error.as_ref().map(|e| json!({
                "code": e.code,
                "message": e.message,
                "type": e.r#type,
            })),
            "key": res.key.as_ref().map(key_json),
        }))
    } else {
        let mut rows = vec![(
            "valid".to_owned(),
            if res.valid { "yes" } else { "no" }.to_owned(),
        )];
        if let Some(error) = &res.error {
            rows.push(("error".into(), error.code.clone()));
            rows.push(("message".into(), error.message.clone()));
        }
        rows.push(("http status".into(), res.http_status.to_string()));
        if let Some(key) = &res.key {
            rows.extend(key_rows(key));
        }
        Output {
            stdout: render_pairs(&rows),
            notes: Vec::new(),
        }
    };
    Ok((output, res.valid))
}

/// GetKeyUsage for the last `--last` (24 h by the hour, 30 days by the day) up to the end of
/// the current bucket, from whole buckets.
fn usage_request(a: &UsageArgs) -> Result<pb::GetKeyUsageRequest, Failure> {
    const HOUR: u64 = 3600;
    let (granularity, bucket, default) = match a.by {
        Bucket::Hour => (pb::UsageGranularity::Hour, HOUR, 24 * HOUR),
        Bucket::Day => (pb::UsageGranularity::Day, 24 * HOUR, 30 * 24 * HOUR),
    };
    let last = a.last.map_or(default, |d| d.as_secs());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let end = (now / bucket + 1) * bucket;
    let start = end
        .checked_sub(last.div_ceil(bucket).max(1) * bucket)
        .ok_or_else(|| Failure::Usage(format!("--last {last}s reaches before 1970")))?;
    let at = |secs: u64| prost_types::Timestamp {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    };
    Ok(pb::GetKeyUsageRequest {
        key_id: a.key_id.clone().unwrap_or_default(),
        application_id: a.application.clone().unwrap_or_default(),
        start_time: Some(at(start)),
        end_time: Some(at(end)),
        granularity: granularity.into(),
    })
}
