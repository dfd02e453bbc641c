//! Loading `--principals FILE` and keeping it current: the file is read by path every
//! interval (so a replacement by rename, as Kubernetes swaps a mounted ConfigMap, is seen as
//! surely as a write in place) and loaded again when its bytes' SHA-256 changes. A change that
//! does not load keeps the set in force, logged once per distinct content
//! (`keyauth_principals_reloads_total{result}` counts both outcomes). A change of the
//! `[[issuer]]`s builds their validator anew (fetching their JWKS) before the new set is put in
//! force with it; a file whose issuers did not change keeps the validator, its keys and its
//! cache of verified tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::jwt::{IssuerSettings, JwtIssuers};
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

/// The validator of `set`'s `[[issuer]]`s (their JWKS fetched now; one that cannot be fetched
/// is logged and its issuer starts with no keys), refreshing itself until dropped; `None`
/// without issuers. An error names the issuer and what is wrong with it.
pub async fn jwt_issuers(set: &Principals) -> Result<Option<Arc<JwtIssuers>>, String> {
    if set.issuers().is_empty() {
        return Ok(None);
    }
    let settings: Vec<IssuerSettings> = set.issuers().iter().map(Into::into).collect();
    let issuers = Arc::new(JwtIssuers::new(settings).await?);
    issuers.spawn_refresh();
    Ok(Some(issuers))
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
    /// An issuer every loading must keep (the console's `--console-oidc-issuer`).
    required_issuer: Option<String>,
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
            required_issuer: None,
            seen,
        }
    }

    /// Refuses a content without an `[[issuer]]` of `issuer` (the console signs in there).
    pub fn requiring_issuer(mut self, issuer: Option<String>) -> Reloader {
        self.required_issuer = issuer;
        self
    }

    /// Reads the file and judges what it read.
    pub async fn reload(&mut self) -> Reload {
        let read = tokio::fs::read(&self.path).await;
        self.judge(read).await
    }

    /// Judges a reading of the file: when it differs from what was judged last, puts in force
    /// what loads, or logs why not. Logs and counts either outcome once per content.
    async fn judge(&mut self, read: std::io::Result<Vec<u8>>) -> Reload {
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
        let loaded = match loaded.and_then(|set| self.legacy.apply(Some(set))) {
            Ok(set) => self.with_issuers(set).await,
            Err(why) => Err(why),
        };
        match loaded {
            Ok((set, jwt)) => {
                tracing::info!(
                    file = %self.path.display(),
                    principals = set.principals().len(),
                    issuers = set.issuers().len(),
                    "principals file reloaded: new calls use it"
                );
                self.current.replace(set, jwt);
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

    /// `set` with the validator of its issuers: the one in force when they did not change.
    async fn with_issuers(
        &self,
        set: Principals,
    ) -> Result<(Principals, Option<Arc<JwtIssuers>>), String> {
        if let Some(required) = &self.required_issuer
            && !set.issuers().iter().any(|i| &i.issuer == required)
        {
            return Err(format!(
                "no [[issuer]] is {required:?}, the console's --console-oidc-issuer: console \
                 sign-ins would all be refused"
            ));
        }
        if set.issuers() == self.current.current().issuers() {
            return Ok((set, self.current.jwt()));
        }
        let jwt = jwt_issuers(&set).await?;
        Ok((set, jwt))
    }
}

/// Reads the file of `reloader` every `interval` and keeps its cell up to date with what
/// loads; never when `interval` is zero. Abort the handle to stop it.
pub fn spawn_reloader(mut reloader: Reloader, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if interval.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(interval).await;
            reloader.reload().await;
        }
    })
}

#[cfg(test)]
#[path = "reload_tests.rs"]
mod tests;
