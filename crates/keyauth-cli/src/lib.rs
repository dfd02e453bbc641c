//! The operator CLI: `keyauth keys issue|roll|revoke|get|list|events`, `keyauth verify` and
//! `keyauth whoami`,
//! calls to a running server through `keyauth-client`'s [`Client`](keyauth_client::Client)
//! (tokens, request ids, timeouts and the retries of reads are the client's); and `keyauth
//! scan`, which finds keys in files offline (and with `--report` has the server revoke them,
//! through ReportExposedKeys). The server is called over plaintext (`http://`, also when
//! `--server` has no scheme) or TLS (`https://`, trusting `--ca-cert`, or the system's root
//! certificates without it; optionally presenting a client certificate for mTLS).
//!
//! Output is an aligned table by default and one JSON object with `--json`. The exit code is
//! what a script relies on: 0 success (or a valid key), 1 a refusal (the key is not valid, or
//! the server refused the request: NOT_FOUND, FAILED_PRECONDITION, UNAUTHENTICATED,
//! INVALID_ARGUMENT, …), 2 a usage error (bad arguments, found before any call), 3 no answer
//! (the server is unreachable, or answered UNAVAILABLE, DEADLINE_EXCEEDED or another status
//! that means the answer is not known).
//!
//! Unlike the server side, this crate names `pb` types directly: it is a client of the wire
//! contract, not part of the domain.

mod args;
mod commands;
mod exit;
mod render;
mod scan;
mod whoami;

pub use args::{KeysArgs, TokenArgs, VerifyArgs, WhoamiArgs};
pub use commands::{keys, verify};
pub use exit::{EXIT_DENIED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, exit_code_of};
pub use render::{event_json, key_json, render_table};
pub use scan::{ScanArgs, scan};
pub use whoami::whoami;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::*;
    use crate::render::*;
    use clap::Parser;
    use keyauth_proto as pb;
    use serde_json::Value;
    use tonic::Code;

    /// The root command as the `keyauth` binary spells it, for parsing tests.
    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, clap::Subcommand)]
    enum TestCommand {
        Keys(KeysArgs),
        Verify(VerifyArgs),
    }

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
            TestCli::try_parse_from(["keyauth", "verify", "sk_test_secretsecretsecret"]).unwrap();
        assert!(!format!("{cli:?}").contains("secretsecret"));
        let cli = TestCli::try_parse_from([
            "keyauth",
            "keys",
            "--admin-token",
            "tok3n-value",
            "get",
            "key_1",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("tok3n-value"));
        let cli = TestCli::try_parse_from([
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
            TestCli::try_parse_from(["keyauth", "keys", "events"].iter().chain(args).copied())
        };
        assert!(parse(&["--key", "key_1"]).is_ok());
        assert!(parse(&["--app", "app_1", "--all"]).is_ok());
        assert!(parse(&[]).is_ok(), "no filter: every event");
        assert!(parse(&["--type", "updated", "--type", "operator_auth_failed"]).is_ok());
        assert!(
            parse(&[
                "--since",
                "2026-01-01T00:00:00Z",
                "--until",
                "2026-02-01T00:00:00Z"
            ])
            .is_ok()
        );
        assert!(parse(&["--type", "nonsense"]).is_err());
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
            count: 1,
            ..Default::default()
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
