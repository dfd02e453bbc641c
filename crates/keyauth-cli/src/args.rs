//! The CLI's arguments: connection settings shared by every subcommand, `keys …` and
//! `verify`, and the parsing of permissions, metadata and times.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use keyauth_proto as pb;

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

    /// PEM file of the CA certificate(s) that signed the server's certificate (https only).
    /// Unset: the system's root certificates are trusted.
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
    pub(crate) fn is_https(&self) -> bool {
        self.server
            .trim()
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }
}

/// The caller's credential, on every command that calls the server: a principal's token (a
/// static token of the principals file, or a JWT), in place of the command's own token flag.
#[derive(Clone, Default, Args)]
pub struct TokenArgs {
    /// The caller's token (a principal's static token, or a JWT), sent as `authorization:
    /// Bearer …`; takes the place of --admin-token / --verifier-token.
    #[arg(long, env = "KEYAUTH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// A file holding the caller's token (its first line), e.g. a Kubernetes projected
    /// service-account token; read at each command. Takes the place of --token.
    #[arg(long, env = "KEYAUTH_TOKEN_FILE", global = true, value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenArgs")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// `keyauth whoami`: who the server says the caller is.
#[derive(Clone, Args)]
pub struct WhoamiArgs {
    #[command(flatten)]
    pub connection: Connection,

    #[command(flatten)]
    pub credential: TokenArgs,

    /// The operator token, when no --token is given.
    #[arg(long, env = "KEYAUTH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl fmt::Debug for WhoamiArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhoamiArgs")
            .field("connection", &self.connection)
            .field("credential", &self.credential)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `keyauth keys …`: the operator RPCs.
#[derive(Clone, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub connection: Connection,

    #[command(flatten)]
    pub credential: TokenArgs,

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
            .field("credential", &self.credential)
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
    /// Show how a key (or an application's keys) was verified: valid and each denial, per
    /// UTC hour or day.
    Usage(UsageArgs),
}

/// `keys usage KEY_ID` or `keys usage --app APP`.
#[derive(Clone, Debug, Args)]
#[command(group(ArgGroup::new("whose").required(true).args(["key_id", "application"])))]
pub struct UsageArgs {
    /// The key (`key_…`).
    pub key_id: Option<String>,

    /// An application's keys, summed.
    #[arg(long = "app", value_name = "APP")]
    pub application: Option<String>,

    /// Buckets of an hour or of a day (UTC).
    #[arg(long, value_enum, default_value = "day")]
    pub by: Bucket,

    /// How far back: unset, the last 24 hours by the hour, the last 30 days by the day.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub last: Option<Duration>,
}

/// A bucket of `keys usage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Bucket {
    Hour,
    Day,
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
    pub(crate) fn pb(self) -> pb::Environment {
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
pub(crate) fn permissions_out(args: &[PermissionArg]) -> Vec<pb::Permission> {
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

pub(crate) fn parse_rfc3339(s: &str) -> Result<prost_types::Timestamp, String> {
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

    /// When the new key stops working, RFC 3339. Unset: when the old key would have (never,
    /// if it had no expiry).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub expires: Option<prost_types::Timestamp>,
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

    /// Only keys in this state (repeatable; at the time of the call).
    #[arg(long = "state", value_enum)]
    pub states: Vec<State>,

    /// Only keys not used for this long (`90d`), never-used keys included: stale keys.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub unused_for: Option<Duration>,

    #[command(flatten)]
    pub page: PageArgs,
}

/// A key's state, as `--state` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum State {
    Active,
    Expired,
    Revoked,
}

impl State {
    pub(crate) fn pb(self) -> pb::KeyState {
        match self {
            State::Active => pb::KeyState::Active,
            State::Expired => pb::KeyState::Expired,
            State::Revoked => pb::KeyState::Revoked,
        }
    }
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

/// An audit event type, as `--type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum EventType {
    Issued,
    Rolled,
    Revoked,
    Updated,
    Exposed,
    OperatorAuthFailed,
    PermissionDenied,
    Expiring,
}

impl EventType {
    pub fn pb(self) -> pb::KeyEventType {
        match self {
            EventType::Issued => pb::KeyEventType::Issued,
            EventType::Rolled => pb::KeyEventType::Rolled,
            EventType::Revoked => pb::KeyEventType::Revoked,
            EventType::Updated => pb::KeyEventType::Updated,
            EventType::Exposed => pb::KeyEventType::Exposed,
            EventType::OperatorAuthFailed => pb::KeyEventType::OperatorAuthFailed,
            EventType::PermissionDenied => pb::KeyEventType::PermissionDenied,
            EventType::Expiring => pb::KeyEventType::Expiring,
        }
    }
}

/// Neither --key nor --app: every event of the authority.
#[derive(Clone, Debug, Args)]
#[command(group(ArgGroup::new("filter").required(false).args(["key_id", "application"])))]
pub struct EventsArgs {
    /// Events of this key (`key_…`), including a roll that replaced it or that it came from.
    #[arg(long = "key", value_name = "KEY_ID")]
    pub key_id: Option<String>,

    /// Events of this application's keys.
    #[arg(long = "app", value_name = "APP")]
    pub application: Option<String>,

    /// Only events of this type (repeatable).
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub types: Vec<EventType>,

    /// Only events at or after this time, RFC 3339.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub since: Option<prost_types::Timestamp>,

    /// Only events before this time, RFC 3339.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub until: Option<prost_types::Timestamp>,

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

    #[command(flatten)]
    pub credential: TokenArgs,
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
            .field("credential", &self.credential)
            .finish()
    }
}

/// Parses a duration as humantime writes them (`10s`, `500ms`, `2m`), or a bare number of
/// seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like 10s, 500ms or 2m ({e})")),
    }
}
