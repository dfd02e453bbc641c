//! TLS from PEM files: the server's certificate chain and key, and optionally the CA whose
//! client certificates are required (mTLS), for both listeners (the gRPC port, HTTP/2 over
//! ALPN `h2`; the HTTP listener, `http/1.1`, never asking for client certificates).
//!
//! [`Reloading`] holds the rustls configurations in force and reads the files again every
//! `--tls-reload-interval` ([`Reloading::keep_current`]): when their contents change (compared
//! by SHA-256, so a Kubernetes secret swapped through its `..data` symlink is seen as surely as
//! a file written in place), the new material is parsed and checked (every PEM well-formed,
//! the key that of the certificate, the client CA usable) and only then swapped in. New
//! connections get the new certificate; open ones keep the one they were made with. A change
//! that cannot be used keeps the configuration in force and is logged (once per distinct
//! content) naming the file and why. At start-up the same checks stop the start instead,
//! naming the setting.
//!
//! The PEM checks are shared with the client side (`keyauth_contract::pem`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use keyauth_contract::pem::{TlsSettingError, bad, certificates, private_key, read};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub const CERT_SETTING: &str = "--tls-cert (KEYAUTH_TLS_CERT)";
pub const KEY_SETTING: &str = "--tls-key (KEYAUTH_TLS_KEY)";
pub const CLIENT_CA_SETTING: &str = "--tls-client-ca (KEYAUTH_TLS_CLIENT_CA)";

/// The ALPN protocol of the gRPC port.
const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol of the HTTP listener.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The PEM files TLS is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, end-entity first (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key (`--tls-key`).
    pub key: PathBuf,
    /// CA certificates whose client certificates are required (`--tls-client-ca`).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files of the settings: `None` (plaintext) when neither certificate nor key is
    /// given; an error for half a pair, or a client CA without them.
    pub fn from_settings(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, TlsSettingError> {
        match (cert, key) {
            (None, None) => match client_ca {
                Some(_) => Err(bad(
                    CLIENT_CA_SETTING,
                    "needs --tls-cert and --tls-key (client certificates are checked over TLS)",
                )),
                None => Ok(None),
            },
            (Some(_), None) => Err(bad(KEY_SETTING, "--tls-cert is set but --tls-key is not")),
            (None, Some(_)) => Err(bad(CERT_SETTING, "--tls-key is set but --tls-cert is not")),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                client_ca: client_ca.map(Path::to_owned),
            })),
        }
    }
}

/// The TLS of the settings, read and checked now (`None`: plaintext): a bad setting stops the
/// start naming itself instead of failing the first handshake.
pub fn load(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> Result<Option<Reloading>, TlsSettingError> {
    TlsFiles::from_settings(cert, key, client_ca)?
        .map(Reloading::load)
        .transpose()
}

/// What [`Reloading::reload`] did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what was read last time (or are being changed right now: the next
    /// poll looks again).
    Unchanged,
    /// New material is in force for new connections.
    Reloaded,
    /// The files changed but cannot be used; the configuration in force is kept.
    Refused(TlsSettingError),
}

/// The rustls configurations in force, re-read from their files when they change.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Configs>,
    /// The fingerprint of the contents last judged, good or bad: each distinct content is
    /// judged (and a bad one reported) once.
    seen: Mutex<Fingerprint>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The configurations made of one reading of the files.
#[derive(Clone)]
struct Configs {
    grpc: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
    /// The end-entity certificate both present.
    certificate: CertificateDer<'static>,
}

/// SHA-256 over what reading each file gave (its bytes, or the error).
type Fingerprint = [u8; 32];

