//! What the unit tests of this crate share: a log capture and an authority on a throw-away
//! store.

use std::sync::{Arc, Mutex};

use keyauth_core::Authority;

/// What a test's subscriber wrote.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// A subscriber writing `info` and above, without colours, here; the default for the
    /// current thread while the guard lives.
    pub(crate) fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// An authority with the default settings on a SQLite store in `dir`.
pub(crate) async fn authority(dir: &tempfile::TempDir) -> Arc<Authority> {
    let url = format!("sqlite://{}", dir.path().join("unit.db").display());
    let store = keyauth_core::store::connect(&url, &Default::default())
        .await
        .unwrap();
    let settings = crate::server::AuthoritySettings::default();
    crate::server::authority(store, settings, keyauth_core::clock::Clock::system())
        .await
        .unwrap()
}
