//! TLS from PEM files: the server's certificate chain and key, and optionally the CA whose
//! client certificates are required (mTLS). Every file is read and parsed at start-up, so a
//! bad setting stops the start naming itself instead of failing the first handshake.
//!
//! The PEM checks are shared with the client side (`keyauth_client::tls`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyauth_client::tls::{TlsSettingError, bad, certificates, private_key, read};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub const CERT_SETTING: &str = "--tls-cert (KEYAUTH_TLS_CERT)";
pub const KEY_SETTING: &str = "--tls-key (KEYAUTH_TLS_KEY)";
pub const CLIENT_CA_SETTING: &str = "--tls-client-ca (KEYAUTH_TLS_CLIENT_CA)";

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS configuration from the PEM files given, `None` for plaintext (none given).
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> Result<Option<ServerTlsConfig>, TlsSettingError> {
    let Some(IdentityPems(cert_pem, key_pem)) = identity_pems(cert, key)? else {
        return match client_ca {
            Some(_) => Err(bad(
                CLIENT_CA_SETTING,
                "needs --tls-cert and --tls-key (client certificates are checked over TLS)",
            )),
            None => Ok(None),
        };
    };
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&cert_pem, &key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    // Builds the rustls configuration now: a key that does not match the certificate, or a
    // certificate rustls cannot use, is found here.
    check(&config).map_err(|why| bad(CERT_SETTING, format!("with {KEY_SETTING}: {why}")))?;
    let Some(client_ca) = client_ca else {
        return Ok(Some(config));
    };
    let ca_pem = read(client_ca, CLIENT_CA_SETTING)?;
    certificates(&ca_pem, client_ca, CLIENT_CA_SETTING)?;
    let config = config.client_ca_root(Certificate::from_pem(&ca_pem));
    check(&config).map_err(|why| bad(CLIENT_CA_SETTING, why))?;
    Ok(Some(config))
}

/// The HTTP listener's rustls configuration from the same certificate and key as the gRPC port
/// (`None` for plaintext), HTTP/1.1 only. No client certificates are asked for: the webhooks'
/// senders (GitHub) have none; their requests are signed instead.
pub fn http_server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSettingError> {
    let Some(IdentityPems(cert_pem, key_pem)) = identity_pems(cert, key)? else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(CERT_SETTING, e.to_string()))?;
    let private =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(KEY_SETTING, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(CERT_SETTING, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| bad(CERT_SETTING, format!("with {KEY_SETTING}: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// PEM text of a certificate chain and of its private key.
struct IdentityPems(Vec<u8>, Vec<u8>);

/// The certificate chain and key PEMs of --tls-cert and --tls-key, read and checked; `None`
/// when neither is set, an error when only one is.
fn identity_pems(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<IdentityPems>, TlsSettingError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(bad(KEY_SETTING, "--tls-cert is set but --tls-key is not")),
        (None, Some(_)) => return Err(bad(CERT_SETTING, "--tls-key is set but --tls-cert is not")),
        (Some(c), Some(k)) => (c, k),
    };
    let cert_pem = read(cert, CERT_SETTING)?;
    certificates(&cert_pem, cert, CERT_SETTING)?;
    let key_pem = read(key, KEY_SETTING)?;
    private_key(&key_pem, key, KEY_SETTING)?;
    Ok(Some(IdentityPems(cert_pem, key_pem)))
}

/// What tonic (rustls) says of `config`, whole cause chain.
fn check(config: &ServerTlsConfig) -> Result<(), String> {
    Server::builder()
        .tls_config(config.clone())
        .map(drop)
        .map_err(|e| {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(": ");
                why.push_str(&s.to_string());
                source = s.source();
            }
            why
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_unless_both_halves_are_given() {
        assert!(matches!(server_config(None, None, None), Ok(None)));
        let p = Path::new("/nonexistent");
        assert_eq!(
            server_config(Some(p), None, None).unwrap_err().setting,
            KEY_SETTING
        );
        assert_eq!(
            server_config(None, Some(p), None).unwrap_err().setting,
            CERT_SETTING
        );
        assert_eq!(
            server_config(None, None, Some(p)).unwrap_err().setting,
            CLIENT_CA_SETTING
        );
        assert_eq!(
            server_config(Some(p), Some(p), None).unwrap_err().setting,
            CERT_SETTING
        );
    }

    #[test]
    fn garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = server_config(Some(&garbage), Some(&garbage), None).unwrap_err();
        assert_eq!(err.setting, CERT_SETTING);
        assert!(err.why.contains("no PEM certificate"), "{err}");
    }
}
