//! Sealing input: seal key text, idempotency keys, and sealed secrets read back from the
//! store. Garbage is refused; what was sealed opens to itself, bound to its context.
#![no_main]

use keyauth_core::sealing::{IdempotencyKey, SealKey, Sealer};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = SealKey::parse(&text) {
        assert!(!format!("{key:?}").contains(text.trim()) || text.trim().is_empty());
    }
    if let Ok(idem) = IdempotencyKey::parse(data) {
        assert!((1..=255).contains(&idem.as_str().len()));
        assert!(idem.as_str().bytes().all(|b| (0x20..=0x7e).contains(&b)));
    }
    let key = SealKey::parse(KEY).expect("a valid key");
    let sealer = Sealer::new(Some(&key));
    // Forged sealed text does not open (the AEAD tag).
    let _ = sealer.open(&text, b"context");
    // What is sealed opens, under its context only.
    let sealed = sealer.seal(&text, data).expect("sealing works");
    assert_eq!(sealer.open(&sealed, data).expect("opens"), text);
    let mut other = data.to_vec();
    other.push(0);
    assert!(sealer.open(&sealed, &other).is_err());
});
