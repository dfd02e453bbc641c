//! Connecting to the server: the URL, plaintext or TLS (and mTLS), timeouts.

use std::fmt;

use tonic::transport::{Channel, Endpoint};

use keyauth_client::tls;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;

use crate::args::*;
use crate::exit::*;

pub(crate) type Client = KeyAuthorityServiceClient<Channel>;

/// Connects eagerly, so that an unreachable server (or a failed TLS handshake) is exit 3 before
/// any request is sent. Bad settings (the URL, a TLS file) are exit 2 before any connection.
pub(crate) async fn connect(connection: &Connection) -> Result<Client, Failure> {
    let server = connection.server.trim();
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let invalid = |why: &dyn fmt::Display| {
        Failure::Usage(format!(
            "invalid --server (KEYAUTH_SERVER) {server:?}: {why}"
        ))
    };
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(invalid(
            &"use http://HOST:PORT (plaintext) or https://HOST:PORT (TLS)",
        ));
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| invalid(&e))?
        .connect_timeout(connection.timeout)
        .timeout(connection.timeout);
    if https {
        endpoint = endpoint.tls_config(client_tls(connection)?).map_err(|e| {
            let what = if connection.client_cert.is_some() {
                format!(
                    "invalid {} with {}",
                    tls::CLIENT_CERT_SETTING,
                    tls::CLIENT_KEY_SETTING
                )
            } else if connection.ca_cert.is_none() {
                format!(
                    "cannot use the system's root certificates for {server} (give the CA with {})",
                    tls::CA_CERT_SETTING
                )
            } else {
                format!("cannot use these TLS settings for {server}")
            };
            Failure::Usage(with_causes(
                format!("{what}: {e}"),
                std::error::Error::source(&e),
            ))
        })?;
    } else if connection.ca_cert.is_some()
        || connection.client_cert.is_some()
        || connection.client_key.is_some()
    {
        return Err(Failure::Usage(format!(
            "--ca-cert, --client-cert and --client-key are for TLS, but --server (KEYAUTH_SERVER) {server:?} is plaintext: use https://"
        )));
    }
    let channel = endpoint.connect().await.map_err(|e| {
        Failure::Unreachable(with_causes(
            format!("cannot connect to {server}: {e}"),
            std::error::Error::source(&e),
        ))
    })?;
    Ok(KeyAuthorityServiceClient::new(channel))
}

/// The TLS settings of an `https://` server: the CA to trust, and the client certificate.
pub(crate) fn client_tls(
    connection: &Connection,
) -> Result<tonic::transport::ClientTlsConfig, Failure> {
    // Without --ca-cert the system's root certificates are trusted (as curl and browsers
    // do); a private CA needs --ca-cert.
    let identity = match (&connection.client_cert, &connection.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Failure::Usage(format!(
                "{} is set but {} is not",
                tls::CLIENT_CERT_SETTING,
                tls::CLIENT_KEY_SETTING
            )));
        }
        (None, Some(_)) => {
            return Err(Failure::Usage(format!(
                "{} is set but {} is not",
                tls::CLIENT_KEY_SETTING,
                tls::CLIENT_CERT_SETTING
            )));
        }
    };
    let config = tls::client_config(connection.ca_cert.as_deref(), identity)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(config.timeout(connection.timeout))
}
