//! `keyauth whoami`: who the server says the caller is (GetPrincipal): the principal its
//! token names, with its roles and the applications and environments its operator roles
//! reach. Exit 0, or 1 when the server refuses the credential.

use std::process::ExitCode;

use keyauth_proto as pb;
use serde_json::json;

use crate::args::WhoamiArgs;
use crate::commands::{Output, caller_token, connect, emit, json_output};
use crate::exit::{EXIT_OK, Failure};
use crate::render::render_table;

/// Runs `keyauth whoami`.
pub async fn whoami(args: WhoamiArgs) -> ExitCode {
    match run(&args).await {
        Ok(output) => {
            emit(&output);
            ExitCode::from(EXIT_OK)
        }
        Err(failure) => failure.report(&args.connection),
    }
}

async fn run(args: &WhoamiArgs) -> Result<Output, Failure> {
    let token = caller_token(&args.credential, args.admin_token.as_deref())?
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            Failure::Usage(
                "whoami needs a token: pass --token or --token-file (KEYAUTH_TOKEN, \
                 KEYAUTH_TOKEN_FILE), or set KEYAUTH_ADMIN_TOKEN"
                    .into(),
            )
        })?;
    let client = connect(&args.connection, |b| b.operator_token(token.trim())).await?;
    let principal = client
        .get_principal(pb::GetPrincipalRequest {})
        .await?
        .principal
        .unwrap_or_default();
    let environments: Vec<&str> = principal
        .environments
        .iter()
        .map(|e| match pb::Environment::try_from(*e) {
            Ok(pb::Environment::Live) => "live",
            Ok(pb::Environment::Test) => "test",
            _ => "unspecified",
        })
        .collect();
    if args.connection.json {
        return Ok(json_output(json!({
            "name": principal.name,
            "subject": principal.subject,
            "issuer": principal.issuer,
            "roles": principal.roles,
            "applications": principal.applications,
            "environments": environments,
        })));
    }
    let or_every = |list: Vec<String>, every: &str| {
        if list.is_empty() {
            every.to_owned()
        } else {
            list.join(", ")
        }
    };
    let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let rows = vec![
        vec!["name".into(), principal.name],
        vec!["subject".into(), dash(principal.subject)],
        vec!["issuer".into(), dash(principal.issuer)],
        vec!["roles".into(), or_every(principal.roles, "(none)")],
        vec![
            "applications".into(),
            or_every(principal.applications, "(every one)"),
        ],
        vec![
            "environments".into(),
            or_every(
                environments.iter().map(|e| e.to_string()).collect(),
                "test, live",
            ),
        ],
    ];
    Ok(Output {
        stdout: render_table(&["FIELD", "VALUE"], &rows),
        notes: Vec::new(),
    })
}
