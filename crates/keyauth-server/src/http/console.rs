//! The operator console's page: three files of `console/` (the page, its style, and its script
//! bundled from TypeScript by esbuild; see console/README.md) compiled into the binary, so serving it needs neither
//! Node nor a file on disk. The page calls the key authority service over gRPC-Web on the same
//! origin (the routes `server::start` adds beside these), with the operator token the operator
//! pastes or the ID token of a sign-in with OIDC: this module serves files only and holds no
//! secret.
//!
//! `/console/config.json` tells the page how it may sign in: `{"oidc": {"issuer", "client_id"}}`
//! with `--console-oidc-issuer` and `--console-oidc-client-id` ([`ConsoleOidc`]), else
//! `{"oidc": null}`.
//!
//! Every answer carries a strict policy, computed once at start-up: scripts and styles from this
//! origin only (the page has no inline script or style), no framing, no referrer, no MIME
//! sniffing; the page may fetch from this origin and, with OIDC, from the issuer's (its discovery
//! document and token endpoint; the authorization endpoint is a top-level navigation, which
//! the policy does not govern).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

const INDEX_HTML: &[u8] = include_bytes!("../../../../console/index.html");
const CONSOLE_JS: &[u8] = include_bytes!("../../../../console/dist/console.js");
const CONSOLE_CSS: &[u8] = include_bytes!("../../../../console/console.css");

/// Where the page reads how it may sign in.
pub const CONFIG_PATH: &str = "/console/config.json";

/// The console's "Sign in with …": an OpenID provider and the console's client there. Checked
/// when made, so that the issuer's origin can go into the Content-Security-Policy as it is:
/// https, or http to a loopback host (127.0.0.0/8, `[::1]`, `localhost`); no user, query or
/// fragment; a host of letters, digits, `-` and `.`, or an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleOidc {
    issuer: String,
    client_id: String,
    /// `scheme://host[:port]` of the issuer.
    origin: String,
}

/// Why a [`ConsoleOidc`] cannot be made: which of its two settings, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleOidcError {
    Issuer(String),
    ClientId(String),
}

impl ConsoleOidc {
    /// The provider `issuer` (its `iss`, exactly) and the console's `client_id` there.
    pub fn new(issuer: &str, client_id: &str) -> Result<ConsoleOidc, ConsoleOidcError> {
        let origin = issuer_origin(issuer).map_err(ConsoleOidcError::Issuer)?;
        if client_id.trim().is_empty() || client_id.chars().any(char::is_control) {
            return Err(ConsoleOidcError::ClientId(format!(
                "{client_id:?}: give the client id the provider registered the console under"
            )));
        }
        Ok(ConsoleOidc {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            origin,
        })
    }

    /// The issuer, exactly as given (and as its tokens' `iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The console's client id at the provider: its ID tokens' `aud`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `scheme://host[:port]` of the issuer: what the page may fetch besides its own origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// The origin of an issuer URL fit for a CSP source, or why it is not one.
fn issuer_origin(issuer: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("issuer {issuer:?}: {why}"));
    if issuer.contains(['#', '?']) {
        return bad("an issuer has no query or fragment");
    }
    let Ok(uri) = issuer.parse::<hyper::Uri>() else {
        return bad("not a URL");
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return bad("not an absolute URL (https://…)");
    };
    if authority.as_str().contains('@') {
        return bad("no user name in an issuer URL");
    }
    let host = authority.host();
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let address = literal.unwrap_or(host).parse::<IpAddr>().ok();
    let name_like = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if host.is_empty() || !(name_like || address.is_some()) {
        return bad("not a host name or an IP address");
    }
    let loopback =
        host.eq_ignore_ascii_case("localhost") || address.is_some_and(|ip| ip.is_loopback());
    match scheme {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return bad(
                "must be https (http only to a loopback host: 127.0.0.0/8, [::1], localhost)",
            );
        }
    }
    Ok(format!(
        "{scheme}://{}",
        authority.as_str().to_ascii_lowercase()
    ))
}

/// The Content-Security-Policy of every console answer: the page may fetch from its own origin,
/// and with OIDC from the issuer's.
pub fn content_security_policy(oidc: Option<&ConsoleOidc>) -> String {
    let issuer = oidc.map(|o| format!(" {}", o.origin())).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{issuer}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The body of [`CONFIG_PATH`].
fn config_json(oidc: Option<&ConsoleOidc>) -> Bytes {
    let oidc =
        oidc.map(|o| serde_json::json!({ "issuer": o.issuer(), "client_id": o.client_id() }));
    Bytes::from(serde_json::json!({ "oidc": oidc }).to_string())
}

/// What every answer carries besides its body: computed once.
struct Policy {
    csp: HeaderValue,
    tls: bool,
}

/// The console's routes; `tls` adds Strict-Transport-Security, `oidc` the sign-in with OIDC.
pub(super) fn routes<S: Clone + Send + Sync + 'static>(
    tls: bool,
    oidc: Option<&ConsoleOidc>,
) -> Router<S> {
    let policy = Arc::new(Policy {
        csp: HeaderValue::from_str(&content_security_policy(oidc))
            .expect("an issuer origin is checked to be a plain host"),
        tls,
    });
    let file = |body: Bytes, content_type: &'static str| -> MethodRouter<S> {
        let policy = policy.clone();
        get(move || {
            let (body, policy) = (body.clone(), policy.clone());
            async move { answer(body, content_type, &policy) }
        })
    };
    Router::new()
        .route(
            "/",
            file(Bytes::from_static(INDEX_HTML), "text/html; charset=utf-8"),
        )
        .route(
            "/console.js",
            file(
                Bytes::from_static(CONSOLE_JS),
                "text/javascript; charset=utf-8",
            ),
        )
        .route(
            "/console.css",
            file(Bytes::from_static(CONSOLE_CSS), "text/css; charset=utf-8"),
        )
        .route(CONFIG_PATH, file(config_json(oidc), "application/json"))
}

