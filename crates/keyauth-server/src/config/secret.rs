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

/// The names and help of one flag.
pub struct FlagNames {
    /// The argument id, `admin_token` (`admin_token_file` for the file).
    pub id: &'static str,
    pub long: &'static str,
    /// `ADMIN_TOKEN`: the value name in `--help`, and the environment variable without its
    /// `KEYAUTH_`.
    pub value_name: &'static str,
    pub env: &'static str,
    pub help: &'static str,
    /// How a refusal names the setting: `--admin-token (KEYAUTH_ADMIN_TOKEN)`.
    pub setting: &'static str,
}

/// The names and help of a secret's two flags, `--NAME` and `--NAME-file`.
pub trait SecretFlag {
    const VALUE: FlagNames;
    const FILE: FlagNames;
}

/// The [`FlagNames`] of flag `$long` (id `$id`, value name `$upper`), each name with its
/// suffix: none for the value, `_file`, `-file` and `_FILE` for the file.
macro_rules! flag_names {
    ($id:literal, $long:literal, $upper:literal, $help:expr, $ids:literal, $longs:literal, $uppers:literal) => {
        FlagNames {
            id: concat!($id, $ids),
            long: concat!($long, $longs),
            value_name: concat!($upper, $uppers),
            env: concat!("KEYAUTH_", $upper, $uppers),
            help: $help,
            setting: concat!("--", $long, $longs, " (KEYAUTH_", $upper, $uppers, ")"),
        }
    };
}

/// One [`SecretFlag`] from the flag's id, long name, value name, what the secret is (for the
/// file's help) and the help of the value.
macro_rules! secret_flag {
    ($(#[$doc:meta])* $name:ident: $id:literal, $long:literal, $upper:literal, $what:literal, $help:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub enum $name {}

        impl SecretFlag for $name {
            const VALUE: FlagNames = flag_names!($id, $long, $upper, $help, "", "", "");
            const FILE: FlagNames = flag_names!(
                $id, $long, $upper,
                concat!("File holding ", $what, ", instead of KEYAUTH_", $upper),
                "_file", "-file", "_FILE"
            );
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
            value: matches.get_one::<Secret>(N::VALUE.id).cloned(),
            file: matches.get_one::<PathBuf>(N::FILE.id).cloned(),
            flag: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl FlagNames {
    /// The flag, as clap's derive makes an optional one.
    fn arg(&self) -> Arg {
        Arg::new(self.id)
            .long(self.long)
            .env(self.env)
            .value_name(self.value_name)
            .help(self.help)
            .action(ArgAction::Set)
    }
}

impl<N: SecretFlag> Args for SecretArg<N> {
    fn augment_args(command: Command) -> Command {
        let value = N::VALUE
            .arg()
            .hide_env_values(true)
            .conflicts_with(N::FILE.id)
            .value_parser(clap::value_parser!(Secret));
        let file = N::FILE.arg().value_parser(clap::value_parser!(PathBuf));
        command.arg(value).arg(file)
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}
