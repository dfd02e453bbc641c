//! TLS from PEM files: the server's certificate chain and key, and optionally the CA whose
//! client certificates are required (mTLS). Every file is read and parsed at start-up, so a
//! bad setting stops the start naming itself instead of failing the first handshake.
//!
//! The operator CLI's side too ([`client_config`]): the CA it trusts, and optionally its own
//! certificate and key for a server that requires client certificates.

use std::path::Path;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

pub const CERT_SETTING: &str = "--tls-cert (KEYAUTH_TLS_CERT)";
pub const KEY_SETTING: &str = "--tls-key (KEYAUTH_TLS_KEY)";
pub const CLIENT_CA_SETTING: &str = "--tls-client-ca (KEYAUTH_TLS_CLIENT_CA)";
pub const CA_CERT_SETTING: &str = "--ca-cert (KEYAUTH_CA_CERT)";
pub const CLIENT_CERT_SETTING: &str = "--client-cert (KEYAUTH_CLIENT_CERT)";
pub const CLIENT_KEY_SETTING: &str = "--client-key (KEYAUTH_CLIENT_KEY)";

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

fn bad(setting: &'static str, why: impl Into<String>) -> TlsSettingError {
    TlsSettingError {
        setting,
        why: why.into(),
    }
}

/// The server's TLS configuration from the PEM files given, `None` for plaintext (none given).
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> Result<Option<ServerTlsConfig>, TlsSettingError> {
    let (cert, key) = match (cert, key) {
        (None, None) => {
            return match client_ca {
                Some(_) => Err(bad(
                    CLIENT_CA_SETTING,
                    "needs --tls-cert and --tls-key (client certificates are checked over TLS)",
                )),
                None => Ok(None),
            };
        }
        (Some(_), None) => return Err(bad(KEY_SETTING, "--tls-cert is set but --tls-key is not")),
        (None, Some(_)) => return Err(bad(CERT_SETTING, "--tls-key is set but --tls-cert is not")),
        (Some(c), Some(k)) => (c, k),
    };
    let cert_pem = read(cert, CERT_SETTING)?;
    certificates(&cert_pem, cert, CERT_SETTING)?;
    let key_pem = read(key, KEY_SETTING)?;
    private_key(&key_pem, key, KEY_SETTING)?;
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

/// A client's TLS configuration: trust the CA certificates of `ca` (PEM), and present
/// `identity` (certificate chain PEM, private key PEM) when given. Every file is read and
/// parsed here, so a bad one is named before any connection is attempted.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, TlsSettingError> {
    let ca_pem = read(ca, CA_CERT_SETTING)?;
    certificates(&ca_pem, ca, CA_CERT_SETTING)?;
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let Some((cert, key)) = identity else {
        return Ok(config);
    };
    let cert_pem = read(cert, CLIENT_CERT_SETTING)?;
    certificates(&cert_pem, cert, CLIENT_CERT_SETTING)?;
    let key_pem = read(key, CLIENT_KEY_SETTING)?;
    private_key(&key_pem, key, CLIENT_KEY_SETTING)?;
    Ok(config.identity(Identity::from_pem(&cert_pem, &key_pem)))
}

fn read(path: &Path, setting: &'static str) -> Result<Vec<u8>, TlsSettingError> {
    std::fs::read(path).map_err(|e| bad(setting, format!("{}: {e}", path.display())))
}

/// One well-formed PEM private key.
fn private_key(pem: &[u8], path: &Path, setting: &'static str) -> Result<(), TlsSettingError> {
    PrivateKeyDer::from_pem_slice(pem).map(drop).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => "no PEM private key found".to_owned(),
            other => describe(&other),
        };
        bad(setting, format!("{}: {why}", path.display()))
    })
}

/// At least one certificate, and every PEM certificate section well-formed.
fn certificates(pem: &[u8], path: &Path, setting: &'static str) -> Result<(), TlsSettingError> {
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

    #[test]
    fn client_files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(&missing, None).unwrap_err();
        assert_eq!(err.setting, CA_CERT_SETTING);
        let err = client_config(&garbage, None).unwrap_err();
        assert_eq!(err.setting, CA_CERT_SETTING);
        assert!(err.why.contains("no PEM certificate"), "{err}");
    }
}
