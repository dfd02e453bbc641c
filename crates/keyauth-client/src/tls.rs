//! TLS of a connection to keyauth from PEM files: the CA certificates to trust (the system's
//! roots when none are given) and, for a server that requires client certificates (mTLS), the
//! client's own certificate and key. Every file is read and parsed before connecting, so a bad
//! one is named instead of failing the handshake. The PEM checks are the contract's
//! (`keyauth_contract::pem`), shared with the server.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub const CA_CERT_SETTING: &str = "--ca-cert (KEYAUTH_CA_CERT)";
pub const CLIENT_CERT_SETTING: &str = "--client-cert (KEYAUTH_CLIENT_CERT)";
pub const CLIENT_KEY_SETTING: &str = "--client-key (KEYAUTH_CLIENT_KEY)";

pub use keyauth_contract::pem::{TlsSettingError, bad, certificates, private_key, read};

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
