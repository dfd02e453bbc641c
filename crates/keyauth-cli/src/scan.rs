//! `keyauth scan PATH…`: finds keyauth keys in files, offline, e.g. before a commit.
//!
//! Directories are walked (`.git` skipped, symbolic links not followed); a file with a NUL byte
//! in its first 8 KiB is binary and skipped. Every `sk_test_`/`sk_live_` followed by base62 is a
//! candidate; it is a key only when `PresentedKey::parse` accepts it (length and checksum), so
//! documentation placeholders and other services' tokens are not reported. A key is printed as
//! `path:line: <redaction> (<environment>)`, never in full. Exit 1 when a key was found, 0 when
//! none, 2 on a usage error. With `--report`, the keys found are sent to ReportExposedKeys,
//! which revokes the ones the server issued.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use keyauth_contract::PresentedKey;
use keyauth_proto as pb;
use serde_json::json;

use crate::args::Connection;
use crate::commands::{Output, connect, emit, json_output, operator, operator_token};
use crate::exit::{EXIT_DENIED, EXIT_OK, Failure};

/// Bytes looked at to tell a binary file (a NUL among them).
const SNIFF_BYTES: usize = 8 * 1024;
const PREFIXES: [&[u8]; 2] = [b"sk_test_", b"sk_live_"];

/// `keyauth scan PATH…`.
#[derive(Clone, Args)]
pub struct ScanArgs {
    /// Files and directories to scan (directories recursively, `.git` skipped).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Also count strings that start like a key but are not one (wrong length or checksum).
    #[arg(long)]
    pub verbose: bool,

    /// Send the keys found to the server (ReportExposedKeys): the ones it issued are revoked.
    /// Needs the operator token.
    #[arg(long)]
    pub report: bool,

    /// With --report: who found the keys, kept in the audit trail.
    #[arg(long, default_value = "keyauth-scan", requires = "report")]
    pub source: String,

    #[command(flatten)]
    pub connection: Connection,

    /// Operator token (the server's KEYAUTH_ADMIN_TOKEN), for --report.
    #[arg(long, env = "KEYAUTH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl fmt::Debug for ScanArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanArgs")
            .field("paths", &self.paths)
            .field("verbose", &self.verbose)
            .field("report", &self.report)
            .field("source", &self.source)
            .field("connection", &self.connection)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A key found in a file.
struct Found {
    path: PathBuf,
    line: usize,
    key: PresentedKey,
    /// With --report: what the server did.
    outcome: Option<&'static str>,
}

/// What a scan saw.
#[derive(Default)]
struct Scan {
    found: Vec<Found>,
    files: usize,
    binary: usize,
    /// Candidates that are not keys (wrong length or checksum).
    near_misses: usize,
    /// Files that could not be read, with why.
    unreadable: Vec<String>,
}

/// Runs `keyauth scan`: 1 when keys were found, 0 when none.
pub async fn scan(args: ScanArgs) -> ExitCode {
    match run(&args).await {
        Ok((output, found)) => {
            emit(&output);
            ExitCode::from(if found { EXIT_DENIED } else { EXIT_OK })
        }
        Err(failure) => failure.report(&args.connection),
    }
}

async fn run(args: &ScanArgs) -> Result<(Output, bool), Failure> {
    for path in &args.paths {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(Failure::Usage(format!(
                "scan: {}: no such file or directory",
                path.display()
            )));
        }
    }
    let token = if args.report {
        Some(operator_token(
            args.admin_token.as_deref(),
            "scan reports (--report)",
        )?)
    } else {
        None
    };
    let mut scan = Scan::default();
    for path in &args.paths {
        walk(path, &mut scan);
    }
    if let Some(token) = token {
        report(args, token, &mut scan.found).await?;
    }
    let found = !scan.found.is_empty();
    Ok((render(args, &scan), found))
}

/// Scans `path`: a file, or a directory recursively. Symbolic links are not followed.
fn walk(path: &Path, scan: &mut Scan) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        scan.unreadable
            .push(format!("{}: vanished", path.display()));
        return;
    };
    if meta.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => {
                scan.unreadable.push(format!("{}: {e}", path.display()));
                return;
            }
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != ".git")
            .map(|e| e.path())
            .collect();
        children.sort();
        for child in children {
            walk(&child, scan);
        }
    } else if meta.is_file() {
        scan_file(path, scan);
    }
}

