//! The operator CLI: `keyauth keys issue|roll|revoke|get|list|events` and `keyauth verify`, a
//! gRPC client of a running server (the generated `KeyAuthorityServiceClient`), over plaintext
//! (`http://`) or TLS (`https://`, trusting `--ca-cert`, optionally presenting a client
//! certificate for mTLS).
//!
//! Output is an aligned table by default and one JSON object with `--json`. The exit code is
//! what a script relies on: 0 success (or a valid key), 1 a refusal (the key is not valid, or
//! the server refused the request: NOT_FOUND, FAILED_PRECONDITION, UNAUTHENTICATED,
//! INVALID_ARGUMENT, …), 2 a usage error (bad arguments, found before any call), 3 no answer
//! (the server is unreachable, or answered UNAVAILABLE, DEADLINE_EXCEEDED or another status
//! that means the answer is not known).
//!
//! Unlike the server side, this module names `pb` types directly: it is a client of the wire
//! contract, not part of the domain.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use crate::error::code_name;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::parse_duration;
use crate::pb;
use crate::pb::key_authority_service_client::KeyAuthorityServiceClient;
use crate::tls;

/// Success, or a valid key.
pub const EXIT_OK: u8 = 0;
/// A refusal: the key is not valid, or the server refused the request.
pub const EXIT_DENIED: u8 = 1;
/// Bad arguments, detected before any call (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// No answer: the server is unreachable or could not answer.
pub const EXIT_UNREACHABLE: u8 = 3;

// ---------------------------------------------------------------------------------------------
// Arguments.

/// Where and how to call the server; shared by every client subcommand.
#[derive(Clone, Debug, Args)]
pub struct Connection {
    /// Server to call: `http://HOST:PORT` (plaintext gRPC) or `https://HOST:PORT` (TLS, which
    /// needs --ca-cert).
    #[arg(
        long,
        env = "KEYAUTH_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,

    /// PEM file of the CA certificate(s) that signed the server's certificate (https only;
    /// required for https: this build trusts no system or public roots).
    #[arg(long, env = "KEYAUTH_CA_CERT", value_name = "PEM", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// PEM file of this client's certificate (chain), for a server that requires client
    /// certificates (mTLS); goes with --client-key.
    #[arg(long, env = "KEYAUTH_CLIENT_CERT", value_name = "PEM", global = true)]
    pub client_cert: Option<PathBuf>,

    /// PEM file of the private key of --client-cert.
    #[arg(long, env = "KEYAUTH_CLIENT_KEY", value_name = "PEM", global = true)]
    pub client_key: Option<PathBuf>,

    /// Longest wait for the connection and for each call (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    /// Whether --server names a TLS server (`https://`).
    fn is_https(&self) -> bool {
        self.server
            .trim()
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }
}

/// `keyauth keys …`: the operator RPCs.
#[derive(Clone, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// Operator token (the server's KEYAUTH_ADMIN_TOKEN), sent as `authorization: Bearer …`.
    #[arg(
        long,
        env = "KEYAUTH_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,

    #[command(subcommand)]
    pub command: KeysCommand,
}

impl fmt::Debug for KeysArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeysArgs")
            .field("connection", &self.connection)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("command", &self.command)
            .finish()
    }
}

#[derive(Clone, Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a new key; prints the full key, shown this once.
    Issue(IssueArgs),
    /// Replace a key with a new one; the old one keeps working for the grace period.
    Roll(RollArgs),
    /// Revoke a key: it stops working at once.
    Revoke(RevokeArgs),
    /// Show one key (never its secret).
    Get(GetArgs),
    /// List an application's keys, newest first.
    List(ListArgs),
    /// Show the audit trail of a key or of an application, newest first.
    Events(EventsArgs),
}

/// Environment of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Env {
    /// Sandbox (`sk_test_…`).
    Test,
    /// Production (`sk_live_…`).
    Live,
}

impl Env {
    fn pb(self) -> pb::Environment {
        match self {
            Env::Test => pb::Environment::Test,
            Env::Live => pb::Environment::Live,
        }
    }
}

/// `RESOURCE:ACTION[,ACTION…]`, e.g. `patients:read,write`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionArg {
    pub resource: String,
    pub actions: Vec<String>,
}

