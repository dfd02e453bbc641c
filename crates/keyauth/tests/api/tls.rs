//! TLS as keyauth terminates it in its own accept loop.
//!
//! The files are reloaded while `keyauth serve` runs (`--tls-reload-interval`): a new
//! certificate (or client CA) serves new connections on both listeners, open connections keep
//! theirs, and an unusable change keeps the one in force, said once in the log and the
//! metrics. The files are laid out as Kubernetes mounts a secret: `tls.crt` is a symlink into
//! `..data`, itself a symlink to a versioned directory, swapped atomically on an update (the
//! files' own modification times never change).
//!
//! The handshake counts against the first-request deadline. (Plain TLS and mTLS at start-up:
//! `operable.rs`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use keyauth_proto as pb;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;

use crate::connections::closed_within;
use crate::helpers::error_code;
use crate::helpers::pki::{Pki, path, sqlite_url};
use crate::helpers::process::{ServerProcess, wait_for_line};
use crate::operable::{free_port, sample, scrape, verify_over_tls};

/// A directory laid out like a Kubernetes secret volume.
struct SecretVolume {
    dir: tempfile::TempDir,
    version: usize,
}

impl SecretVolume {
    fn new(files: &[(&str, &str)]) -> Self {
        let mut volume = SecretVolume {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        volume.publish(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), volume.path(name)).unwrap();
        }
        volume
    }

    /// Writes a new version of every file and swaps `..data` to it in one rename.
    fn publish(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.path().join(&version)).unwrap();
        for (name, content) in files {
            std::fs::write(self.dir.path().join(&version).join(name), content).unwrap();
        }
        let next = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &next).unwrap();
        std::fs::rename(&next, self.dir.path().join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn pem(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// The certificate `addr` presents to a new connection offering `alpn`, trusting any of `cas`.
async fn presented(addr: &str, alpn: &[u8], cas: &[&str]) -> CertificateDer<'static> {
    let tls = handshake(addr, alpn, cas).await;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(alpn));
    session.peer_certificates().unwrap()[0].clone().into_owned()
}

/// A new TLS connection to `addr` offering `alpn`, trusting any of `cas`.
async fn handshake(
    addr: &str,
    alpn: &[u8],
    cas: &[&str],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("the handshake ends")
    .expect("the handshake succeeds")
}

