//! The catalog file: any text is refused with a message or makes a catalog that checks
//! permissions consistently.
#![no_main]

use keyauth_core::catalog::{Catalog, CatalogCheck, RequestedPermission};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let catalog = match Catalog::from_toml(text) {
        Ok(c) => c,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    // Names from the text itself, checked both ways: one at a time and as a list.
    for word in text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-') {
        let one = catalog.check(word, "read", "");
        let list = catalog.permissions(
            &[RequestedPermission {
                resource: word.to_owned(),
                actions: vec!["read".to_owned()],
            }],
            "permissions",
        );
        assert_eq!(one.is_ok(), list.is_ok(), "{word:?}");
    }
});
