//! A throw-away PKI, made at test time: a CA, a server certificate for `localhost`, client
//! certificates; and the URL and path helpers the TLS tests share.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::process::ServerProcess;

/// PEM files of a CA, a server certificate for `localhost` and a client certificate, both
/// signed by the CA, and a client certificate signed by another CA.
pub(crate) struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_pem: String,
    pub client: (String, String),
    /// A client certificate signed by the CA with the URI SAN [`SPIFFE_ID`].
    pub spiffe: (String, String),
    pub stranger: (String, String),
}

/// The URI SAN of [`Pki::spiffe`].
pub(crate) const SPIFFE_ID: &str = "spiffe://cluster.local/ns/edge/sa/envoy";

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// (certificate PEM, key PEM) signed by `issuer`.
fn leaf(
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> (String, String) {
    leaf_with(name, usage, issuer, None)
}

/// [`leaf`], with a URI SAN if given.
fn leaf_with(
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
    uri: Option<&str>,
) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
    }
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, issuer) = ca("keyauth test CA");
        let (server_cert, server_key) =
            leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth, &issuer);
        let client = leaf("verifier", ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let spiffe = leaf_with(
            "envoy",
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
            Some(SPIFFE_ID),
        );
        let (_, stranger_issuer) = ca("someone else's CA");
        let stranger = leaf(
            "stranger",
            ExtendedKeyUsagePurpose::ClientAuth,
            &stranger_issuer,
        );
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            ca_pem,
            client,
            spiffe,
            stranger,
            _dir: dir,
        }
    }

    /// A `keyauth serve` process with this PKI's server certificate; with `mtls`, it also
    /// requires client certificates signed by the CA.
    pub(crate) fn serve(&self, dir: &tempfile::TempDir, mtls: bool) -> ServerProcess {
        let mut args = vec![
            "--tls-cert",
            path(&self.server_cert),
            "--tls-key",
            path(&self.server_key),
        ];
        if mtls {
            args.extend(["--tls-client-ca", path(&self.ca)]);
        }
        ServerProcess::start(&sqlite_url(dir), &args)
    }

    /// A client that trusts the CA, optionally presenting a certificate.
    pub(crate) fn client_tls(&self, identity: Option<&(String, String)>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        match identity {
            Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
            None => tls,
        }
    }
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub(crate) fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("k.db").display())
}