fn answer(body: Bytes, content_type: &'static str, policy: &Policy) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, policy.csp.clone());
    let mut set = |name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "no-referrer");
    set(
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(
        HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=()",
    );
    // Small files, revalidated on each load: a new binary's page is never mixed with an old
    // cached script.
    set(header::CACHE_CONTROL, "no-cache");
    if policy.tls {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(INDEX_HTML).unwrap();
        assert!(html.contains(r#"<script src="/console.js""#), "{html}");
        assert!(!html.contains("<script>"), "inline script in {html}");
        assert!(!html.contains("<style"), "inline style in {html}");
        assert!(
            !html.contains(" style="),
            "inline style attribute in {html}"
        );
        let handler = html
            .split_whitespace()
            .any(|word| word.starts_with("on") && word.contains('='));
        assert!(!handler, "inline event handler in {html}");
    }

    #[test]
    fn the_bundle_has_no_source_map_or_local_path() {
        for file in [CONSOLE_JS, CONSOLE_CSS] {
            let text = String::from_utf8_lossy(file);
            assert!(!text.contains("sourceMappingURL"));
            assert!(!text.contains("/work/") && !text.contains("/home/"));
        }
    }

    #[test]
    fn every_answer_carries_the_policy() {
        let csp = content_security_policy(None);
        let policy = |tls| Policy {
            csp: HeaderValue::from_str(&csp).unwrap(),
            tls,
        };
        let response = answer(Bytes::from_static(INDEX_HTML), "text/html", &policy(true));
        let h = response.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], csp.as_str());
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("connect-src 'self';"));
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert!(h.contains_key(header::STRICT_TRANSPORT_SECURITY));
        let plain = answer(Bytes::from_static(INDEX_HTML), "text/html", &policy(false));
        assert!(
            !plain
                .headers()
                .contains_key(header::STRICT_TRANSPORT_SECURITY)
        );
    }

    #[test]
    fn with_oidc_the_page_may_fetch_from_the_issuer_origin_only() {
        let oidc =
            ConsoleOidc::new("https://IdP.example.com/realms/ops", "keyauth-console").unwrap();
        assert_eq!(oidc.origin(), "https://idp.example.com");
        let csp = content_security_policy(Some(&oidc));
        assert!(
            csp.contains("connect-src 'self' https://idp.example.com;"),
            "{csp}"
        );
        assert!(csp.contains("script-src 'self';") && csp.contains("form-action 'none'"));
        let body: serde_json::Value = serde_json::from_slice(&config_json(Some(&oidc))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"oidc": {
                "issuer": "https://IdP.example.com/realms/ops",
                "client_id": "keyauth-console",
            }})
        );
        let none: serde_json::Value = serde_json::from_slice(&config_json(None)).unwrap();
        assert_eq!(none, serde_json::json!({ "oidc": null }));
        let loopback = ConsoleOidc::new("http://127.0.0.1:8443", "c").unwrap();
        assert_eq!(loopback.origin(), "http://127.0.0.1:8443");
        for ok in [
            "http://localhost:9000/",
            "http://[::1]:80",
            "https://10.1.2.3/idp",
        ] {
            ConsoleOidc::new(ok, "c").unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
    }

    #[test]
    fn an_issuer_that_cannot_be_a_csp_source_is_refused() {
        for bad in [
            "http://idp.example.com",
            "http://10.0.0.1",
            "idp.example.com",
            "/relative",
            "ftp://127.0.0.1",
            "https://user@idp.example.com",
            "https://idp.example.com/?tenant=1",
            "https://idp.example.com/#x",
            "https://idp_example.com",
            "https://idp.example.com;script-src",
            "https://idp.example.com 'unsafe-inline'",
            "",
        ] {
            let e = ConsoleOidc::new(bad, "c").unwrap_err();
            assert!(
                matches!(&e, ConsoleOidcError::Issuer(why) if why.starts_with("issuer")),
                "{bad}: {e:?}"
            );
        }
        for bad in ["", "  ", "a\nb"] {
            let e = ConsoleOidc::new("https://idp.example.com", bad).unwrap_err();
            assert!(matches!(e, ConsoleOidcError::ClientId(_)), "{bad:?}");
        }
    }
}
