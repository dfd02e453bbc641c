//! The seed's JSON error body, `{"error":{"code":"…","message":"…","type":"…"}}`, built in one
//! place: keyauth's Envoy ext_authz front sends it as the body of a refused request, and the
//! tower layer of `keyauth-client` answers with the same bytes.

use serde::Serialize;

/// The `code` of the body answered when a key could not be checked (the key store or the
/// hash pool could not answer in time): HTTP 503, never an allow.
pub const UNAVAILABLE_CODE: &str = "service_unavailable";
pub const UNAVAILABLE_MESSAGE: &str = "The API key could not be checked right now; retry shortly";
pub const UNAVAILABLE_TYPE: &str = "api_error";

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

/// Field order is the seed's: code, message, type.
#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "type")]
    error_type: &'a str,
}

/// The error body for a refusal: `code` (`authentication_error`, `api_key_revoked`, …), its
/// human `message`, and its `type` (`invalid_request_error`, `api_error`).
pub fn error_body(code: &str, message: &str, error_type: &str) -> String {
    serde_json::to_string(&Body {
        error: Inner {
            code,
            message,
            error_type,
        },
    })
    // Serialising three strings into a string cannot fail.
    .unwrap_or_default()
}

/// The body of the "could not be checked" answer (HTTP 503).
pub fn unavailable_body() -> String {
    error_body(UNAVAILABLE_CODE, UNAVAILABLE_MESSAGE, UNAVAILABLE_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_seeds() {
        assert_eq!(
            error_body(
                "api_key_revoked",
                "This API key has been revoked",
                "invalid_request_error"
            ),
            r#"{"error":{"code":"api_key_revoked","message":"This API key has been revoked","type":"invalid_request_error"}}"#
        );
        assert_eq!(
            unavailable_body(),
            r#"{"error":{"code":"service_unavailable","message":"The API key could not be checked right now; retry shortly","type":"api_error"}}"#
        );
        // Escaped as JSON.
        let odd = error_body("c", "say \"hi\"\n", "t");
        let parsed: serde_json::Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(parsed["error"]["message"], "say \"hi\"\n");
    }
}
