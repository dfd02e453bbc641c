//! Loading `--principals FILE` and keeping it current: the file is read by path every
//! interval (so a replacement by rename, as Kubernetes swaps a mounted ConfigMap, is seen as
//! surely as a write in place) and loaded again when its bytes' SHA-256 changes. A change that
//! does not load keeps the set in force, logged once per distinct content
//! (`keyauth_principals_reloads_total{result}` counts both outcomes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::registry::{Principals, PrincipalsCell, sha256};

/// How often the file is read when not told otherwise (DESIGN: a change is seen within 10 s).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// `KEYAUTH_ADMIN_TOKEN` and the verifier token, added to every loading of the file as the
/// principals `admin` and `verifier`. Never shown by `Debug`.
#[derive(Clone, Default)]
pub struct LegacyTokens {
    admin: Option<Zeroizing<String>>,
    verifier: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for LegacyTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyTokens")
            .field("admin", &self.admin.as_ref().map(|_| "<redacted>"))
            .field("verifier", &self.verifier.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl LegacyTokens {
    pub fn new(admin: Option<&str>, verifier: Option<&str>) -> LegacyTokens {
        let own = |t: Option<&str>| t.map(|t| Zeroizing::new(t.to_owned()));
        LegacyTokens {
            admin: own(admin),
            verifier: own(verifier),
        }
    }

    /// [`Principals::with_legacy`] with these tokens.
    pub fn apply(&self, file: Option<Principals>) -> Result<Principals, String> {
        Principals::with_legacy(
            file,
            self.admin.as_deref().map(String::as_str),
            self.verifier.as_deref().map(String::as_str),
        )
    }
}

/// The start's loading: the file at `path` (if any) with the legacy tokens. An error names the
/// path (or the token's setting) and, for a mistake in the file, the line: the start stops.
pub fn load(path: Option<&Path>, legacy: &LegacyTokens) -> Result<Principals, String> {
    let file = path
        .map(|path| {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            from_bytes(&bytes).map_err(|why| format!("{}: {why}", path.display()))
        })
        .transpose()?;
    legacy.apply(file)
}

/// A principals file's bytes, loaded; the set remembers their SHA-256.
fn from_bytes(bytes: &[u8]) -> Result<Principals, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let mut set = Principals::parse(text).map_err(|e| e.to_string())?;
    set.source = Some(sha256(bytes));
    Ok(set)
}

/// What [`Reloader::reload`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The content is the one judged last (or the one in force).
    Unchanged,
    /// A new set is in force.
    Reloaded,
    /// The new content does not load (the reason, with its line); the set in force stays.
    Refused(String),
}

/// Reads the file and swaps in what loads.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    current: Arc<PrincipalsCell>,
    legacy: LegacyTokens,
    /// The SHA-256 of the content judged last (or of a read error's text).
    seen: Option<[u8; 32]>,
}

impl Reloader {
    /// A reloader of `path` into `current`, whose set is taken as judged already.
    pub fn new(path: PathBuf, current: Arc<PrincipalsCell>, legacy: LegacyTokens) -> Reloader {
        let seen = current.current().source;
        Reloader {
            path,
            current,
            legacy,
            seen,
        }
    }

    /// Reads the file (blocking) and judges what it read.
    pub fn reload(&mut self) -> Reload {
        let read = std::fs::read(&self.path);
        self.judge(read)
    }

    /// Judges a reading of the file: when it differs from what was judged last, puts in force
    /// what loads, or logs why not. Logs and counts either outcome once per content.
    fn judge(&mut self, read: std::io::Result<Vec<u8>>) -> Reload {
        let (fingerprint, loaded) = match read {
            Ok(bytes) => (sha256(&bytes), from_bytes(&bytes)),
            Err(e) => {
                let why = format!("cannot read it: {e}");
                (sha256(format!("\0{why}")), Err(why))
            }
        };
        if self.seen == Some(fingerprint) {
            return Reload::Unchanged;
        }
        self.seen = Some(fingerprint);
        if self.current.current().source == Some(fingerprint) {
            // Back to the content in force after a refused change.
            return Reload::Unchanged;
        }
        match loaded.and_then(|set| self.legacy.apply(Some(set))) {
            Ok(set) => {
                tracing::info!(
                    file = %self.path.display(),
                    principals = set.principals().len(),
                    issuers = set.issuers().len(),
                    "principals file reloaded: new calls use it"
                );
                self.current.replace(set);
                crate::metrics::principals_reload("ok");
                Reload::Reloaded
            }
            Err(why) => {
                tracing::warn!(
                    file = %self.path.display(),
                    error = %why,
                    "the principals file changed but does not load; keeping the principals in force"
                );
                crate::metrics::principals_reload("error");
                Reload::Refused(why)
            }
        }
    }
}

/// Reads `path` every `interval` and keeps `current` up to date with what loads; never when
/// `interval` is zero. Abort the handle to stop it.
pub fn spawn_reloader(
    path: PathBuf,
    current: Arc<PrincipalsCell>,
    legacy: LegacyTokens,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut reloader = Reloader::new(path, current, legacy);
    tokio::spawn(async move {
        if interval.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(interval).await;
            let read = tokio::fs::read(&reloader.path).await;
            reloader.judge(read);
        }
    })
}

#[cfg(test)]
#[path = "reload_tests.rs"]
mod tests;