fn scan_file(path: &Path, scan: &mut Scan) {
    let mut bytes = Vec::new();
    if let Err(e) = std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        scan.unreadable.push(format!("{}: {e}", path.display()));
        return;
    }
    if bytes[..bytes.len().min(SNIFF_BYTES)].contains(&0) {
        scan.binary += 1;
        return;
    }
    scan.files += 1;
    let mut line = 1;
    let mut counted_to = 0;
    let mut at = 0;
    while at < bytes.len() {
        if !PREFIXES.iter().any(|p| bytes[at..].starts_with(p)) {
            at += 1;
            continue;
        }
        let end = at
            + 8
            + bytes[at + 8..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
        // Only ASCII was taken: the slice is text.
        let candidate = std::str::from_utf8(&bytes[at..end]).unwrap_or_default();
        match PresentedKey::parse(candidate) {
            Some(key) => {
                line += bytes[counted_to..at]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                counted_to = at;
                scan.found.push(Found {
                    path: path.to_owned(),
                    line,
                    key,
                    outcome: None,
                });
            }
            None => scan.near_misses += 1,
        }
        at = end;
    }
}

/// Sends the keys found to ReportExposedKeys, one call per file (its path as the URL), and
/// notes each key's outcome.
async fn report(args: &ScanArgs, token: &str, found: &mut [Found]) -> Result<(), Failure> {
    if found.is_empty() {
        return Ok(());
    }
    let client = connect(&args.connection, |b| b.operator_token(token)).await?;
    let mut start = 0;
    while start < found.len() {
        let path = found[start].path.clone();
        let end = start
            + found[start..]
                .iter()
                .take(1000)
                .take_while(|f| f.path == path)
                .count();
        let url = match std::fs::canonicalize(&path) {
            Ok(full) => format!("file://{}", full.display()),
            Err(_) => path.display().to_string(),
        };
        let request = pb::ReportExposedKeysRequest {
            keys: found[start..end]
                .iter()
                .map(|f| f.key.expose().to_owned())
                .collect(),
            source: args.source.clone(),
            url,
        };
        let answer = operator(&client).report_exposed_keys(request).await?;
        for (f, result) in found[start..end].iter_mut().zip(&answer.results) {
            f.outcome = Some(outcome_name(result.outcome));
        }
        start = end;
    }
    Ok(())
}

fn outcome_name(value: i32) -> &'static str {
    match pb::ExposureOutcome::try_from(value) {
        Ok(pb::ExposureOutcome::Revoked) => "revoked",
        Ok(pb::ExposureOutcome::AlreadyRevoked) => "already revoked",
        Ok(pb::ExposureOutcome::NotAKey) => "not a key",
        Ok(pb::ExposureOutcome::Unknown) => "not issued by this server",
        _ => "unspecified",
    }
}

fn render(args: &ScanArgs, scan: &Scan) -> Output {
    if args.connection.json {
        let found: Vec<_> = scan
            .found
            .iter()
            .map(|f| {
                json!({
                    "path": f.path.display().to_string(),
                    "line": f.line,
                    "key": f.key.redacted(),
                    "environment": f.key.environment().as_str(),
                    "outcome": f.outcome,
                })
            })
            .collect();
        return json_output(json!({
            "found": found,
            "files_scanned": scan.files,
            "binary_files_skipped": scan.binary,
            "near_misses": scan.near_misses,
            "unreadable": scan.unreadable,
        }));
    }
    let mut stdout = String::new();
    for f in &scan.found {
        stdout.push_str(&format!(
            "{}:{}: {} ({})",
            f.path.display(),
            f.line,
            f.key.redacted(),
            f.key.environment().as_str()
        ));
        if let Some(outcome) = f.outcome {
            stdout.push_str(&format!(": {outcome}"));
        }
        stdout.push('\n');
    }
    let mut notes: Vec<String> = scan
        .unreadable
        .iter()
        .map(|u| format!("cannot read {u}"))
        .collect();
    notes.push(format!(
        "{} key(s) found in {} file(s) scanned ({} binary file(s) skipped)",
        scan.found.len(),
        scan.files,
        scan.binary
    ));
    if args.verbose {
        notes.push(format!(
            "{} string(s) start like a key but are not one (wrong length or checksum)",
            scan.near_misses
        ));
    }
    if !scan.found.is_empty() && !args.report {
        notes.push(
            "a key in a file is a leaked key: roll or revoke it (keyauth keys roll|revoke), or \
             pass --report to have the server revoke it now"
                .into(),
        );
    }
    Output { stdout, notes }
}
