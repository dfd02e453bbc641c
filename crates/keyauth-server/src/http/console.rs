//! The operator console's page: three files of `console/` (the page, its style, and its script
//! bundled from TypeScript by esbuild; see console/README.md) compiled into the binary, so serving it needs neither
//! Node nor a file on disk. The page calls the key authority service over gRPC-Web on the same
//! origin (the routes `server::start` adds beside these), with the operator token the operator
//! pastes: this module serves files only and holds no secret.
//!
//! Every answer carries a strict policy: scripts and styles from this origin only (the page has
//! no inline script or style), no framing, no referrer, no MIME sniffing.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &[u8] = include_bytes!("../../../../console/index.html");
const CONSOLE_JS: &[u8] = include_bytes!("../../../../console/dist/console.js");
const CONSOLE_CSS: &[u8] = include_bytes!("../../../../console/console.css");

/// The Content-Security-Policy of every console answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The console's routes; `tls` adds Strict-Transport-Security.
pub(super) fn routes<S: Clone + Send + Sync + 'static>(tls: bool) -> Router<S> {
    let page = move |body: &'static [u8], content_type: &'static str| {
        move || async move { answer(body, content_type, tls) }
    };
    Router::new()
        .route("/", get(page(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/console.js",
            get(page(CONSOLE_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console.css",
            get(page(CONSOLE_CSS, "text/css; charset=utf-8")),
        )
}

fn answer(body: &'static [u8], content_type: &'static str, tls: bool) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let mut set = |name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
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
    if tls {
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
        let response = answer(INDEX_HTML, "text/html", true);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert!(h.contains_key(header::STRICT_TRANSPORT_SECURITY));
        let plain = answer(INDEX_HTML, "text/html", false);
        assert!(
            !plain
                .headers()
                .contains_key(header::STRICT_TRANSPORT_SECURITY)
        );
    }
}