impl FromStr for PermissionArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not RESOURCE:ACTION[,ACTION…], e.g. patients:read,write");
        let (resource, actions) = s.split_once(':').ok_or_else(bad)?;
        let resource = resource.trim();
        let actions: Vec<String> = actions.split(',').map(|a| a.trim().to_owned()).collect();
        let well_formed = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !well_formed(resource) || !actions.iter().all(|a| well_formed(a)) {
            return Err(bad());
        }
        Ok(PermissionArg {
            resource: resource.to_owned(),
            actions,
        })
    }
}

/// Merges repeated `--permission` flags into one `Permission` per resource (first-seen order).
fn permissions_out(args: &[PermissionArg]) -> Vec<pb::Permission> {
    let mut out: Vec<pb::Permission> = Vec::new();
    for arg in args {
        let index = match out.iter().position(|p| p.resource == arg.resource) {
            Some(i) => i,
            None => {
                out.push(pb::Permission {
                    resource: arg.resource.clone(),
                    actions: Vec::new(),
                });
                out.len() - 1
            }
        };
        for action in &arg.actions {
            if !out[index].actions.contains(action) {
                out[index].actions.push(action.clone());
            }
        }
    }
    out
}

/// `KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataArg {
    pub key: String,
    pub value: String,
}

impl FromStr for MetadataArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(MetadataArg {
                key: key.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!("{s:?} is not KEY=VALUE, e.g. team=analytics")),
        }
    }
}

fn parse_rfc3339(s: &str) -> Result<prost_types::Timestamp, String> {
    prost_types::Timestamp::from_str(s.trim())
        .map_err(|_| format!("{s:?} is not an RFC 3339 time like 2027-12-31T00:00:00Z"))
}

#[derive(Clone, Debug, Args)]
pub struct IssueArgs {
    /// Application the key is for.
    #[arg(long = "app", value_name = "APP")]
    pub application: String,

    /// Environment the key works in.
    #[arg(long, value_enum)]
    pub env: Env,

    /// Human name of the key.
    #[arg(long)]
    pub name: String,

    /// A permission of a restricted key, RESOURCE:ACTION[,ACTION…] (repeatable). None: a
    /// standard key with every permission.
    #[arg(long = "permission", value_name = "RESOURCE:ACTIONS")]
    pub permissions: Vec<PermissionArg>,

    /// When the key stops working, RFC 3339 (e.g. 2027-12-31T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub expires: Option<prost_types::Timestamp>,

    /// Metadata entry KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<MetadataArg>,
}

#[derive(Clone, Debug, Args)]
pub struct RollArgs {
    /// Id of the key to replace (`key_…`).
    pub key_id: String,

    /// How long the old key keeps working (e.g. 24h, 30m, 0s to stop it now; at most 7 days).
    /// Unset: the server's default, 24 hours.
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
}

#[derive(Clone, Debug, Args)]
pub struct RevokeArgs {
    /// Id of the key to revoke (`key_…`).
    pub key_id: String,

    /// Why, kept with the key.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct GetArgs {
    /// Id of the key (`key_…`).
    pub key_id: String,
}

#[derive(Clone, Debug, Args)]
pub struct ListArgs {
    /// Application whose keys to list.
    #[arg(long = "app", value_name = "APP")]
    pub application: String,

    /// Only keys of this environment.
    #[arg(long, value_enum)]
    pub env: Option<Env>,

    #[command(flatten)]
    pub page: PageArgs,
}

/// Paging of a listing.
#[derive(Clone, Debug, Args)]
pub struct PageArgs {
    /// Entries per page (server default 50).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: Option<i32>,

    /// Continue from the `next_page_token` of a previous page.
    #[arg(long)]
    pub page_token: Option<String>,

    /// Follow every page to the end.
    #[arg(long)]
    pub all: bool,
}

#[derive(Clone, Debug, Args)]
#[command(group(ArgGroup::new("filter").required(true).args(["key_id", "application"])))]
pub struct EventsArgs {
    /// Events of this key (`key_…`), including a roll that replaced it or that it came from.
    #[arg(long = "key", value_name = "KEY_ID")]
    pub key_id: Option<String>,

    /// Events of this application's keys.
    #[arg(long = "app", value_name = "APP")]
    pub application: Option<String>,

    #[command(flatten)]
    pub page: PageArgs,
}

