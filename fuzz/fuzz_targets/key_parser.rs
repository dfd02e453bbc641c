//! The key parser: any text is refused or parsed into a key whose parts agree with it.
#![no_main]

use keyauth_core::key::{KeyIdOf, KeyView, PresentedKey};
use keyauth_core::model::{KeyId, KeyIdText};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The view (no copy) and the owned key accept the same texts.
    let view = KeyView::parse(&text);
    let Some(key) = PresentedKey::parse(&text) else {
        assert!(view.is_none());
        return;
    };
    let view = view.expect("the view accepts what the owned parse accepts");
    assert_eq!(view.digest(), key.digest());
    // The id made on the stack for the cache is the key's id.
    let id = KeyIdText::of(&view);
    assert_eq!(id.as_str(), key.id().as_str());
    // A parsed key parses again, to the same key, and names a valid id.
    let again = PresentedKey::parse(key.expose()).expect("a parsed key parses again");
    assert_eq!(again.expose(), key.expose());
    assert_eq!(again.digest(), key.digest());
    assert!(KeyId::parse(key.id().as_str(), "key_id").is_ok());
    assert_eq!(key.environment(), again.environment());
    // The redaction never shows the secret part.
    let secret = std::str::from_utf8(key.secret()).expect("base62");
    assert!(!key.redacted().contains(secret));
    assert!(!format!("{key:?}").contains(secret));
});
