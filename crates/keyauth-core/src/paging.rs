//! Opaque page tokens (ListKeys, ListKeyEvents, ListApplications): the cursor (create_time, id)
//! and the filters it was issued for (and, for the listings a principal's scope limits, that
//! scope), signed with HMAC-SHA256 under a key kept in the store (so every instance accepts
//! every instance's tokens). A forged, garbled, re-filtered or re-scoped token is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use keyauth_contract::principal::Scope;
use sha2::Sha256;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{ApplicationId, Environment, KeyId, KeyStates};
use crate::store::{Cursor, KeyFilters};

const TAG_LEN: usize = 16;

pub struct PageTokens {
    key: Vec<u8>,
}

impl PageTokens {
    pub fn new(key: Vec<u8>) -> Self {
        PageTokens { key }
    }

    fn mac(&self, scope: &str, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(scope.as_bytes());
        mac.update(&[0]);
        mac.update(payload.as_bytes());
        mac
    }

    /// A token carrying `payload`, valid only for the same `scope` (the listing's filters).
    fn seal(&self, scope: &str, payload: &str) -> String {
        let tag = self.mac(scope, payload).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(&tag[..TAG_LEN])
        )
    }

    /// The payload of a token issued by [`PageTokens::seal`] for `scope`.
    fn unseal(&self, scope: &str, token: &str) -> Result<String, Error> {
        let (payload, tag) = token.split_once('.').ok_or(Error::InvalidPageToken)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| String::from_utf8(p).ok())
            .ok_or(Error::InvalidPageToken)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| Error::InvalidPageToken)?;
        if tag.len() != TAG_LEN {
            return Err(Error::InvalidPageToken);
        }
        self.mac(scope, &payload)
            .verify_truncated_left(&tag)
            .map_err(|_| Error::InvalidPageToken)?;
        Ok(payload)
    }

    fn key_scope(app: &ApplicationId, filters: &KeyFilters) -> String {
        let mut scope = format!(
            "keys\0{}\0{}",
            app.as_str(),
            filters.environment.map_or("", Environment::as_str)
        );
        // Unfiltered tokens keep the scope they had before each later filter existed.
        if filters.states != KeyStates::ALL || filters.last_used_before.is_some() {
            scope = format!("{scope}\0{}", filters.states.bits());
        }
        if let Some(before) = filters.last_used_before {
            scope = format!("{scope}\0unused-since:{}", before.as_micros());
        }
        scope
    }

    /// ListKeys: resumes after `cursor`, for these filters only.
    pub fn issue(&self, app: &ApplicationId, filters: &KeyFilters, cursor: &Cursor) -> String {
        let payload = format!("{}.{}", cursor.create_time.as_micros(), cursor.id.as_str());
        self.seal(&Self::key_scope(app, filters), &payload)
    }

    pub fn open(
        &self,
        app: &ApplicationId,
        filters: &KeyFilters,
        token: &str,
    ) -> Result<Cursor, Error> {
        let payload = self.unseal(&Self::key_scope(app, filters), token)?;
        let (time, id) = payload.split_once('.').ok_or(Error::InvalidPageToken)?;
        let create_time = time.parse::<i64>().map_err(|_| Error::InvalidPageToken)?;
        let id = KeyId::parse(id, "page_token").map_err(|_| Error::InvalidPageToken)?;
        Ok(Cursor {
            create_time: Timestamp::from_micros(create_time),
            id,
        })
    }

    /// ListKeyEvents: resumes below sequence `before`, for this filter and scope only.
    pub fn issue_events(&self, filter: &str, scope: &Scope, before: i64) -> String {
        self.seal(&scoped("events", filter, scope), &before.to_string())
    }

    pub fn open_events(&self, filter: &str, scope: &Scope, token: &str) -> Result<i64, Error> {
        self.unseal(&scoped("events", filter, scope), token)?
            .parse()
            .map_err(|_| Error::InvalidPageToken)
    }

    /// ListApplications: resumes after application `after`, for this scope only.
    pub fn issue_applications(&self, after: &ApplicationId, scope: &Scope) -> String {
        self.seal(&scoped("applications", "", scope), after.as_str())
    }

    pub fn open_applications(&self, token: &str, scope: &Scope) -> Result<ApplicationId, Error> {
        let payload = self.unseal(&scoped("applications", "", scope), token)?;
        ApplicationId::parse(&payload, "page_token").map_err(|_| Error::InvalidPageToken)
    }
}

