//! Secrets (the operator and verifier tokens, the seal keys): held as [`Secret`]s, whose `Debug`
//! is a redaction, and given as a pair of flags, [`SecretArg`]: the value itself (flag or
//! environment variable) or a file holding it.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use zeroize::Zeroizing;

/// A secret setting: `Debug` prints `Secret(..)`, and the memory is wiped on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(Zeroizing::new(text.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from a file, without the trailing newline editors and `echo` add.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        let trimmed = text.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            return Err(format!("{}: the file is empty", path.display()));
        }
        Ok(Secret::new(trimmed))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

/// The names and help of a secret's two flags, `--NAME` and `--NAME-file`.
pub trait SecretFlag {
    /// The value's argument id, `admin_token`; the file's is `admin_token_file`.
    const ID: &'static str;
    const FILE_ID: &'static str;
    const LONG: &'static str;
    const FILE_LONG: &'static str;
    /// `ADMIN_TOKEN`: the value name in `--help`, and the environment variable without its
    /// `KEYAUTH_`.
    const VALUE_NAME: &'static str;
    const FILE_VALUE_NAME: &'static str;
    const ENV: &'static str;
    const FILE_ENV: &'static str;
    const HELP: &'static str;
    const FILE_HELP: &'static str;
    /// How a refusal names the setting: `--admin-token (KEYAUTH_ADMIN_TOKEN)`.
    const SETTING: &'static str;
    const FILE_SETTING: &'static str;
}

/// One [`SecretFlag`] from the flag's id, long name, value name, what the secret is (for the
/// file's help) and the help of the value.
macro_rules! secret_flag {
    ($(#[$doc:meta])* $name:ident: $id:literal, $long:literal, $upper:literal, $what:literal, $help:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub enum $name {}

        impl SecretFlag for $name {
            const ID: &'static str = $id;
            const FILE_ID: &'static str = concat!($id, "_file");
            const LONG: &'static str = $long;
            const FILE_LONG: &'static str = concat!($long, "-file");
            const VALUE_NAME: &'static str = $upper;
            const FILE_VALUE_NAME: &'static str = concat!($upper, "_FILE");
            const ENV: &'static str = concat!("KEYAUTH_", $upper);
            const FILE_ENV: &'static str = concat!("KEYAUTH_", $upper, "_FILE");
            const HELP: &'static str = $help;
            const FILE_HELP: &'static str =
                concat!("File holding ", $what, ", instead of KEYAUTH_", $upper);
            const SETTING: &'static str = concat!("--", $long, " (KEYAUTH_", $upper, ")");
            const FILE_SETTING: &'static str =
                concat!("--", $long, "-file (KEYAUTH_", $upper, "_FILE)");
        }
    };
}

secret_flag!(
    /// `--admin-token`, `--admin-token-file`.
    AdminTokenFlags: "admin_token", "admin-token", "ADMIN_TOKEN", "the operator token",
    "Operator token for the operator RPCs (IssueKey, RollKey, RevokeKey, GetKey, ListKeys). \
     Unset: operator RPCs are refused; Verify and CheckPermission still work. Prefer \
     --admin-token-file or the environment: a flag shows in the process list"
);
secret_flag!(
    /// `--seal-key`, `--seal-key-file`.
    SealKeyFlags: "seal_key", "seal-key", "SEAL_KEY", "the seal key",
    "Seal key (32 bytes, hex or base64) that encrypts the secrets kept for idempotent replay \
     of IssueKey and RollKey. Unset: such replays are refused (FAILED_PRECONDITION). \
     `keyauth gen-seal-key` prints one"
);
secret_flag!(
    /// `--seal-key-previous`, `--seal-key-previous-file`.
    PreviousSealKeyFlags: "seal_key_previous", "seal-key-previous", "SEAL_KEY_PREVIOUS",
    "the previous seal key",
    "The seal key before a rotation: replays sealed under it still open, new seals use the \
     current key. Drop it once --idempotency-ttl has passed since the rotation"
);
secret_flag!(
    /// `--verifier-token`, `--verifier-token-file`.
    VerifierTokenFlags: "verifier_token", "verifier-token", "VERIFIER_TOKEN", "the verifier token",
    "Token Verify and CheckPermission callers must send as `authorization: Bearer <token>`. \
     Unset: anyone who can connect may verify"
);

/// A secret's two flags (see [`SecretFlag`]): the value, hidden from `--help`'s environment
/// values, or a file holding it; at most one of them (clap refuses both).
#[derive(Clone, Debug)]
pub struct SecretArg<N> {
    pub value: Option<Secret>,
    pub file: Option<PathBuf>,
    flag: PhantomData<N>,
}

impl<N> SecretArg<N> {
    /// The secret, from the value or the file; none when neither is given or the value is
    /// empty.
    pub fn secret(&self) -> Result<Option<Secret>, String> {
        match (&self.value, &self.file) {
            (Some(secret), _) => Ok(Some(secret.clone()).filter(|s| !s.expose().is_empty())),
            (None, Some(path)) => Secret::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

impl<N: SecretFlag> FromArgMatches for SecretArg<N> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(SecretArg {
            value: matches.get_one::<Secret>(N::ID).cloned(),
            file: matches.get_one::<PathBuf>(N::FILE_ID).cloned(),
            flag: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<N: SecretFlag> Args for SecretArg<N> {
    fn augment_args(command: Command) -> Command {
        command
            .arg(
                Arg::new(N::ID)
                    .long(N::LONG)
                    .env(N::ENV)
                    .hide_env_values(true)
                    .conflicts_with(N::FILE_ID)
                    .value_name(N::VALUE_NAME)
                    .help(N::HELP)
                    .action(ArgAction::Set)
                    .value_parser(clap::value_parser!(Secret)),
            )
            .arg(
                Arg::new(N::FILE_ID)
                    .long(N::FILE_LONG)
                    .env(N::FILE_ENV)
                    .value_name(N::FILE_VALUE_NAME)
                    .help(N::FILE_HELP)
                    .action(ArgAction::Set)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}