/// Polls (for 10 s at most) until `addr` presents `cert` to new connections.
async fn until_presented(addr: &str, alpn: &[u8], cas: &[&str], cert: &CertificateDer<'_>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented(addr, alpn, cas).await != *cert {
        assert!(
            Instant::now() < deadline,
            "{addr} still presents the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A channel with one connection made now.
async fn channel(addr: &str, tls: ClientTlsConfig) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// The denial code of a Verify of a garbage key on `channel`.
async fn verify_on(channel: &Channel) -> Result<String, tonic::Status> {
    let answer = KeyAuthorityServiceClient::new(channel.clone())
        .verify(pb::VerifyRequest {
            key: "sk_test_not_a_key".into(),
            required_permissions: vec![],
        })
        .await?
        .into_inner();
    Ok(error_code(&answer).unwrap_or("valid").to_owned())
}

/// A well-formed PEM section that holds no certificate.
const NOT_A_CERTIFICATE: &str =
    "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_serves_new_connections_without_a_restart() {
    let (pki_a, pki_b) = (Pki::new(), Pki::new());
    let files = |pki: &Pki| [pem(&pki.server_cert), pem(&pki.server_key)];
    let [cert_a, key_a] = files(&pki_a);
    let [cert_b, key_b] = files(&pki_b);
    let mut volume = SecretVolume::new(&[("tls.crt", &cert_a), ("tls.key", &key_a)]);
    let github = crate::exposed::Github::new();
    let keys = github.keys_file().display().to_string();
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        &sqlite_url(&dir),
        &[
            "--tls-cert",
            path(&volume.path("tls.crt")),
            "--tls-key",
            path(&volume.path("tls.key")),
            "--tls-reload-interval",
            "100ms",
            "--metrics-listen",
            &metrics,
            "--http-listen",
            "127.0.0.1:0",
            "--github-scanning-keys",
            &keys,
        ],
    );
    let addr = server.addr.clone();
    let http_addr = server.http_addr();
    let pid = server.child.id();
    let cas = [pki_a.ca_pem.as_str(), pki_b.ca_pem.as_str()];
    let (a, b) = (der(&pki_a.server_cert), der(&pki_b.server_cert));

    // A on both listeners.
    assert_eq!(presented(&addr, b"h2", &cas).await, a);
    assert_eq!(presented(&http_addr, b"http/1.1", &cas).await, a);
    let opened_with_a = channel(&addr, pki_a.client_tls(None)).await;
    assert_eq!(
        verify_on(&opened_with_a).await.unwrap(),
        "authentication_error"
    );

    // B published: new connections get it, on both listeners.
    volume.publish(&[("tls.crt", &cert_b), ("tls.key", &key_b)]);
    until_presented(&addr, b"h2", &cas, &b).await;
    assert_eq!(presented(&http_addr, b"http/1.1", &cas).await, b);
    let reloaded = wait_for_line(&server.lines, "TLS certificate reloaded");
    assert!(
        reloaded.contains("names=localhost") && reloaded.contains("not_after="),
        "{reloaded}"
    );
    assert_eq!(
        verify_over_tls(&addr, pki_b.client_tls(None)).await,
        Ok("authentication_error".to_owned())
    );
    let trusting_only_a = verify_over_tls(&addr, pki_a.client_tls(None)).await;
    assert!(trusting_only_a.is_err(), "{trusting_only_a:?}");
    // The connection made with A goes on; nothing restarted.
    assert_eq!(
        verify_on(&opened_with_a).await.unwrap(),
        "authentication_error"
    );
    assert!(server.child.try_wait().unwrap().is_none());
    assert_eq!(server.child.id(), pid);
    let reloads = "keyauth_tls_reloads_total";
    let text = scrape(&metrics).await;
    assert_eq!(
        sample(&text, reloads, &[r#"result="ok""#]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, reloads, &[r#"result="error""#]),
        None,
        "{text}"
    );

    // An unusable certificate: B stays in force; said once, however many polls see it.
    volume.publish(&[("tls.crt", NOT_A_CERTIFICATE), ("tls.key", &key_b)]);
    let warning = wait_for_line(&server.lines, "cannot be used");
    assert!(
        warning.contains("--tls-cert") && warning.contains("tls.crt"),
        "{warning}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = scrape(&metrics).await;
    assert_eq!(
        sample(&text, reloads, &[r#"result="error""#]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, reloads, &[r#"result="ok""#]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(presented(&addr, b"h2", &cas).await, b);
    assert_eq!(presented(&http_addr, b"http/1.1", &cas).await, b);
    assert_eq!(
        verify_over_tls(&addr, pki_b.client_tls(None)).await,
        Ok("authentication_error".to_owned())
    );

    // Usable again: A back.
    volume.publish(&[("tls.crt", &cert_a), ("tls.key", &key_a)]);
    until_presented(&addr, b"h2", &cas, &a).await;
    assert!(server.child.try_wait().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_ca_is_required_of_new_connections() {
    let (pki_a, pki_b) = (Pki::new(), Pki::new());
    let [cert, key] = [pem(&pki_a.server_cert), pem(&pki_a.server_key)];
    let mut volume = SecretVolume::new(&[
        ("tls.crt", &cert),
        ("tls.key", &key),
        ("ca.crt", &pki_a.ca_pem),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &sqlite_url(&dir),
        &[
            "--tls-cert",
            path(&volume.path("tls.crt")),
            "--tls-key",
            path(&volume.path("tls.key")),
            "--tls-client-ca",
            path(&volume.path("ca.crt")),
            "--tls-reload-interval",
            "100ms",
        ],
    );
    // Clients trust the server's CA (A) and present a certificate of A's CA or of B's.
    let of_a = || pki_a.client_tls(Some(&pki_a.client));
    let of_b = || pki_a.client_tls(Some(&pki_b.client));
    assert_eq!(
        verify_over_tls(&server.addr, of_a()).await,
        Ok("authentication_error".to_owned())
    );
    assert!(verify_over_tls(&server.addr, of_b()).await.is_err());
    assert!(
        verify_over_tls(&server.addr, pki_a.client_tls(None))
            .await
            .is_err()
    );

    volume.publish(&[
        ("tls.crt", &cert),
        ("tls.key", &key),
        ("ca.crt", &pki_b.ca_pem),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while verify_over_tls(&server.addr, of_b()).await.is_err() {
        assert!(Instant::now() < deadline, "B's clients still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(verify_over_tls(&server.addr, of_a()).await.is_err());
    assert!(
        verify_over_tls(&server.addr, pki_a.client_tls(None))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_counts_against_the_first_request_deadline() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &sqlite_url(&dir),
        &[
            "--tls-cert",
            path(&pki.server_cert),
            "--tls-key",
            path(&pki.server_key),
            "--first-request-timeout",
            "300ms",
        ],
    );
    // No ClientHello: closed at the deadline.
    let mut silent = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a connection that never says hello is closed");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // A handshake, then no call: closed at the deadline too.
    let mut quiet = handshake(&server.addr, b"h2", &[&pki.ca_pem]).await;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        // The server's HTTP/2 settings first, then the end.
        while !matches!(quiet.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "a TLS connection that never calls is closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    // Half a ClientHello: not waited for forever.
    let mut stalled = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0x16, 0x03, 0x01])
        .await
        .unwrap();
    assert!(
        closed_within(&mut stalled, Duration::from_secs(5))
            .await
            .is_some(),
        "half a ClientHello is closed at the deadline"
    );
    // A connection that calls is kept past it.
    let calling = channel(&server.addr, pki.client_tls(None)).await;
    assert_eq!(verify_on(&calling).await.unwrap(), "authentication_error");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(verify_on(&calling).await.unwrap(), "authentication_error");
}

/// Principals named by a client certificate (#22): over mTLS, a call without a bearer token
/// is the principal whose `certificate_uri` is one of the certificate's URI SANs, or whose
/// `certificate_subject` is its subject, with that principal's roles and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_principal() {
    use crate::helpers::pki::SPIFFE_ID;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let principals = dir.path().join("principals.toml");
    std::fs::write(
        &principals,
        format!(
            "[[principal]]\nname = \"edge-envoy\"\ncertificate_uri = \"{SPIFFE_ID}\"\n\
             roles = [\"keys.read\"]\n\n\
             [[principal]]\nname = \"cn-verifier\"\ncertificate_subject = \"CN=verifier\"\n\
             roles = [\"keys.verify\"]\n"
        ),
    )
    .unwrap();
    let server = ServerProcess::start(
        &sqlite_url(&dir),
        &[
            "--tls-cert",
            path(&pki.server_cert),
            "--tls-key",
            path(&pki.server_key),
            "--tls-client-ca",
            path(&pki.ca),
            "--principals",
            path(&principals),
        ],
    );
    let by_uri = channel(&server.addr, pki.client_tls(Some(&pki.spiffe))).await;
    let mut client = KeyAuthorityServiceClient::new(by_uri);
    let me = client
        .get_principal(pb::GetPrincipalRequest {})
        .await
        .expect("the certificate names a principal")
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(me.name, "edge-envoy");
    assert!(
        client
            .list_applications(pb::ListApplicationsRequest::default())
            .await
            .is_ok(),
        "keys.read"
    );
    let refused = client
        .issue_key(pb::IssueKeyRequest {
            application_id: "app_edge".into(),
            environment: pb::Environment::Test as i32,
            name: "edge".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // The subject names the other one.
    let by_subject = channel(&server.addr, pki.client_tls(Some(&pki.client))).await;
    let me = KeyAuthorityServiceClient::new(by_subject)
        .get_principal(pb::GetPrincipalRequest {})
        .await
        .expect("the subject names a principal")
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(me.name, "cn-verifier");
}
