//! Entry points for the fuzz targets (`fuzz/`) into what is private to this crate: the page
//! tokens. Not an API: hidden from the docs, and nothing in the workspace calls it.

use keyauth_contract::principal::Scope;

use crate::clock::Timestamp;
use crate::model::{ApplicationId, Environment, KeyId, KeyState, KeyStates};
use crate::paging::PageTokens;
use crate::store::{Cursor, KeyFilters};

/// Opens `token` as a ListKeys and a ListKeyEvents page token under `key` (any bytes), and
/// checks that tokens made from what opened open again to the same thing. Panics on a broken
/// invariant; garbage must only ever be refused.
pub fn page_tokens(key: &[u8], token: &str) {
    let tokens = PageTokens::new(key.to_vec());
    let app = ApplicationId::parse("app_fuzz", "application_id").expect("a valid id");
    let revoked = KeyStates::of([KeyState::Revoked]);
    for env in [None, Some(Environment::Live)] {
        for states in [KeyStates::ALL, revoked] {
            if let Ok(cursor) = tokens.open(&app, &KeyFilters::of(env, states), token) {
                let again = tokens.issue(&app, &KeyFilters::of(env, states), &cursor);
                assert_eq!(
                    tokens.open(&app, &KeyFilters::of(env, states), &again).ok(),
                    Some(cursor)
                );
            }
        }
    }
    let all = Scope::everything();
    if let Ok(before) = tokens.open_events("key:key_fuzzfuzzfuzz", &all, token) {
        let again = tokens.issue_events("key:key_fuzzfuzzfuzz", &all, before);
        assert_eq!(
            tokens
                .open_events("key:key_fuzzfuzzfuzz", &all, &again)
                .ok(),
            Some(before)
        );
        // Bound to its filter and scope.
        assert!(tokens.open_events("app:other", &all, &again).is_err());
        let live = Scope::new([], ["live".to_owned()]).expect("a valid scope");
        assert!(
            tokens
                .open_events("key:key_fuzzfuzzfuzz", &live, &again)
                .is_err()
        );
    }
    // A token this key issued for a cursor built from the input opens to that cursor.
    let micros = token
        .bytes()
        .fold(0i64, |n, b| n.wrapping_mul(31).wrapping_add(i64::from(b)));
    let cursor = Cursor {
        create_time: Timestamp::from_micros(micros),
        id: KeyId::parse("key_fuzzfuzzfuzz", "id").expect("a valid id"),
    };
    let issued = tokens.issue(&app, &KeyFilters::of(None, KeyStates::ALL), &cursor);
    assert_eq!(
        tokens
            .open(&app, &KeyFilters::of(None, KeyStates::ALL), &issued)
            .ok(),
        Some(cursor)
    );
    assert!(
        tokens
            .open(
                &app,
                &KeyFilters::of(Some(Environment::Test), KeyStates::ALL),
                &issued
            )
            .is_err()
    );
    assert!(
        tokens
            .open(&app, &KeyFilters::of(None, revoked), &issued)
            .is_err()
    );
}

#[cfg(test)]
mod tests {
    /// The fuzz target's checks hold for what `cargo test` can reach without a fuzzer: a
    /// token this crate issued, and garbage.
    #[test]
    fn page_token_checks_hold_for_real_and_garbage_tokens() {
        let tokens = super::PageTokens::new(b"page-token-key".to_vec());
        let all = keyauth_contract::principal::Scope::everything();
        let real = tokens.issue_events("key:key_fuzzfuzzfuzz", &all, 42);
        for token in [real.as_str(), "", ".", "a.b", "MTcw.AAAA", "\u{0}.\u{ffff}"] {
            super::page_tokens(b"page-token-key", token);
            super::page_tokens(b"", token);
        }
    }
}