/// The bytes of the files, as read once.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Reloading {
    /// Reads and checks the files: at start-up, a bad file is an error naming its setting.
    pub fn load(files: TlsFiles) -> Result<Self, TlsSettingError> {
        let (fingerprint, contents) = read_files(&files);
        let configs = contents.and_then(|contents| Configs::build(&files, &contents))?;
        tracing::info!(
            cert = %files.cert.display(),
            names = %names(&configs.certificate),
            not_after = %not_after(&configs.certificate),
            client_ca = files.client_ca.is_some(),
            "TLS certificate loaded"
        );
        Ok(Reloading {
            files,
            current: RwLock::new(configs),
            seen: Mutex::new(fingerprint),
        })
    }

    /// The gRPC port's configuration in force (ALPN `h2`; client certificates required
    /// when there is a client CA).
    pub fn grpc(&self) -> Arc<rustls::ServerConfig> {
        self.configs().grpc
    }

    /// The HTTP listener's configuration in force (ALPN `http/1.1`). With a client CA it asks
    /// for a certificate without requiring one (GitHub's webhook has none; its requests are
    /// signed instead): see [`Reloading::requires_client_certificate`].
    pub fn http(&self) -> Arc<rustls::ServerConfig> {
        self.configs().http
    }

    /// Whether clients must present a certificate signed by `--tls-client-ca` (on the HTTP
    /// listener: for everything but the webhook).
    pub fn requires_client_certificate(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The end-entity certificate new connections are given.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.configs().certificate
    }

    fn configs(&self) -> Configs {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files and, if their contents changed since last judged, swaps in the new
    /// material when it can be used; logs and counts (`keyauth_tls_reloads_total`) either
    /// outcome. Blocking file reads: call it off the async workers.
    pub fn reload(&self) -> Reload {
        let (fingerprint, contents) = read_files(&self.files);
        if *self.seen.lock().unwrap_or_else(|e| e.into_inner()) == fingerprint {
            return Reload::Unchanged;
        }
        match contents.and_then(|contents| Configs::build(&self.files, &contents)) {
            Ok(configs) => {
                tracing::info!(
                    cert = %self.files.cert.display(),
                    names = %names(&configs.certificate),
                    not_after = %not_after(&configs.certificate),
                    "TLS certificate reloaded: new connections get it"
                );
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = configs;
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = fingerprint;
                crate::metrics::tls_reload("ok");
                Reload::Reloaded
            }
            Err(e) => {
                // Read midway through a change (the certificate before, the key after)? Then
                // the files differ already: judge them at the next poll, unreported.
                if read_files(&self.files).0 != fingerprint {
                    return Reload::Unchanged;
                }
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = fingerprint;
                tracing::warn!(
                    setting = e.setting,
                    error = %e.why,
                    "the TLS files changed but cannot be used; keeping the certificate in force"
                );
                crate::metrics::tls_reload("error");
                Reload::Refused(e)
            }
        }
    }

    /// Calls [`reload`](Self::reload) every `every` until `stop` turns true; never when
    /// `every` is zero.
    pub async fn keep_current(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if every.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let this = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || this.reload()).await {
                tracing::warn!(error = %e, "reading the TLS files failed");
            }
        }
    }
}

/// Reads every file once: the fingerprint of what was read, and the contents (or the first
/// file that could not be read).
fn read_files(files: &TlsFiles) -> (Fingerprint, Result<Contents, TlsSettingError>) {
    let mut digest = Sha256::new();
    let mut one = |path: &Path, setting: &'static str| {
        let read = read(path, setting);
        match &read {
            Ok(bytes) => {
                digest.update([1]);
                digest.update((bytes.len() as u64).to_be_bytes());
                digest.update(bytes);
            }
            Err(e) => {
                digest.update([0]);
                digest.update((e.why.len() as u64).to_be_bytes());
                digest.update(e.why.as_bytes());
            }
        }
        read
    };
    let cert = one(&files.cert, CERT_SETTING);
    let key = one(&files.key, KEY_SETTING);
    let client_ca = files
        .client_ca
        .as_deref()
        .map(|ca| one(ca, CLIENT_CA_SETTING));
    let contents = (|| {
        Ok(Contents {
            cert: cert?,
            key: key?,
            client_ca: client_ca.transpose()?,
        })
    })();
    (digest.finalize().into(), contents)
}

impl Configs {
    /// Both configurations of `contents`, every part checked; an error names the setting and
    /// the file.
    fn build(files: &TlsFiles, contents: &Contents) -> Result<Configs, TlsSettingError> {
        certificates(&contents.cert, &files.cert, CERT_SETTING)?;
        let chain = CertificateDer::pem_slice_iter(&contents.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(CERT_SETTING, format!("{}: {e}", files.cert.display())))?;
        webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
            bad(
                CERT_SETTING,
                format!("{}: not a usable certificate: {e}", files.cert.display()),
            )
        })?;
        private_key(&contents.key, &files.key, KEY_SETTING)?;
        let key = PrivateKeyDer::from_pem_slice(&contents.key)
            .map_err(|e| bad(KEY_SETTING, format!("{}: {e}", files.key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifiers = match (&files.client_ca, &contents.client_ca) {
            (Some(path), Some(pem)) => Some((
                client_verifier(path, pem, &provider, false)?,
                client_verifier(path, pem, &provider, true)?,
            )),
            _ => None,
        };
        let mismatch = |e: rustls::Error| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => {
                    "the private key is not the certificate's".to_owned()
                }
                other => other.to_string(),
            };
            bad(
                CERT_SETTING,
                format!(
                    "{} with {KEY_SETTING} {}: {why}",
                    files.cert.display(),
                    files.key.display()
                ),
            )
        };
        let builder = || {
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(CERT_SETTING, e.to_string()))
        };
        let (required, optional) = verifiers.unzip();
        let mut grpc = match required {
            Some(verifier) => builder()?.with_client_cert_verifier(verifier),
            None => builder()?.with_no_client_auth(),
        }
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(mismatch)?;
        grpc.alpn_protocols = vec![ALPN_H2.to_vec()];
        // GitHub's webhook presents no certificate, so the HTTP listener asks for one without
        // requiring it: a certificate given must be signed by the CA, and the listener serves
        // a connection without one nothing but the webhook (`http::serve`).
        let mut http = match optional {
            Some(verifier) => builder()?.with_client_cert_verifier(verifier),
            None => builder()?.with_no_client_auth(),
        }
        .with_single_cert(chain.clone(), key)
        .map_err(mismatch)?;
        http.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Configs {
            grpc: Arc::new(grpc),
            http: Arc::new(http),
            certificate: chain[0].clone(),
        })
    }
}

