//! The checks of PEM files named by a setting (certificates, private keys): read and parsed
//! before use, so that a bad file is named with its setting and path instead of failing a
//! handshake. The server's TLS settings and a client's both use them.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setting that cannot be used: which one, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct TlsSettingError {
    pub setting: &'static str,
    pub why: String,
}

impl std::fmt::Display for TlsSettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.why)
    }
}

impl std::error::Error for TlsSettingError {}

pub fn bad(setting: &'static str, why: impl Into<String>) -> TlsSettingError {
    TlsSettingError {
        setting,
        why: why.into(),
    }
}

pub fn read(path: &Path, setting: &'static str) -> Result<Vec<u8>, TlsSettingError> {
    std::fs::read(path).map_err(|e| bad(setting, format!("{}: {e}", path.display())))
}

/// One well-formed PEM private key.
pub fn private_key(pem: &[u8], path: &Path, setting: &'static str) -> Result<(), TlsSettingError> {
    PrivateKeyDer::from_pem_slice(pem).map(drop).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => "no PEM private key found".to_owned(),
            other => describe(&other),
        };
        bad(setting, format!("{}: {why}", path.display()))
    })
}

/// At least one certificate, and every PEM certificate section well-formed.
pub fn certificates(pem: &[u8], path: &Path, setting: &'static str) -> Result<(), TlsSettingError> {
    let found = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(setting, format!("{}: {}", path.display(), describe(&e))))?;
    if found.is_empty() {
        return Err(bad(
            setting,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    Ok(())
}

/// A PEM error in words (the library's own shows marker lines as byte arrays).
fn describe(e: &pem::Error) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!(
                "malformed PEM: a {} section has no END line",
                text(end_marker)
            )
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed PEM: bad section start {:?}", text(line))
        }
        pem::Error::Base64Decode(why) => format!("malformed PEM: bad base64 ({why})"),
        other => format!("malformed PEM: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = read(&dir.path().join("missing.pem"), "--ca").unwrap_err();
        assert_eq!(err.setting, "--ca");
        let err = certificates(b"not a certificate", &garbage, "--ca").unwrap_err();
        assert!(err.why.contains("no PEM certificate"), "{err}");
        assert!(err.why.contains("garbage.pem"), "{err}");
        let err = private_key(b"not a key", &garbage, "--key").unwrap_err();
        assert!(err.why.contains("no PEM private key"), "{err}");
        let err =
            certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n", &garbage, "--ca").unwrap_err();
        assert!(err.why.contains("malformed PEM"), "{err}");
    }
}