/// `keyauth verify KEY`: is this key valid (and does it hold these permissions)?
#[derive(Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// The key (`sk_…`, or a whole `Bearer sk_…` header value); `-` reads it from the first
    /// line of stdin, which keeps it out of the process list and shell history.
    pub key: String,

    /// A permission the key must hold, RESOURCE:ACTION[,ACTION…] (repeatable).
    #[arg(long = "permission", value_name = "RESOURCE:ACTIONS")]
    pub permissions: Vec<PermissionArg>,

    /// Verifier token (the server's KEYAUTH_VERIFIER_TOKEN), sent as `authorization: Bearer …`;
    /// needed when the server is started with one.
    #[arg(long, env = "KEYAUTH_VERIFIER_TOKEN", hide_env_values = true)]
    pub verifier_token: Option<String>,
}

impl fmt::Debug for VerifyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyArgs")
            .field("connection", &self.connection)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("permissions", &self.permissions)
            .field(
                "verifier_token",
                &self.verifier_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Failures and their exit codes.

/// Why a command did not succeed; decides the exit code and the message on stderr.
enum Failure {
    /// Bad input found locally: exit 2.
    Usage(String),
    /// No connection: exit 3.
    Unreachable(String),
    /// The server answered with an error status: 1 or 3 by code.
    Status(Status),
}

impl Failure {
    fn report(&self, connection: &Connection) -> ExitCode {
        match self {
            Failure::Usage(message) => {
                eprintln!("keyauth: {message}");
                ExitCode::from(EXIT_USAGE)
            }
            Failure::Unreachable(message) => {
                eprintln!("keyauth: UNAVAILABLE: {message}");
                ExitCode::from(EXIT_UNREACHABLE)
            }
            Failure::Status(status) => {
                let mut line = format!(
                    "keyauth: {}: {}",
                    code_name(status.code()),
                    status.message()
                );
                if let Some(reason) = reason_of(status) {
                    line.push_str(&format!(" (reason {reason})"));
                }
                // A failure of this side's transport (e.g. a TLS alert) keeps its causes.
                line = with_causes(line, std::error::Error::source(status));
                if let Some(id) = status
                    .metadata()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                {
                    line.push_str(&format!(" [request id {id}]"));
                }
                eprintln!("{line}");
                // A server requiring client certificates refuses one without after the
                // handshake (TLS 1.3): the call fails with a transport error of this side.
                let local = std::error::Error::source(status).is_some();
                if local && connection.is_https() && connection.client_cert.is_none() {
                    eprintln!(
                        "keyauth: if the server requires client certificates (mTLS), pass --client-cert and --client-key"
                    );
                }
                if reason_of(status).as_deref() == Some("VERIFIER_UNAUTHENTICATED") {
                    eprintln!(
                        "keyauth: this server requires the verifier token: pass --verifier-token or set KEYAUTH_VERIFIER_TOKEN"
                    );
                }
                ExitCode::from(exit_code_of(status.code()))
            }
        }
    }
}

/// The `ErrorInfo` reason of a status, if it has one.
fn reason_of(status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

/// `message` followed by each error of the chain from `first` (layers often repeat their
/// cause's text: each piece is shown once).
fn with_causes(mut message: String, first: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut source = first;
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

/// 1 for a refusal (the server decided), 3 when the answer is not known.
pub fn exit_code_of(code: Code) -> u8 {
    match code {
        Code::Ok => EXIT_OK,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unauthenticated
        | Code::Unimplemented => EXIT_DENIED,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::DataLoss => EXIT_UNREACHABLE,
    }
}

// ---------------------------------------------------------------------------------------------
// Running the commands.

type Client = KeyAuthorityServiceClient<Channel>;

/// Connects eagerly, so that an unreachable server (or a failed TLS handshake) is exit 3 before
/// any request is sent. Bad settings (the URL, a TLS file) are exit 2 before any connection.
async fn connect(connection: &Connection) -> Result<Client, Failure> {
    let server = connection.server.trim();
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let invalid = |why: &dyn fmt::Display| {
        Failure::Usage(format!(
            "invalid --server (KEYAUTH_SERVER) {server:?}: {why}"
        ))
    };
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(invalid(
            &"use http://HOST:PORT (plaintext) or https://HOST:PORT (TLS)",
        ));
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| invalid(&e))?
        .connect_timeout(connection.timeout)
        .timeout(connection.timeout);
    if https {
        endpoint = endpoint.tls_config(client_tls(connection)?).map_err(|e| {
            let what = if connection.client_cert.is_some() {
                format!(
                    "invalid {} with {}",
                    tls::CLIENT_CERT_SETTING,
                    tls::CLIENT_KEY_SETTING
                )
            } else {
                format!("cannot use these TLS settings for {server}")
            };
            Failure::Usage(with_causes(
                format!("{what}: {e}"),
                std::error::Error::source(&e),
            ))
        })?;
    } else if connection.ca_cert.is_some()
        || connection.client_cert.is_some()
        || connection.client_key.is_some()
    {
        return Err(Failure::Usage(format!(
            "--ca-cert, --client-cert and --client-key are for TLS, but --server (KEYAUTH_SERVER) {server:?} is plaintext: use https://"
        )));
    }
    let channel = endpoint.connect().await.map_err(|e| {
        Failure::Unreachable(with_causes(
            format!("cannot connect to {server}: {e}"),
            std::error::Error::source(&e),
        ))
    })?;
    Ok(KeyAuthorityServiceClient::new(channel))
}

/// The TLS settings of an `https://` server: the CA to trust, and the client certificate.
fn client_tls(connection: &Connection) -> Result<tonic::transport::ClientTlsConfig, Failure> {
    // tonic's `tls-native-roots` and `tls-webpki-roots` features are off: without a CA
    // certificate nothing would be trusted, and every handshake would fail.
    let Some(ca) = &connection.ca_cert else {
        return Err(Failure::Usage(format!(
            "an https:// server needs {}: the PEM file of the CA that signed its certificate (this build trusts no system or public root certificates)",
            tls::CA_CERT_SETTING
        )));
    };
    let identity = match (&connection.client_cert, &connection.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Failure::Usage(format!(
                "{} is set but {} is not",
                tls::CLIENT_CERT_SETTING,
                tls::CLIENT_KEY_SETTING
            )));
        }
        (None, Some(_)) => {
            return Err(Failure::Usage(format!(
                "{} is set but {} is not",
                tls::CLIENT_KEY_SETTING,
                tls::CLIENT_CERT_SETTING
            )));
        }
    };
    let config = tls::client_config(ca, identity).map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(config.timeout(connection.timeout))
}

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
struct Output {
    stdout: String,
    notes: Vec<String>,
}

