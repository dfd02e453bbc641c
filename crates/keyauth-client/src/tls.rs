//! TLS of a connection to keyauth from PEM files: the CA certificates to trust (the system's
//! roots when none are given) and, for a server that requires client certificates (mTLS), the
//! client's own certificate and key. Every file is read and parsed before connecting, so a bad
//! one is named instead of failing the handshake. The PEM checks are shared with the server.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub const CA_CERT_SETTING: &str = "--ca-cert (KEYAUTH_CA_CERT)";
pub const CLIENT_CERT_SETTING: &str = "--client-cert (KEYAUTH_CLIENT_CERT)";
pub const CLIENT_KEY_SETTING: &str = "--client-key (KEYAUTH_CLIENT_KEY)";

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

/// A client's TLS configuration: trust the CA certificates of `ca` (PEM), or the system's
/// roots when `ca` is `None`, and present `identity` (certificate chain PEM, private key PEM)
/// when given.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, TlsSettingError> {
    let config = match ca {
        Some(ca) => {
            let ca_pem = read(ca, CA_CERT_SETTING)?;
            certificates(&ca_pem, ca, CA_CERT_SETTING)?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    let Some((cert, key)) = identity else {
        return Ok(config);
    };
    let cert_pem = read(cert, CLIENT_CERT_SETTING)?;
    certificates(&cert_pem, cert, CLIENT_CERT_SETTING)?;
    let key_pem = read(key, CLIENT_KEY_SETTING)?;
    private_key(&key_pem, key, CLIENT_KEY_SETTING)?;
    Ok(config.identity(Identity::from_pem(&cert_pem, &key_pem)))
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
    fn client_files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(Some(&missing), None).unwrap_err();
        assert_eq!(err.setting, CA_CERT_SETTING);
        let err = client_config(Some(&garbage), None).unwrap_err();
        assert_eq!(err.setting, CA_CERT_SETTING);
        assert!(err.why.contains("no PEM certificate"), "{err}");
    }
}