/// What a token of `listing` is bound to: its `filter` (ListKeyEvents'), and `scope` unless it
/// is everything (tokens issued without a scope keep the binding they had before scopes).
/// Each application pattern is written with its length: no two scopes write the same.
fn scoped(listing: &str, filter: &str, scope: &Scope) -> String {
    let mut bound = match filter {
        "" => listing.to_owned(),
        filter => format!("{listing}\0{filter}"),
    };
    if !scope.is_everything() {
        let mut patterns: Vec<&str> = scope.applications().iter().map(String::as_str).collect();
        patterns.sort_unstable();
        patterns.dedup();
        bound.push_str("\0scope:");
        for p in patterns {
            bound.push_str(&format!("{}:{p},", p.len()));
        }
        bound.push_str(&format!(";{}", scope.environments().join(",")));
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::scope;

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        let tokens = PageTokens::new(b"k".repeat(32));
        let app = ApplicationId::parse("app", "a").unwrap();
        let cursor = Cursor {
            create_time: Timestamp::from_micros(42),
            id: KeyId::parse("key_ABCDEFGHIJKL", "k").unwrap(),
        };
        let token = tokens.issue(&app, &KeyFilters::of(None, KeyStates::ALL), &cursor);
        assert_eq!(
            tokens
                .open(&app, &KeyFilters::of(None, KeyStates::ALL), &token)
                .unwrap(),
            cursor
        );
        let other = ApplicationId::parse("other", "a").unwrap();
        assert!(
            tokens
                .open(&other, &KeyFilters::of(None, KeyStates::ALL), &token)
                .is_err()
        );
        assert!(
            tokens
                .open(
                    &app,
                    &KeyFilters::of(Some(Environment::Live), KeyStates::ALL),
                    &token
                )
                .is_err()
        );
        let revoked = KeyStates::of([crate::model::KeyState::Revoked]);
        assert!(
            tokens
                .open(&app, &KeyFilters::of(None, revoked), &token)
                .is_err()
        );
        let filtered = tokens.issue(&app, &KeyFilters::of(None, revoked), &cursor);
        assert_eq!(
            tokens
                .open(&app, &KeyFilters::of(None, revoked), &filtered)
                .unwrap(),
            cursor
        );
        assert!(
            tokens
                .open(&app, &KeyFilters::of(None, KeyStates::ALL), &filtered)
                .is_err()
        );
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode("1.key_ABCDEFGHIJKL"),
            "AAAA"
        );
        for bad in ["", ".", "garbage", "a.b", forged.as_str(), &token[1..]] {
            assert!(
                tokens
                    .open(&app, &KeyFilters::of(None, KeyStates::ALL), bad)
                    .is_err(),
                "{bad:?}"
            );
        }
        let other_key = PageTokens::new(b"j".repeat(32));
        assert!(
            other_key
                .open(&app, &KeyFilters::default(), &token)
                .is_err()
        );
        // Bound to the last-use filter too, to its time exactly.
        let stale = |micros| KeyFilters {
            last_used_before: Some(Timestamp::from_micros(micros)),
            ..KeyFilters::default()
        };
        let stale_token = tokens.issue(&app, &stale(7), &cursor);
        assert_eq!(tokens.open(&app, &stale(7), &stale_token).unwrap(), cursor);
        assert!(tokens.open(&app, &stale(8), &stale_token).is_err());
        assert!(
            tokens
                .open(&app, &KeyFilters::default(), &stale_token)
                .is_err()
        );
        let all = Scope::everything();
        let events = tokens.issue_events("key_ABCDEFGHIJKL", &all, 42);
        assert_eq!(
            tokens
                .open_events("key_ABCDEFGHIJKL", &all, &events)
                .unwrap(),
            42
        );
        assert!(tokens.open_events("app", &all, &events).is_err());
        assert!(
            tokens
                .open(&app, &KeyFilters::of(None, KeyStates::ALL), &events)
                .is_err(),
            "an events token is no keys token"
        );
        let apps = tokens.issue_applications(&app, &all);
        assert_eq!(tokens.open_applications(&apps, &all).unwrap(), app);
        assert!(tokens.open_applications(&events, &all).is_err());
        assert!(
            tokens
                .open(&app, &KeyFilters::of(None, KeyStates::ALL), &apps)
                .is_err()
        );
    }

    #[test]
    fn a_token_holds_under_its_own_scope_only() {
        let tokens = PageTokens::new(b"k".repeat(32));
        let app = ApplicationId::parse("app_lab_1", "a").unwrap();
        let scopes = [
            Scope::everything(),
            scope(&["app_lab_*"], &[]),
            scope(&["app_lab_1"], &[]),
            scope(&["app_lab_*"], &["test"]),
            scope(&["app_lab_*"], &["live"]),
            scope(&[], &["live"]),
            scope(&["app_lab_*", "app_billing"], &[]),
            scope(&["app_lab_,11:app_billing"], &[]),
        ];
        for (i, issued) in scopes.iter().enumerate() {
            let apps = tokens.issue_applications(&app, issued);
            let events = tokens.issue_events("all", issued, 7);
            for (j, opened) in scopes.iter().enumerate() {
                let same = i == j;
                assert_eq!(
                    tokens.open_applications(&apps, opened).is_ok(),
                    same,
                    "{issued:?} {opened:?}"
                );
                assert_eq!(
                    tokens.open_events("all", opened, &events).is_ok(),
                    same,
                    "{issued:?} {opened:?}"
                );
            }
        }
        let reordered = scope(&["app_billing", "app_lab_*"], &[]);
        let apps = tokens.issue_applications(&app, &scopes[6]);
        assert!(tokens.open_applications(&apps, &reordered).is_ok());
    }
}