fn emit(output: &Output) {
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(output.stdout.as_bytes());
    let _ = stdout.flush();
    for note in &output.notes {
        eprintln!("keyauth: {note}");
    }
}

fn json_output(value: Value) -> Output {
    let mut stdout = serde_json::to_string_pretty(&value).unwrap_or_default();
    stdout.push('\n');
    Output {
        stdout,
        notes: Vec::new(),
    }
}

/// `Ok(token)` to fetch the page after (with `--all`), `Err(token)` when done: the token of
/// the next page, empty on the last.
fn next_page(all: bool, token: String) -> Result<String, String> {
    if all && !token.is_empty() {
        Ok(token)
    } else {
        Err(token)
    }
}

/// The output of a listing (`keys list`, `keys events`): JSON `{what: rows, next_page_token}`,
/// or the table with a note on how to get the next page.
fn listing(json: bool, what: &str, rows: Vec<Value>, next: &str, table: String) -> Output {
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

/// A request carrying the operator token, and a request id of its own (`cli-…`) so that the
/// audit trail can be matched with this run.
fn operator<T>(token: &MetadataValue<tonic::metadata::Ascii>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    if let Ok(id) = format!("cli-{}", crate::key::unique_base62(16)).parse() {
        request.metadata_mut().insert("x-request-id", id);
    }
    request
}

const SECRET_NOTE: &str =
    "the full key above is shown this once: keyauth keeps only a hash of it. Store it now.";

async fn run_keys(args: &KeysArgs) -> Result<Output, Failure> {
    let token = match args.admin_token.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => t,
        _ => {
            return Err(Failure::Usage(
                "operator commands need the operator token: pass --admin-token or set KEYAUTH_ADMIN_TOKEN"
                    .into(),
            ));
        }
    };
    let token: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
        Failure::Usage("--admin-token (KEYAUTH_ADMIN_TOKEN) must be printable ASCII".into())
    })?;
    // Local checks first: a usage error never needs the server.
    let request = prepare(&args.command)?;
    let json = args.connection.json;
    let mut client = connect(&args.connection).await?;
    match request {
        Prepared::Issue(req) => {
            let res = client.issue_key(operator(&token, req)).await?.into_inner();
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
            let res = client.roll_key(operator(&token, req)).await?.into_inner();
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
            let res = client.revoke_key(operator(&token, req)).await?.into_inner();
            Ok(single_key(json, &res.key.unwrap_or_default()))
        }
        Prepared::Get(req) => {
            let res = client.get_key(operator(&token, req)).await?.into_inner();
            Ok(single_key(json, &res.key.unwrap_or_default()))
        }
        Prepared::List { mut request, all } => {
            let mut pages = Vec::new();
            loop {
                let res = client
                    .list_keys(operator(&token, request.clone()))
                    .await?
                    .into_inner();
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
        Prepared::Events { mut request, all } => {
            let mut pages = Vec::new();
            loop {
                let res = client
                    .list_key_events(operator(&token, request.clone()))
                    .await?
                    .into_inner();
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
enum Prepared {
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
}

fn prepare(command: &KeysCommand) -> Result<Prepared, Failure> {
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
            },
            all: a.page.all,
        },
        KeysCommand::Events(a) => Prepared::Events {
            request: pb::ListKeyEventsRequest {
                key_id: a.key_id.clone().unwrap_or_default(),
                application_id: a.application.clone().unwrap_or_default(),
                page_size: a.page.page_size.unwrap_or(0),
                page_token: a.page.page_token.clone().unwrap_or_default(),
            },
            all: a.page.all,
        },
    })
}

fn single_key(json: bool, key: &pb::ApiKey) -> Output {
    if json {
        return json_output(json!({ "key": key_json(key) }));
    }
    Output {
        stdout: render_pairs(&key_rows(key)),
        notes: Vec::new(),
    }
}

async fn run_verify(args: &VerifyArgs) -> Result<(Output, bool), Failure> {
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
    let mut request = Request::new(pb::VerifyRequest {
        key,
        required_permissions: permissions_out(&args.permissions),
    });
    match args.verifier_token.as_deref().map(str::trim) {
        Some(token) if !token.is_empty() => {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
                Failure::Usage(
                    "--verifier-token (KEYAUTH_VERIFIER_TOKEN) must be printable ASCII".into(),
                )
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        _ => {}
    }
    let mut client = connect(&args.connection).await?;
    let res = client.verify(request).await?.into_inner();
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

// ---------------------------------------------------------------------------------------------
// Rendering.

fn env_name(value: i32) -> &'static str {
    match pb::Environment::try_from(value) {
        Ok(pb::Environment::Test) => "test",
        Ok(pb::Environment::Live) => "live",
        _ => "unspecified",
    }
}

fn state_name(value: i32) -> &'static str {
    match pb::KeyState::try_from(value) {
        Ok(pb::KeyState::Active) => "active",
        Ok(pb::KeyState::Expired) => "expired",
        Ok(pb::KeyState::Revoked) => "revoked",
        _ => "unspecified",
    }
}

fn event_type_name(value: i32) -> &'static str {
    match pb::KeyEventType::try_from(value) {
        Ok(pb::KeyEventType::Issued) => "issued",
        Ok(pb::KeyEventType::Rolled) => "rolled",
        Ok(pb::KeyEventType::Revoked) => "revoked",
        Ok(pb::KeyEventType::OperatorAuthFailed) => "operator_auth_failed",
        _ => "unspecified",
    }
}

