//! `Debug` of the messages that carry a full key: a redaction, never the key.

use std::fmt;

use crate::{
    CheckPermissionRequest, IssueKeyResponse, ReportExposedKeysRequest, RollKeyResponse,
    VerifyRequest,
};

/// The display form of a presented key (raw or `Bearer …`): the contract's redaction
/// (`keyauth_contract::redact_shaped`) for anything shaped like a key; otherwise only its length.
/// The checksum is not verified here: this is for printing.
pub fn redact_presented(presented: &str) -> String {
    keyauth_contract::redact_shaped(presented).unwrap_or_else(|| format!("<{} bytes>", presented.len()))
}

struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_presented(self.0))
    }
}

impl fmt::Debug for IssueKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueKeyResponse")
            .field("key", &self.key)
            .field("secret", &Redacted(&self.secret))
            .finish()
    }
}

impl fmt::Debug for RollKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RollKeyResponse")
            .field("key", &self.key)
            .field("secret", &Redacted(&self.secret))
            .field("previous_key", &self.previous_key)
            .finish()
    }
}

impl fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("key", &Redacted(&self.key))
            .field("required_permissions", &self.required_permissions)
            .finish()
    }
}

impl fmt::Debug for CheckPermissionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckPermissionRequest")
            .field("key", &Redacted(&self.key))
            .field("resource", &self.resource)
            .field("action", &self.action)
            .finish()
    }
}

impl fmt::Debug for ReportExposedKeysRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<Redacted<'_>> = self.keys.iter().map(|k| Redacted(k)).collect();
        f.debug_struct("ReportExposedKeysRequest")
            .field("keys", &keys)
            .field("source", &self.source)
            .field("url", &self.url)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted_and_other_text_is_only_measured() {
        let key = format!("sk_live_{}", "A1b2C3d4E5f6".repeat(5).get(..50).unwrap());
        assert_eq!(key.len(), 58);
        let shown = redact_presented(&format!("Bearer {key}"));
        assert_eq!(shown, format!("{}...{}", &key[..14], &key[54..]));
        assert!(!shown.contains(&key[14..54]));
        assert_eq!(redact_presented("not a key at all"), "<16 bytes>");
        let request = VerifyRequest {
            key: key.clone(),
            required_permissions: vec![],
        };
        assert!(!format!("{request:?}").contains(&key));
        let issued = IssueKeyResponse {
            key: None,
            secret: key.clone(),
        };
        assert!(!format!("{issued:?}").contains(&key));
        let report = ReportExposedKeysRequest {
            keys: vec![key.clone(), "not a key".into()],
            source: "scanner".into(),
            url: "https://example.com/paste".into(),
        };
        let shown = format!("{report:?}");
        assert!(
            !shown.contains(&key) && shown.contains("<9 bytes>"),
            "{shown}"
        );
        assert!(shown.contains("scanner") && shown.contains("example.com"));
    }
}