/// The verifier of client certificates signed by one of the CAs of `pem`: requiring one, or
/// (`optional`) letting a client without one through, to be judged by the listener.
fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: &Arc<CryptoProvider>,
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsSettingError> {
    let named = |why: String| bad(CLIENT_CA_SETTING, format!("{}: {why}", path.display()));
    certificates(pem, path, CLIENT_CA_SETTING)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| named(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| named(format!("not a usable CA certificate: {e}")))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if optional {
        builder.allow_unauthenticated().build()
    } else {
        builder.build()
    }
    .map_err(|e| named(e.to_string()))
}

/// The DNS names a certificate is valid for, for the log.
fn names(cert: &CertificateDer<'_>) -> String {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(cert) => cert.valid_dns_names().collect::<Vec<_>>().join(","),
        Err(_) => "?".to_owned(),
    }
}

/// When a certificate stops being valid (RFC 3339, UTC), for the log: the `notAfter` of the
/// `Validity` of its `TBSCertificate` (RFC 5280 §4.1).
fn not_after(cert: &CertificateDer<'_>) -> String {
    use der::asn1::{AnyRef, GeneralizedTime, UtcTime};
    use der::{Decode, Reader, SliceReader, Tag};
    fn time(r: &mut SliceReader<'_>) -> der::Result<der::DateTime> {
        Ok(match Tag::peek(r)? {
            Tag::UtcTime => UtcTime::decode(r)?.to_date_time(),
            _ => GeneralizedTime::decode(r)?.to_date_time(),
        })
    }
    fn rest(r: &mut SliceReader<'_>) -> der::Result<()> {
        let left = r.remaining_len();
        r.read_slice(left).map(drop)
    }
    let read = |der: &[u8]| -> der::Result<der::DateTime> {
        SliceReader::new(der)?.sequence(|certificate| {
            let not_after = certificate.sequence(|tbs| -> der::Result<der::DateTime> {
                // version [0] EXPLICIT, when not v1.
                if matches!(Tag::peek(tbs)?, Tag::ContextSpecific { .. }) {
                    AnyRef::decode(tbs)?;
                }
                // serialNumber, signature, issuer.
                for _ in 0..3 {
                    AnyRef::decode(tbs)?;
                }
                let not_after = tbs.sequence(|validity| {
                    time(validity)?;
                    time(validity)
                })?;
                rest(tbs)?;
                Ok(not_after)
            })?;
            rest(certificate)?;
            Ok::<_, der::Error>(not_after)
        })
    };
    read(cert.as_ref()).map_or_else(|_| "?".to_owned(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    #[test]
    fn plaintext_unless_both_halves_are_given() {
        assert!(matches!(load(None, None, None), Ok(None)));
        let p = Path::new("/nonexistent");
        assert_eq!(load(Some(p), None, None).unwrap_err().setting, KEY_SETTING);
        assert_eq!(load(None, Some(p), None).unwrap_err().setting, CERT_SETTING);
        assert_eq!(
            load(None, None, Some(p)).unwrap_err().setting,
            CLIENT_CA_SETTING
        );
        assert_eq!(
            load(Some(p), Some(p), None).unwrap_err().setting,
            CERT_SETTING
        );
    }

    #[test]
    fn garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = load(Some(&garbage), Some(&garbage), None).unwrap_err();
        assert_eq!(err.setting, CERT_SETTING);
        assert!(err.why.contains("no PEM certificate"), "{err}");
    }

    /// A self-signed certificate for `name` and its key (PEM), made with rcgen.
    fn self_signed(name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn der_of(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    struct Files {
        _dir: tempfile::TempDir,
        files: TlsFiles,
    }

    impl Files {
        fn new((cert, key): &(String, String), client_ca: Option<&str>) -> Files {
            let dir = tempfile::tempdir().unwrap();
            let files = TlsFiles {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
                client_ca: client_ca.map(|_| dir.path().join("ca.pem")),
            };
            let this = Files { _dir: dir, files };
            this.write(cert, key);
            if let Some(ca) = client_ca {
                std::fs::write(this.files.client_ca.as_ref().unwrap(), ca).unwrap();
            }
            this
        }

        fn write(&self, cert: &str, key: &str) {
            std::fs::write(&self.files.cert, cert).unwrap();
            std::fs::write(&self.files.key, key).unwrap();
        }
    }

    #[test]
    fn both_configurations_come_from_one_reading() {
        let a = self_signed("a.example");
        let files = Files::new(&a, Some(&a.0));
        let tls = Reloading::load(files.files.clone()).unwrap();
        assert_eq!(tls.certificate(), der_of(&a.0));
        assert_eq!(tls.grpc().alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(tls.http().alpn_protocols, vec![b"http/1.1".to_vec()]);
        // The certificate's own log fields.
        assert_eq!(names(&tls.certificate()), "a.example");
        let shown = not_after(&tls.certificate());
        assert!(shown.len() == 20 && shown.ends_with('Z'), "{shown}");
        assert_eq!(names(&CertificateDer::from(vec![1, 2, 3])), "?");
        assert_eq!(not_after(&CertificateDer::from(vec![1, 2, 3])), "?");
    }

    #[test]
    fn a_change_is_swapped_in_only_when_usable_and_judged_once() {
        let a = self_signed("a.example");
        let b = self_signed("b.example");
        let files = Files::new(&a, None);
        let tls = Reloading::load(files.files.clone()).unwrap();
        let grpc_a = tls.grpc();
        assert!(matches!(tls.reload(), Reload::Unchanged));

        files.write(&b.0, &b.1);
        assert!(matches!(tls.reload(), Reload::Reloaded));
        assert_eq!(tls.certificate(), der_of(&b.0));
        assert!(!Arc::ptr_eq(&grpc_a, &tls.grpc()), "a new configuration");
        assert!(matches!(tls.reload(), Reload::Unchanged));

        // Garbage: refused naming the file, once; B stays in force.
        std::fs::write(&files.files.cert, "not a certificate").unwrap();
        match tls.reload() {
            Reload::Refused(e) => {
                assert_eq!(e.setting, CERT_SETTING);
                assert!(e.why.contains("cert.pem"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(tls.reload(), Reload::Unchanged));
        assert_eq!(tls.certificate(), der_of(&b.0));

        // Another bad content is judged again: the key of another certificate.
        files.write(&b.0, &a.1);
        match tls.reload() {
            Reload::Refused(e) => {
                assert_eq!(e.setting, CERT_SETTING);
                assert!(e.why.contains("key.pem"), "{e}");
                assert!(e.why.contains("not the certificate's"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // A file gone is a bad content too.
        std::fs::remove_file(&files.files.key).unwrap();
        match tls.reload() {
            Reload::Refused(e) => assert_eq!(e.setting, KEY_SETTING),
            other => panic!("{other:?}"),
        }
        assert!(matches!(tls.reload(), Reload::Unchanged));

        // Good again: A back in force.
        files.write(&a.0, &a.1);
        assert!(matches!(tls.reload(), Reload::Reloaded));
        assert_eq!(tls.certificate(), der_of(&a.0));
    }

    #[test]
    fn the_client_ca_is_reloaded_and_checked() {
        let a = self_signed("a.example");
        let files = Files::new(&a, Some(&a.0));
        let tls = Reloading::load(files.files.clone()).unwrap();
        let ca = files.files.client_ca.clone().unwrap();
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n").unwrap();
        match tls.reload() {
            Reload::Refused(e) => assert_eq!(e.setting, CLIENT_CA_SETTING),
            other => panic!("{other:?}"),
        }
        // Well-formed PEM, but not a certificate inside.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        match tls.reload() {
            Reload::Refused(e) => {
                assert_eq!(e.setting, CLIENT_CA_SETTING);
                assert!(e.why.contains("ca.pem"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&ca, self_signed("another CA").0).unwrap();
        assert!(matches!(tls.reload(), Reload::Reloaded));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_current_polls_until_stopped() {
        let a = self_signed("a.example");
        let b = self_signed("b.example");
        let files = Files::new(&a, None);
        let tls = Arc::new(Reloading::load(files.files.clone()).unwrap());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(tls.clone().keep_current(Duration::from_secs(10), stopped));
        files.write(&b.0, &b.1);
        for _ in 0..100 {
            if tls.certificate() == der_of(&b.0) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(tls.certificate(), der_of(&b.0));
        stop.send(true).unwrap();
        task.await.unwrap();
        // Zero: no polling at all.
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        tls.clone().keep_current(Duration::ZERO, stopped).await;
    }
}
