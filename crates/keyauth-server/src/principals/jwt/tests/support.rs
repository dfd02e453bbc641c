//! Test keys (RSA from testdata, P-256 and Ed25519 from a seed), tokens, and a JWKS served over
//! HTTP on 127.0.0.1 that can be rotated and stopped.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub(crate) const ISSUER: &str = "https://idp.test";
pub(crate) const AUDIENCE: &str = "keyauth";

pub(crate) struct TestKey {
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
    encoding: EncodingKey,
    pub(crate) jwk: Value,
    /// The public key's bytes as a JWK carries them (for the HS256-with-the-public-key attack).
    pub(crate) public: Vec<u8>,
}

fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

impl TestKey {
    /// The RSA 2048 key of testdata (generating one in a debug build takes too long).
    pub(crate) fn rsa(kid: &str) -> TestKey {
        let data: Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/jwt/rsa2048.json"
        )))
        .unwrap();
        let der = STANDARD
            .decode(data["pkcs1_der_base64"].as_str().unwrap())
            .unwrap();
        let n = data["n"].as_str().unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(&der),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": data["e"]}),
            public: URL_SAFE_NO_PAD.decode(n).unwrap(),
        }
    }

    pub(crate) fn p256(kid: &str) -> TestKey {
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::from_slice(&seed(kid)).unwrap();
        let point = secret.public_key().to_sec1_bytes();
        let der = secret.to_pkcs8_der().unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": b64u(&point[1..33]), "y": b64u(&point[33..65])}),
            public: point.to_vec(),
        }
    }

    pub(crate) fn ed25519(kid: &str) -> TestKey {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed(kid));
        let public = signing.verifying_key().to_bytes();
        let der = signing.to_pkcs8_der().unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64u(&public)}),
            public: public.to_vec(),
        }
    }

    /// Its header: its `alg` and `kid`.
    pub(crate) fn header(&self) -> Header {
        Header {
            kid: Some(self.kid.clone()),
            ..Header::new(self.alg)
        }
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_with(&self.header(), claims)
    }

    pub(crate) fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }
}

/// HS256 over `claims`, keyed with `secret`, naming `kid`.
pub(crate) fn sign_hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::HS256)
    };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

/// An unsigned token: `{"alg":"none"}`.
pub(crate) fn unsigned(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        b64u(header.to_string().as_bytes()),
        b64u(claims.to_string().as_bytes())
    )
}

pub(crate) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Valid claims for `sub`: our issuer and audience, expiring in 10 minutes.
pub(crate) fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 600})
}

pub(crate) fn jwks_of(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A JWKS at `http://127.0.0.1:PORT/jwks`, counting its fetches.
pub(crate) struct JwksServer {
    pub(crate) url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl JwksServer {
    pub(crate) async fn start(keys: &[&TestKey]) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new(jwks_of(keys)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (body.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (served, counted) = (served.clone(), counted.clone());
                let service = service_fn(move |_request| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            url,
            body,
            hits,
            task,
        }
    }

    /// Serves these keys from now on.
    pub(crate) fn publish(&self, keys: &[&TestKey]) {
        *self.body.lock().unwrap() = jwks_of(keys);
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening: fetches fail from now on.
    pub(crate) async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}