/// An empty proto string (unset) as JSON null.
fn empty_as_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// An empty proto string as `-`, for tables.
fn text_or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        printable(s)
    }
}

/// RFC 3339 with the server's precision, for JSON.
fn time_json(t: Option<&prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// RFC 3339 to the second, or `-`, for tables.
fn time_or_dash(t: Option<&prost_types::Timestamp>) -> String {
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

fn permission_text(p: &pb::Permission) -> String {
    format!("{}:{}", p.resource, p.actions.join(","))
}

fn sorted_metadata(key: &pb::ApiKey) -> Vec<(&String, &String)> {
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
    })
}

/// One key as `field  value` rows.
fn key_rows(key: &pb::ApiKey) -> Vec<(String, String)> {
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

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Control characters (a name or metadata value can hold none, but be safe) shown escaped, so
/// a value cannot move the cursor or break the alignment.
fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.to_owned()
    }
}

fn render_pairs(rows: &[(String, String)]) -> String {
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

fn render_key_table(keys: &[pb::ApiKey]) -> String {
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

fn render_event_table(events: &[pb::KeyEvent]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_and_merge() {
        let a: PermissionArg = "patients:read,write".parse().unwrap();
        assert_eq!(a.resource, "patients");
        assert_eq!(a.actions, ["read", "write"]);
        for bad in [
            "patients",
            ":read",
            "patients:",
            "patients:read,",
            "pa tients:read",
        ] {
            assert!(bad.parse::<PermissionArg>().is_err(), "{bad}");
        }
        let merged = permissions_out(&[
            "patients:read".parse().unwrap(),
            "encounters:read".parse().unwrap(),
            "patients:write,read".parse().unwrap(),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].actions, ["read", "write"]);
    }

    #[test]
    fn metadata_and_times_parse() {
        let m: MetadataArg = "team=a=b".parse().unwrap();
        assert_eq!((m.key.as_str(), m.value.as_str()), ("team", "a=b"));
        assert!("=x".parse::<MetadataArg>().is_err());
        assert!("novalue".parse::<MetadataArg>().is_err());
        let t = parse_rfc3339("2027-12-31T00:00:00Z").unwrap();
        assert_eq!(t.seconds, 1_830_211_200);
        assert_eq!(time_or_dash(Some(&t)), "2027-12-31T00:00:00Z");
        assert!(parse_rfc3339("tomorrow").is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code_of(Code::NotFound), EXIT_DENIED);
        assert_eq!(exit_code_of(Code::Unauthenticated), EXIT_DENIED);
        assert_eq!(exit_code_of(Code::Unavailable), EXIT_UNREACHABLE);
        assert_eq!(exit_code_of(Code::DeadlineExceeded), EXIT_UNREACHABLE);
    }

    #[test]
    fn tables_align() {
        let out = render_table(
            &["ID", "NAME"],
            &[
                vec!["key_1".into(), "a".into()],
                vec!["k".into(), "bb".into()],
            ],
        );
        assert_eq!(out, "ID     NAME\nkey_1  a\nk      bb\n");
    }

    #[test]
    fn debug_redacts_secrets() {
        use clap::Parser;
        let cli =
            crate::config::Cli::try_parse_from(["keyauth", "verify", "sk_test_secretsecretsecret"])
                .unwrap();
        assert!(!format!("{cli:?}").contains("secretsecret"));
        let cli = crate::config::Cli::try_parse_from([
            "keyauth",
            "keys",
            "--admin-token",
            "tok3n-value",
            "get",
            "key_1",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("tok3n-value"));
        let cli = crate::config::Cli::try_parse_from([
            "keyauth",
            "verify",
            "sk_test_x",
            "--verifier-token",
            "v3rifier-value",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("v3rifier-value"));
    }

    #[test]
    fn events_take_exactly_one_filter() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            crate::config::Cli::try_parse_from(
                ["keyauth", "keys", "events"].iter().chain(args).copied(),
            )
        };
        assert!(parse(&["--key", "key_1"]).is_ok());
        assert!(parse(&["--app", "app_1", "--all"]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--key", "key_1", "--app", "app_1"]).is_err());
    }

    #[test]
    fn events_render() {
        let event = pb::KeyEvent {
            sequence: 7,
            r#type: pb::KeyEventType::Rolled.into(),
            key_id: "key_old".into(),
            related_key_id: "key_new".into(),
            application_id: "app_1".into(),
            operator_id: "op_0123456789ab".into(),
            peer: String::new(),
            request_id: "req-1".into(),
            event_time: Some(prost_types::Timestamp {
                seconds: 1_830_211_200,
                nanos: 5,
            }),
        };
        let table = render_event_table(std::slice::from_ref(&event));
        let row = table.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "7",
                "2027-12-31T00:00:00Z",
                "rolled",
                "key_old",
                "key_new",
                "op_0123456789ab",
                "-",
                "req-1"
            ]
        );
        let json = event_json(&event);
        assert_eq!(json["type"], "rolled");
        assert_eq!(json["peer"], Value::Null);
        assert_eq!(json["related_key_id"], "key_new");
    }
}
