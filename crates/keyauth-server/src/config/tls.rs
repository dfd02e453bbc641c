//! TLS: the certificate, key and client CA of both listeners.

use std::sync::Arc;

use super::args::ServeArgs;
use super::error::SettingError;
use crate::tls::{self, Reloading};

impl ServeArgs {
    /// The TLS of --tls-cert, --tls-key and --tls-client-ca, read and checked; none for
    /// plaintext.
    pub(super) fn tls(&self) -> Result<Option<Arc<Reloading>>, SettingError> {
        let loaded = tls::load(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_client_ca.as_deref(),
        )
        .map_err(|e| SettingError {
            setting: e.setting,
            why: e.why,
        })?;
        Ok(loaded.map(Arc::new))
    }
}
