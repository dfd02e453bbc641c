//! What stops the start: a setting that cannot be used.

use std::fmt;

/// A setting that cannot be used: which one (flag and environment variable), and why. `main`
/// prints it and exits with code 2.
#[derive(Debug)]
pub struct SettingError {
    pub setting: &'static str,
    pub why: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.why)
    }
}

/// The error of `setting`, given why it cannot be used (for `map_err`).
pub(super) fn setting(setting: &'static str) -> impl Fn(String) -> SettingError {
    move |why| SettingError { setting, why }
}
