//! Page tokens: a forged or garbled token is refused, never accepted as another's, and never
//! panics. The first byte says how long the HMAC key is; the rest is the key and the token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (key, token) = rest.split_at((len as usize).min(rest.len()));
    keyauth_core::fuzzing::page_tokens(key, &String::from_utf8_lossy(token));
});
